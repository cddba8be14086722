"""Where on a plane with pixels without data a training crop may lie: wholly on data.

A crop's footprint is every HR pixel the pair is made of. The degradation
(antialiased downsampling, the optional blur, the axial margin) reads only the
crop itself, so a crop wholly on data is a pair that never sees nodata; no
further margin is needed around it. Validation crops follow the same rule, so
:func:`diinn_napari.evaluate.compare` scores them whole.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Footprint"]


class Footprint:
    """The data mask of one (Y, X) plane, answering "which h x w crops hold data only" with a summed-area table."""

    def __init__(self, valid: np.ndarray):
        self.valid = valid = np.asarray(valid, dtype=bool)
        self.shape = valid.shape
        # int32 counts suffice below 2**31 pixels: the table is then the size of a float32 plane, not twice it
        dtype = np.int32 if valid.size < 2**31 else np.int64
        self._table = np.zeros((valid.shape[0] + 1, valid.shape[1] + 1), dtype)
        np.cumsum(np.cumsum(~valid, axis=0, dtype=dtype), axis=1, out=self._table[1:, 1:])
        self.left_out = int(self._table[-1, -1])
        self.side = self._largest_square()

    @property
    def data_pixels(self) -> int:
        """How many pixels of the plane hold data."""
        return int(self.shape[0] * self.shape[1] - self.left_out)

    def starts(self, h: int, w: int) -> np.ndarray:
        """(ph - h + 1, pw - w + 1) bool: True where an ``h`` x ``w`` crop starting there holds data only."""
        t = self._table
        ph, pw = self.shape
        if h > ph or w > pw or h < 1 or w < 1:
            return np.zeros((max(0, ph - h + 1), max(0, pw - w + 1)), bool)
        missing = t[h:, w:] - t[:-h, w:] - t[h:, :-w] + t[:-h, :-w]
        return missing == 0

    def holds_data(self, y: int, x: int, h: int, w: int) -> bool:
        """Whether the ``h`` x ``w`` crop starting at (``y``, ``x``) holds data only (O(1))."""
        t = self._table
        return int(t[y + h, x + w] - t[y, x + w] - t[y + h, x] + t[y, x]) == 0

    def place(self, tries, fractions, h: int, w: int) -> list[tuple[int, int]]:
        """All-data ``h`` x ``w`` crop starts, one per row of ``tries`` ((m, T, 2) uniform (y, x) fractions of the
        plane): the first of a row's T starts whose crop holds data only, else the :meth:`pick` of that row's
        number in ``fractions`` ((m,) uniform numbers).

        Uniform over the allowed starts either way (the first hit of uniform tries is uniform over the
        hits), and cheap where data is common: a try looks up four numbers, :meth:`pick` scans the plane.
        """
        ph, pw = self.shape
        out = []
        for row, u in zip(np.asarray(tries, dtype=np.float64), np.asarray(fractions, dtype=np.float64)):
            ys = np.minimum((row[:, 0] * (ph - h + 1)).astype(np.int64), ph - h)
            xs = np.minimum((row[:, 1] * (pw - w + 1)).astype(np.int64), pw - w)
            hit = next(((int(y), int(x)) for y, x in zip(ys, xs) if y >= 0 and x >= 0 and self.holds_data(y, x, h, w)), None)
            out.append(hit if hit is not None else self.pick([u], h, w)[0])
        return out

    def pick(self, fractions, h: int, w: int) -> list[tuple[int, int]]:
        """The (y, x) starts of all-data ``h`` x ``w`` crops for ``fractions`` (uniform numbers in [0, 1)).

        Each number picks one of the allowed starts (in raster order), so every allowed
        crop is equally likely and the same numbers give the same crops. Raises
        ``ValueError`` when no such crop exists (callers cap ``h`` and ``w`` by :attr:`side`).
        """
        ys, xs = np.nonzero(self.starts(h, w))
        if ys.size == 0:
            raise ValueError(f"no {h} x {w} px crop of this plane lies wholly on data (largest: {self.side} px square)")
        index = np.minimum((np.asarray(fractions, dtype=np.float64) * ys.size).astype(np.int64), ys.size - 1)
        return [(int(ys[i]), int(xs[i])) for i in np.atleast_1d(index)]

    def _largest_square(self) -> int:
        """The side of the largest square wholly on data (0 when no pixel holds data): a binary search of :meth:`starts`."""
        lo, hi = 0, min(self.shape)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.starts(mid, mid).any():
                lo = mid
            else:
                hi = mid - 1
        return lo
