"""Coordinate conventions shared by the model, the engine and training.

One place defines where pixels are, so that every caller agrees:

* pixel centres of an axis of length ``n`` lie at ``-1 + (2 i + 1) / n``;
* an output pixel takes its content from its *nearest* LR pixel,
  ``k = floor((i + 0.5) * n_in / n_out)`` (PyTorch's ``nearest-exact``);
* its local coordinate is (output centre - LR centre) * n_in, in [-1, 1).

All functions work on one axis and on a *window* ``[start, stop)`` of the
global output axis, so a tile decodes exactly the pixels it owns.
"""

from __future__ import annotations

import numpy as np
import torch


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
    src = (i + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src)
    t = src - base
    weights = np.zeros((stop - start, lr_stop - lr_start), dtype=np.float64)
    rows = np.arange(stop - start)
    for offset in (-1, 0, 1, 2):
        idx = np.clip(base.astype(np.int64) + offset, 0, n_in - 1) - lr_start
        if idx.min() < 0 or idx.max() >= lr_stop - lr_start:
            raise ValueError("LR window too small for bicubic support")
        np.add.at(weights, (rows, idx), _cubic(t - offset))
    return torch.from_numpy(weights.astype(np.float32))
