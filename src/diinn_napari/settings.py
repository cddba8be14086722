"""The run settings: what one super-resolution run does, validated once, without torch.

Every shell builds one :class:`RunSettings` from what its user asked (the
napari widget from its controls, the batch tool from its flags, a script from
keywords) and hands it to the engine, which reads nothing else::

    from diinn_napari import RunSettings, upscale
    settings = RunSettings(pixel_size=0.1, consistency=2)
    settings.output_yx((512, 512), input_pixel_size=(0.325, 0.325))   # -> (1664, 1664)
    big = upscale(image, settings=settings.replace(pixel_size=None, scale=2.5))

The size is one of three requests: ``scale`` (the output/input size ratio, a
number or (sy, sx)), ``output_shape`` (Y, X) or ``pixel_size`` (the target
pixel size, in the unit of the input's own pixel size, which the caller
passes when it resolves the size). This module is torch-free, so the napari
plugin can show output shapes and memory before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from .intensity import INTENSITY_MODES, check_dtype

if TYPE_CHECKING:  # pragma: no cover
    from .model import DIINN

    ModelSpec = Union[str, os.PathLike, DIINN]
else:
    ModelSpec = Any

# Back-projection steps after the network (0 = off): see RunSettings.consistency.
DEFAULT_CONSISTENCY = 2
# The network sees normalised values clamped to this range; the excess (outliers) goes through bicubic.
OUTLIER_CLAMP = (-1.0, 2.0)
# Refuse outputs larger than this many pixels (a typo such as scale=250 should not fill the disk).
DEFAULT_MAX_OUTPUT_PIXELS = 2_000_000_000
# fp16/bf16 autocast runs on CUDA only.
PRECISIONS = ("fp32", "fp16", "bf16")
MODES = ("fast", "reference")
OUTPUT_DTYPES = ("uint8", "uint16", "float32")
SIZE_REQUEST = "give exactly one of scale (e.g. 2.5 or (2, 3)), output_shape (Y, X) or pixel_size"


def output_size(
    shape: tuple[int, ...], scale: float | tuple[float, float] | None = None, output_shape: tuple[int, int] | None = None
) -> tuple[int, int]:
    """(Y, X) output size for an input whose last two axes are (Y, X).

    ``scale`` is the output/input size ratio, one real number or (sy, sx);
    each axis becomes ``round(n * s)``. Or give ``output_shape`` directly.
    Downscaling (an output axis smaller than the input) is refused.
    """
    h, w = shape[-2:]
    if (scale is None) == (output_shape is None):
        raise ValueError("give exactly one of scale (e.g. 2.5 or (2, 3)) or output_shape (Y, X)")
    if output_shape is not None:
        if len(output_shape) != 2:
            raise ValueError(f"output_shape must be (Y, X), got {output_shape!r}")
        out = tuple(int(v) for v in output_shape)
    else:
        factors = _pair(scale, "scale")
        out = (max(1, round(h * factors[0])), max(1, round(w * factors[1])))
    if out[0] < h or out[1] < w:
        raise ValueError(
            f"output {out} is smaller than the input {(h, w)}: DIINN only upscales (scale >= 1); "
            "downsample with skimage.transform.rescale(..., anti_aliasing=True) instead"
        )
    return out


def overlay_placement(scale_in, translate_in, ratio) -> tuple[list[float], list[float]]:
    """napari scale and translate that put an upscaled layer exactly over its source.

    napari puts pixel centres at ``translate + i * scale``; with ``ratio`` the
    real output/input size ratio per axis, the output's pixel centres sit on
    the same continuous grid: scale / ratio, shifted by half the change of the
    pixel size.
    """
    scale_out = [s / r for s, r in zip(scale_in, ratio)]
    translate_out = [t + 0.5 * (so - si) for t, so, si in zip(translate_in, scale_out, scale_in)]
    return scale_out, translate_out


def _pair(value, name: str) -> tuple[float, float]:
    """A positive finite number or (y, x) pair of them, as a pair of floats."""
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be a number or a (y, x) pair, got {value!r}")
    for v in pair:
        if isinstance(v, bool) or not (isinstance(v, (int, float, np.number)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(pair[0]), float(pair[1])


@dataclass(frozen=True)
class RunSettings:
    """What a run does to every plane of an image, validated when made.

    Size (exactly one; ``None`` everywhere is allowed until the size is
    resolved, so a shell can fill it in later with :meth:`replace`):

    scale: output/input size ratio, a number >= 1 or (sy, sx); each axis
        becomes ``round(n * s)``.
    output_shape: (Y, X) of each output plane.
    pixel_size: target pixel size, a number or (y, x), in the unit of the
        input's own pixel size (``input_pixel_size`` of :meth:`output_yx`,
        :meth:`Engine.run <diinn_napari.engine.Engine.run>`, ``upscale``).

    Model and compute:

    model: "default" (bundled gray or RGB model by the image's channels), a
        bundled name, a weights path, or a DIINN instance.
    device: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda:N" or "mps".
    tile_size: LR tile edge in pixels (None: automatic per device).
    precision: "fp32", or "fp16"/"bf16" autocast on CUDA.
    mode: "fast" (factorised decoder) or "reference" (textbook decoder).
    threads: torch CPU threads while the engine runs (None: leave torch's setting).

    Values:

    intensity: "auto" (uint8 by range, others by robust percentiles of each
        whole plane), "percentile", "dtype" or "none" (already 0..1).
    out_dtype: output dtype name, or None for the input's own (a float64 image stays float64; the
        model computes in float32).
    consistency: data consistency, the number of back-projection steps
        ``x <- clip(x + U(y - D(x)))`` after the network (0 = off): D is the
        degradation the model is trained for (antialiased bicubic
        downsampling at the real size ratio of each axis), U bicubic
        upsampling, ``y`` the normalised input, ``clip`` the output dtype's
        range. Each step makes the downsampled output agree better with the input.
    outlier_clamp: (low, high) in the normalised range: the network sees
        values clamped to it and the clamped-off excess (hot pixels, saturated
        spots) is added back by bicubic interpolation. None: no clamp.
    max_output_pixels: refuse outputs larger than this many pixels in all.
    ensemble: geometric self-ensemble: every tile is decoded for the 8 flips
        and transposes of the input, mapped back and averaged (about 8 times
        the cost, for a small gain; see docs/quality.md). Tiled still equals whole.
    nodata: the value that marks pixels without data (a GeoTIFF's GDAL_NODATA;
        ``float("nan")`` for float rasters), or None. Such pixels are left out
        of the intensity fit and filled from the nearest valid pixel before the
        network; the output is ``nodata`` exactly where the nearest input pixel is.
    """

    scale: float | tuple[float, float] | None = None
    output_shape: tuple[int, int] | None = None
    pixel_size: float | tuple[float, float] | None = None
    model: ModelSpec = "default"
    device: Any = "auto"
    tile_size: int | None = None
    precision: str = "fp32"
    mode: str = "fast"
    threads: int | None = None
    intensity: str = "auto"
    out_dtype: str | None = None
    consistency: int = DEFAULT_CONSISTENCY
    outlier_clamp: tuple[float, float] | None = OUTLIER_CLAMP
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    ensemble: bool = False
    nodata: float | None = None

    def __post_init__(self) -> None:
        sizes = [name for name in ("scale", "output_shape", "pixel_size") if getattr(self, name) is not None]
        if len(sizes) > 1:
            raise ValueError(f"{SIZE_REQUEST}, not {' and '.join(sizes)}")
        if self.scale is not None:
            scale = _pair(self.scale, "scale")
            if min(scale) < 1:
                raise ValueError(f"scale must be >= 1 on each axis (DIINN only upscales), got {self.scale!r}")
            self._set("scale", scale)
        if self.pixel_size is not None:
            self._set("pixel_size", _pair(self.pixel_size, "pixel_size"))
        if self.output_shape is not None:
            shape = tuple(self.output_shape)
            if len(shape) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in shape):
                raise ValueError(f"output_shape must be (Y, X) whole numbers >= 1, got {self.output_shape!r}")
            self._set("output_shape", (int(shape[0]), int(shape[1])))
        if self.tile_size is not None and (isinstance(self.tile_size, bool) or int(self.tile_size) != self.tile_size
                                           or self.tile_size < 1):
            raise ValueError(f"tile_size must be a whole number >= 1 (or None for automatic), got {self.tile_size!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or int(self.threads) != self.threads or self.threads < 1):
            raise ValueError(f"threads must be a whole number >= 1 (or None for torch's setting), got {self.threads!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {self.intensity!r}")
        if self.out_dtype is not None:
            self._set("out_dtype", check_dtype(self.out_dtype).name)
        if isinstance(self.consistency, bool) or not isinstance(self.consistency, (int, np.integer)) or self.consistency < 0:
            raise ValueError(f"consistency must be a whole number >= 0 (0 = off), got {self.consistency!r}")
        self._set("consistency", int(self.consistency))
        if self.outlier_clamp is not None:
            try:
                lo, hi = (float(v) for v in self.outlier_clamp)
            except (TypeError, ValueError):
                raise ValueError(f"outlier_clamp must be None or a (low, high) pair of numbers, got {self.outlier_clamp!r}") from None
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= 0 and hi >= 1):
                raise ValueError(f"outlier_clamp must contain the normalised range 0..1 (low <= 0, high >= 1, finite), "
                                 f"got {self.outlier_clamp!r}")
            self._set("outlier_clamp", (lo, hi))
        if not isinstance(self.ensemble, (bool, np.bool_)):
            raise ValueError(f"ensemble must be True or False, got {self.ensemble!r}")
        self._set("ensemble", bool(self.ensemble))
        if not self.max_output_pixels >= 1:
            raise ValueError(f"max_output_pixels must be >= 1, got {self.max_output_pixels!r}")
        if self.nodata is not None:
            if isinstance(self.nodata, bool) or not isinstance(self.nodata, (int, float, np.number)):
                raise ValueError(f"nodata must be None, a number or float('nan'), got {self.nodata!r}")
            self._set("nodata", float(self.nodata))

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)

    def replace(self, **changes) -> RunSettings:
        """A copy with some fields changed (validated again); a new size request replaces the old one."""
        if changes.keys() & {"scale", "output_shape", "pixel_size"}:
            changes = {"scale": None, "output_shape": None, "pixel_size": None, **changes}
        return dataclasses.replace(self, **changes)

    # ---- resolving the size ---------------------------------------------------------------------
    def output_yx(self, in_yx: tuple[int, int], input_pixel_size: tuple[float, float] | None = None) -> tuple[int, int]:
        """(Y, X) of each output plane for input planes of ``in_yx``.

        ``input_pixel_size``: the input's own (y, x) pixel size, needed when
        the request is a target pixel size.
        """
        if self.output_shape is not None:
            return output_size(in_yx, output_shape=self.output_shape)
        return output_size(in_yx, self.factors(input_pixel_size))

    def factors(self, input_pixel_size: tuple[float, float] | None = None) -> tuple[float, float]:
        """The requested (sy, sx) factors: ``scale``, or input pixel size / target pixel size."""
        if self.scale is not None:
            return self.scale
        if self.pixel_size is not None:
            if input_pixel_size is None:
                raise ValueError("a target pixel size needs the input's pixel size; the image has none: give a scale instead")
            own = _pair(input_pixel_size, "the input's pixel size")
            return own[0] / self.pixel_size[0], own[1] / self.pixel_size[1]
        raise ValueError(f"no size requested: {SIZE_REQUEST}")

    def output_dtype(self, input_dtype) -> np.dtype:
        """The one dtype rule: ``out_dtype``, else the input's own (float16 and float64 too: the engine
        computes in float32 and casts at the end, so a float64 stack stays float64)."""
        return np.dtype(self.out_dtype) if self.out_dtype is not None else check_dtype(input_dtype)

    def record(self) -> dict[str, Any]:
        """The settings as JSON-ready data (a model instance is recorded as its class name)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            elif not isinstance(value, (str, int, float, tuple, type(None))):
                value = type(value).__name__
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out
