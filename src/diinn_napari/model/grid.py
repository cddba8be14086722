"""Coordinate conventions shared by the model, the engine and training.

One place defines where pixels are, so that every caller agrees:

* pixel centres of an axis of length ``n`` lie at ``-1 + (2 i + 1) / n``;
* an output pixel takes its content from its *nearest* LR pixel,
  ``k = floor((i + 0.5) * n_in / n_out)`` (PyTorch's ``nearest-exact``);
* its local coordinate is (output centre - LR centre) * n_in, in [-1, 1).

All functions work on one axis and on a *window* ``[start, stop)`` of the
global output axis, so a tile decodes exactly the pixels it owns.

An axis can also be sampled at explicit positions (:class:`AxisSamples`):
``positions`` in LR index units (LR pixel ``k`` sits at ``k``), the same rules
applied to them (nearest LR index ``floor(p + 0.5)``, local coordinate
``2 (p - k)``). The pixel-centre grid is the special case
``p = (i + 0.5) n_in / n_out - 0.5``; point sampling (Z planes of a stack,
output plane ``k`` at ``k * step``, see :mod:`diinn_napari.isotropic`) is another.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class AxisSamples(NamedTuple):
    """Explicit sample positions of one output axis, instead of the pixel-centre grid.

    ``positions``: float64 array, one entry per *global* output sample, in LR
    index units (LR pixel ``k`` at ``k``; valid range ``-0.5 .. n_in - 0.5``).
    ``cell``: the scale term of the positional vector, LR pixels per output
    step (``1 / ratio``, as :func:`cell_size` gives for the pixel-centre grid).
    """

    positions: np.ndarray
    cell: float


def sample_queries(samples: AxisSamples, n_in: int, start: int = 0, stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`axis_queries` for explicit positions: nearest LR index and local coordinate of samples ``start..stop-1``."""
    p = np.asarray(samples.positions, dtype=np.float64)[start:stop]
    if p.size and (p.min() < -0.5 or p.max() > n_in - 0.5):
        raise ValueError(f"sample positions must lie in -0.5 .. {n_in - 0.5} (LR index units), got {p.min()} .. {p.max()}")
    k = np.clip(np.floor(p + 0.5), 0, n_in - 1).astype(np.int64)
    rel = 2 * (p - k)  # (sample - LR centre) in the [-1, 1) units of the pixel-centre grid
    return torch.from_numpy(k), torch.from_numpy(rel.astype(np.float32))


def window_queries(n_in: int, n_out: int, start: int, stop: int, samples: AxisSamples | None = None):
    """Queries of one axis: the pixel-centre grid, or ``samples`` when given. Returns ``(index, rel, cell)``."""
    if samples is None:
        index, rel = axis_queries(n_in, n_out, start, stop)
        return index, rel, cell_size(n_in, n_out)
    if len(samples.positions) != n_out:
        raise ValueError(f"{len(samples.positions)} sample positions for an output axis of {n_out}")
    index, rel = sample_queries(samples, n_in, start, stop)
    return index, rel, float(samples.cell)


def nearest_lr_index(n_in: int, n_out: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """LR index (int64) of the nearest LR pixel for output pixels ``start..stop-1``."""
    i = np.arange(start, n_out if stop is None else stop, dtype=np.int64)
    # Integer arithmetic: exact for any size, no float rounding at cell borders.
    return np.minimum(((2 * i + 1) * n_in) // (2 * n_out), n_in - 1)


def axis_queries(n_in: int, n_out: int, start: int = 0, stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest LR index and local coordinate of output pixels ``start..stop-1`` of one axis.

    Returns ``(index, rel)``: int64 and float32 tensors of length ``stop - start``.
    """
    i = np.arange(start, n_out if stop is None else stop, dtype=np.int64)
    k = nearest_lr_index(n_in, n_out, start, stop)
    rel = (2 * i + 1) * (n_in / n_out) - (2 * k + 1)  # (centre_out - centre_lr) * n_in
    return torch.from_numpy(k), torch.from_numpy(rel.astype(np.float32))


def cell_size(n_in: int, n_out: int) -> float:
    """The scale term of the positional vector: LR/HR size ratio of one axis (1 / upscale ratio)."""
    return n_in / n_out


def _cubic(x: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution kernel with PyTorch's ``a = -0.75``."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(n_in: int, n_out: int, start: int, stop: int, lr_start: int, lr_stop: int) -> torch.Tensor:
    """Dense (stop - start, lr_stop - lr_start) bicubic interpolation matrix of one axis.

    Samples the global LR axis at the centres of output pixels ``start..stop-1``
    exactly as ``torch.nn.functional.interpolate(mode="bicubic",
    align_corners=False)`` does for the whole image (indices clamped at the
    *global* image border), expressed on the LR window ``[lr_start, lr_stop)``.
    """
    i = np.arange(start, stop, dtype=np.float64)
    return _cubic_weights((i + 0.5) * (n_in / n_out) - 0.5, n_in, lr_start, lr_stop)


def sample_bicubic_matrix(samples: AxisSamples | np.ndarray, n_in: int, start: int, stop: int, lr_start: int,
                          lr_stop: int) -> torch.Tensor:
    """:func:`bicubic_matrix` at explicit positions (samples ``start..stop-1``; same kernel and border clamp).

    At an integer position the row is exactly that LR pixel (the kernel is 1
    at 0 and 0 at the other integers): point samples are reproduced.
    """
    positions = samples.positions if isinstance(samples, AxisSamples) else samples
    return _cubic_weights(np.asarray(positions, dtype=np.float64)[start:stop], n_in, lr_start, lr_stop)


def _cubic_weights(src: np.ndarray, n_in: int, lr_start: int, lr_stop: int) -> torch.Tensor:
    """Interpolation matrix sampling the LR axis at ``src`` (LR index units) on the LR window ``[lr_start, lr_stop)``."""
    base = np.floor(src)
    t = src - base
    weights = np.zeros((len(src), lr_stop - lr_start), dtype=np.float64)
    rows = np.arange(len(src))
    for offset in (-1, 0, 1, 2):
        idx = np.clip(base.astype(np.int64) + offset, 0, n_in - 1) - lr_start
        if idx.min() < 0 or idx.max() >= lr_stop - lr_start:
            raise ValueError("LR window too small for bicubic support")
        np.add.at(weights, (rows, idx), _cubic(t - offset))
    return torch.from_numpy(weights.astype(np.float32))
