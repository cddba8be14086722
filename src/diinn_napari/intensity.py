"""Map image intensities into the model's [0, 1] range and back.

The engine and the training data use these functions, so the model always
sees intensities normalised the same way. uint8 maps by its full range;
uint16, other integers and floats by robust percentiles of the *whole plane*
(never per tile, which would make tiles disagree).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .core import cast

INTENSITY_MODES = ("auto", "percentile", "dtype", "none")
ROBUST_PERCENTILES = (0.1, 99.9)
_MAX_STAT_SAMPLES = 1 << 22  # percentiles of big planes from a regular subsample


def check_dtype(dtype: np.dtype) -> np.dtype:
    """Return ``dtype`` if the engine can process it, else raise a clear TypeError."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "uif":
        raise TypeError(
            f"unsupported pixel type {dtype}: DIINN works on unsigned/signed integer or float images; "
            "convert boolean masks, complex or object arrays to a numeric type first"
        )
    return dtype


@dataclass(frozen=True)
class Intensity:
    """A linear map ``lo..hi -> 0..1`` and its inverse."""

    lo: float
    hi: float

    def normalize(self, plane: np.ndarray) -> np.ndarray:
        """Plane of any numeric dtype -> float32, lo..hi mapped to 0..1 (values outside kept)."""
        return ((np.asarray(plane, dtype=np.float32) - self.lo) / (self.hi - self.lo)).astype(np.float32, copy=False)

    def denormalize(self, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Inverse of :meth:`normalize`, then cast: integers rounded and clipped to ``dtype``'s range."""
        return cast(np.asarray(values, dtype=np.float32) * (self.hi - self.lo) + self.lo, dtype)


def fit_intensity(plane: np.ndarray, mode: str = "auto", percentiles: tuple[float, float] = ROBUST_PERCENTILES) -> Intensity:
    """Choose the intensity map of one plane.

    ``mode``: ``"auto"`` (uint8 -> 0..255, everything else -> robust percentiles),
    ``"percentile"`` (robust percentiles for every dtype), ``"dtype"`` (the full
    range of the integer dtype; min..max for floats) or ``"none"`` (values are
    already in 0..1).
    """
    if mode not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {mode!r}")
    dtype = check_dtype(plane.dtype)
    if mode == "none":
        return Intensity(0.0, 1.0)
    if mode == "dtype" and dtype.kind in "ui":
        info = np.iinfo(dtype)
        return Intensity(float(info.min), float(info.max))
    if mode == "auto" and dtype == np.uint8:
        return Intensity(0.0, 255.0)
    sample = np.asarray(plane).ravel()
    if sample.size > _MAX_STAT_SAMPLES:
        sample = sample[:: sample.size // _MAX_STAT_SAMPLES]
    if mode == "dtype":  # float data: its own extent
        lo, hi = float(sample.min()), float(sample.max())
    else:
        lo, hi = (float(v) for v in np.percentile(sample, percentiles))
    if not hi > lo:  # constant plane: any non-empty range maps it exactly
        hi = lo + 1.0
    return Intensity(lo, hi)


def to_luminance(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB -> (...) luma with ITU-R BT.601 weights, same dtype range, float32."""
    return np.asarray(rgb[..., :3], dtype=np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
