"""What the plane-wise engine and the isotropic pipeline share: input checks, dtypes, outliers, cancel, results.

No torch here (the intensity map and the planner import it): the pipelines
themselves are :mod:`diinn_napari.engine` (YX planes) and
:mod:`diinn_napari.isotropic` (Z of volumes).

* :func:`check_array` / :func:`check_finite`: what an input must be;
* :func:`compute_dtype`, :func:`valid_range`, :func:`cast`: the one dtype
  rule on the way out (integers rounded and clipped, float16 kept finite);
* :func:`replace_outliers`: what the network sees instead of a hot pixel;
* :class:`Cancelled`, :func:`check_cancel`: stopping between work units;
* :class:`Assembly`, :func:`collect`: a step stream's pieces put into one array;
* :func:`auto_tile_size`: the tile edge when the settings leave it open.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

ProgressCallback = Callable[[int, int], Any]
CancelCheck = Callable[[], bool] | threading.Event


# ---- inputs --------------------------------------------------------------------------------------
def check_array(image, what: str = "image") -> tuple[int, ...]:
    """The shape of an array-like (numpy, dask, zarr, memmap: shape, dtype, indexing) of a supported dtype.

    TypeError for other objects and pixel types (bool, complex), ValueError for an empty one.
    """
    from .intensity import check_dtype

    if not (hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__")):
        raise TypeError(f"{what} must be a numpy array or an array-like (dask, zarr), got {type(image).__name__}")
    shape = tuple(int(n) for n in image.shape)
    check_dtype(image.dtype)
    if 0 in shape:
        raise ValueError(f"{what} is empty (shape {shape})")
    return shape


def check_finite(values: np.ndarray, what: str = "image", where: str = "") -> None:
    """Refuse NaN or infinite values (they would spread through the network); ``where`` ends the message."""
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ValueError(f"{what} contains NaN or infinite values{where}; replace them (e.g. np.nan_to_num) first")


def check_output_finite(values: np.ndarray, where: str = "") -> None:
    """Refuse a model output with NaN or infinite values: cast to an integer dtype they would become zeros."""
    if np.asarray(values).dtype.kind == "f" and not np.isfinite(values).all():
        raise ValueError(f"the model's output contains NaN or infinite values{where}; the weights or the precision "
                         "give non-finite results (try --precision fp32 or another weights file); nothing was written")


# ---- dtypes --------------------------------------------------------------------------------------
def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype values are denormalised in: float32 (the model's) for float outputs, else the output's."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype.kind == "f" else dtype


def valid_range(mapping, dtype: np.dtype) -> tuple[float, float]:
    """The output dtype's representable range in the normalised units of ``mapping`` (an Intensity)."""
    if np.dtype(dtype).kind not in "ui":
        return -np.inf, np.inf
    info = np.iinfo(dtype)
    span = mapping.hi - mapping.lo
    lo, hi = (info.min - mapping.lo) / span, (info.max - mapping.lo) / span
    return (min(lo, hi), max(lo, hi))


def cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Values in ``dtype``: integers rounded and clipped to its range; a narrower float clipped to stay finite."""
    values = np.asarray(values)
    dtype = np.dtype(dtype)
    if values.dtype == dtype:
        return values
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    if dtype.kind == "f" and values.dtype.kind == "f" and np.finfo(dtype).max < np.finfo(values.dtype).max:
        limit = np.finfo(dtype).max
        values = np.clip(values, -limit, limit)
    return values.astype(dtype, copy=False)


# ---- outliers ------------------------------------------------------------------------------------
def replace_outliers(values: np.ndarray, clamp: tuple[float, float] | None,
                     size: int | tuple[int, ...] = 3) -> tuple[np.ndarray, np.ndarray | None]:
    """Normalised values outside ``clamp`` -> the clamped median of their ``size`` neighbourhood.

    What the network sees instead of a hot pixel: a value its neighbours
    suggest, so it leaves no bright dot for the network to spread. The
    median repeats edge values (``mode="nearest"``): give one element of real
    neighbours around the part you use where the data goes on. Returns
    ``(seen, excess)``: float32 values for the network and ``values - seen``
    (to add back by interpolation), or ``(values, None)`` without outliers.
    """
    if clamp is None:
        return values, None
    outside = (values < clamp[0]) | (values > clamp[1])
    if not outside.any():
        return values, None
    from scipy.ndimage import median_filter

    median = np.clip(median_filter(values, size=size, mode="nearest"), clamp[0], clamp[1])
    seen = np.where(outside, median, values).astype(np.float32)
    return seen, (values - seen).astype(np.float32)


# ---- cancel --------------------------------------------------------------------------------------
class Cancelled(Exception):
    """Raised when ``cancel`` fires; work stops between tiles (planes, rows, adaptation steps)."""


def check_cancel(cancel: CancelCheck | None, done: int, total: int, units: str = "steps") -> None:
    """Raise :class:`Cancelled` if ``cancel`` (a callable or threading.Event) says so."""
    if cancel is not None and (cancel.is_set() if isinstance(cancel, threading.Event) else cancel()):
        raise Cancelled(f"cancelled after {done} of {total} {units}")


# ---- results -------------------------------------------------------------------------------------
class Assembly:
    """One result array filled from the finished pieces of a step stream.

    A step's ``piece`` is ``(where, values)`` (the engine's finished plane,
    the isotropic pipeline's finished block of rows) or None. The array is
    made on the first piece, in its dtype (``fill=None``: uninitialised,
    else filled with ``fill``, so a cancelled run shows zeros where nothing
    was done), unless ``out`` is given.
    """

    def __init__(self, shape: tuple[int, ...], out: np.ndarray | None = None, fill: float | None = None):
        self.shape = tuple(int(n) for n in shape)
        if out is not None and tuple(out.shape) != self.shape:
            raise ValueError(f"out has shape {tuple(out.shape)}; the output needs {self.shape}")
        self.result = out
        self.fill = fill

    def place(self, where, values: np.ndarray) -> None:
        """Put ``values`` at ``result[where]``."""
        if self.result is None:
            self.result = (np.empty(self.shape, values.dtype) if self.fill is None
                           else np.full(self.shape, self.fill, values.dtype))
        self.result[where] = values

    def add(self, step) -> bool:
        """Place the step's finished piece, if it has one; whether it had."""
        piece = step.piece
        if piece is None:
            return False
        self.place(*piece)
        return True


def collect(steps: Iterable, shape: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray | None:
    """Run a step stream to its end; the whole result (None if it had no pieces)."""
    assembly = Assembly(shape, out)
    for step in steps:
        assembly.add(step)
    return assembly.result


# ---- tiles ---------------------------------------------------------------------------------------
def auto_tile_size(device, scale: float = 1.0, *, axial: bool = False) -> int:
    """The LR tile edge when the settings leave it open, for a device (torch.device or name) and a scale.

    Plane-wise: big enough to amortise the overlap, small enough to bound the
    output of a tile (512 on CUDA, 256 elsewhere, at most 4096 / scale).
    ``axial`` (isotropic XZ/YZ planes, tiled along the lateral axis with Z
    whole; :data:`~diinn_napari.isotropic.CALL_PIXELS` bounds a call): 256 on
    CUDA, 128 elsewhere.
    """
    cuda = str(getattr(device, "type", device)).split(":")[0] == "cuda"
    if axial:
        return 256 if cuda else 128
    base = 512 if cuda else 256
    return int(max(32, min(base, 4096 // max(1.0, scale))))
