"""Output sizes, without torch (the napari widget uses this before any work starts)."""

from __future__ import annotations

import math

import numpy as np

# Defaults every shell shares (torch-free, so the napari widget and the CLIs read them without torch).
# Back-projection steps after the network (0 = off): see diinn_napari.engine.upscale.
DEFAULT_CONSISTENCY = 2
# The network sees normalised values clamped to this range; the excess (outliers) goes through bicubic.
OUTLIER_CLAMP = (-1.0, 2.0)


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
        factors = (scale, scale) if np.isscalar(scale) else tuple(scale)
        if len(factors) != 2:
            raise ValueError(f"scale must be a number or a (sy, sx) pair, got {scale!r}")
        for f in factors:
            if not (isinstance(f, (int, float, np.number)) and math.isfinite(f) and f > 0):
                raise ValueError(f"scale must be a finite number > 0, got {f!r}")
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
