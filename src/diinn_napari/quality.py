"""The degradation and the fidelity metrics: one home for training, the engine, evaluation and benchmarks.

* :func:`downsample`: the degradation the models are trained for, antialiased
  bicubic downsampling of a (B, C, H, W) tensor to a given size (so the real
  size ratio of each axis, which may differ per axis and need not be an
  integer). :func:`antialias_matrix` writes the same operator as a matrix over
  any window of the global grid, which is what lets the engine's data
  consistency run tile by tile and still equal the whole-image result.
  :func:`degrade_axis` is the other one: Z of a stack, a Gaussian blur along one
  axis then point samples (no antialiasing), for isotropic reconstruction.
* metrics on arrays in their own units: :func:`psnr` and :func:`ssim` (from
  ``skimage.metrics``), :func:`mean_bias_percent` (mean difference in % of the
  reference's robust range p99.9 - p0.1), :func:`clipped_fraction` (output
  pixels at the dtype's limits where the reference is not) and
  :func:`lr_consistency` (PSNR of the downsampled output against the input).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

ROBUST_RANGE_PERCENTILES = (0.1, 99.9)


# ---- the degradation -----------------------------------------------------------------------------
def downsample(hr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic downsampling of (B, C, H, W) to ``size`` (the LR of a training pair).

    The ratio of each axis is the real size ratio ``H / size[0]``, ``W / size[1]``.
    """
    return F.interpolate(hr, size=size, mode="bicubic", align_corners=False, antialias=True)


def downsample_array(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """:func:`downsample` for a numpy (Y, X) or (C, Y, X) array; returns float32 of the same layout."""
    array = np.asarray(image, dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(array.reshape(-1, *array.shape[-2:])))[None]
    out = downsample(tensor, size)[0].numpy()
    return out.reshape(*array.shape[:-2], *out.shape[-2:])


def degrade_axis(hr: torch.Tensor, ratio: float, sigma: float, n_lr: int, offset: float = 0) -> torch.Tensor:
    """Axial degradation of (B, C, H, W) planes along H: Gaussian blur (``sigma`` pixels), then point samples.

    LR row ``j`` is the blurred HR at row ``offset + j * ratio`` (linear
    interpolation between rows for a non-integer ratio), ``j = 0 .. n_lr - 1``;
    W is kept. The blur reflects at the crop's border, so keep ``offset`` (and
    the rows past the last sample) at least ``3 * sigma`` from it. This is how
    a microscope samples Z (axial PSF, then one plane every ``ratio`` pixels):
    the degradation of :func:`diinn_napari.adapt.adapt` and of the
    trainer's axial items.
    """
    if sigma >= 0.1:
        radius = max(1, math.ceil(3 * sigma))
        t = torch.arange(-radius, radius + 1, dtype=hr.dtype, device=hr.device)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = (k / k.sum()).view(1, 1, -1, 1).expand(hr.shape[1], 1, -1, 1)
        hr = F.conv2d(F.pad(hr, (0, 0, radius, radius), mode="reflect"), k, groups=hr.shape[1])
    pos = offset + torch.arange(n_lr, dtype=torch.float64) * ratio
    if float(pos[-1]) > hr.shape[-2] - 1 + 1e-9:
        raise ValueError(f"{n_lr} samples every {ratio:g} rows from row {offset} need {float(pos[-1]) + 1:g} rows; "
                         f"the crop has {hr.shape[-2]}")
    lo = pos.floor().long().clamp(max=hr.shape[-2] - 1)
    hi = (lo + 1).clamp(max=hr.shape[-2] - 1)
    frac = (pos - lo.double()).to(device=hr.device, dtype=hr.dtype).view(1, 1, -1, 1)
    return hr[:, :, lo] * (1 - frac) + hr[:, :, hi] * frac


def _aa_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """The cubic kernel of PyTorch's antialiased bicubic resampling (Pillow's, a = -0.5)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def antialias_support(n_hr: int, n_lr: int, start: int, stop: int) -> tuple[int, int]:
    """HR index range ``[lo, hi)`` that LR pixels ``start..stop-1`` of :func:`downsample` read."""
    scale = n_hr / n_lr
    support = 2.0 * scale if scale >= 1 else 2.0
    lo = max(int(scale * (start + 0.5) - support + 0.5), 0)
    hi = min(int(scale * (stop - 0.5) + support + 0.5), n_hr)
    return lo, hi


def antialias_matrix(n_hr: int, n_lr: int, start: int, stop: int, hr_start: int, hr_stop: int) -> np.ndarray:
    """Rows ``start..stop-1`` of the 1D :func:`downsample` operator (n_hr -> n_lr) on HR columns ``[hr_start, hr_stop)``.

    The same weights as ``F.interpolate(mode="bicubic", antialias=True,
    align_corners=False)`` on the whole axis, normalised at the *global*
    borders, so a window computes exactly the global result. float64,
    shape (stop - start, hr_stop - hr_start); raises if the HR window misses
    part of the support.
    """
    scale = n_hr / n_lr
    support = 2.0 * scale if scale >= 1 else 2.0
    inv = 1.0 / scale if scale >= 1 else 1.0
    weights = np.zeros((stop - start, hr_stop - hr_start), dtype=np.float64)
    for row, i in enumerate(range(start, stop)):
        centre = scale * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_hr)
        if lo < hr_start or hi > hr_stop:
            raise ValueError(f"HR window [{hr_start}, {hr_stop}) misses the support [{lo}, {hi}) of LR pixel {i}")
        w = _aa_cubic((np.arange(lo, hi) - centre + 0.5) * inv)
        weights[row, lo - hr_start : hi - hr_start] = w / w.sum()
    return weights


# ---- metrics -------------------------------------------------------------------------------------
def robust_range(reference: np.ndarray) -> float:
    """p99.9 - p0.1 of ``reference`` (1.0 for a constant image, so bias stays defined)."""
    lo, hi = np.percentile(np.asarray(reference, dtype=np.float64), ROBUST_RANGE_PERCENTILES)
    return float(hi - lo) if hi > lo else 1.0


def mean_bias_percent(output: np.ndarray, reference: np.ndarray, value_range: float | None = None) -> float:
    """Mean of ``output - reference`` in % of the reference's robust range (or of ``value_range``)."""
    output, reference = np.asarray(output, np.float64), np.asarray(reference, np.float64)
    if output.shape != reference.shape:
        raise ValueError(f"output {output.shape} and reference {reference.shape} must have the same shape")
    value_range = robust_range(reference) if value_range is None else float(value_range)
    return float(100.0 * (output.mean() - reference.mean()) / value_range)


def dtype_limits(dtype: np.dtype) -> tuple[float, float]:
    """The representable range of an integer dtype; (-inf, inf) for floats."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return -np.inf, np.inf


def clipped_fraction(output: np.ndarray, reference: np.ndarray, limits: tuple[float, float] | None = None) -> float:
    """Fraction of output pixels at the limits (default: the output dtype's) where the reference is inside them.

    For float outputs without explicit ``limits`` nothing is clipped (0.0).
    """
    output, reference = np.asarray(output), np.asarray(reference)
    if output.shape != reference.shape:
        raise ValueError(f"output {output.shape} and reference {reference.shape} must have the same shape")
    lo, hi = dtype_limits(output.dtype) if limits is None else limits
    if not (np.isfinite(lo) or np.isfinite(hi)):
        return 0.0
    out, ref = output.astype(np.float64), reference.astype(np.float64)
    newly = ((out <= lo) & (ref > lo)) | ((out >= hi) & (ref < hi))
    return float(newly.mean())


def psnr(output: np.ndarray, reference: np.ndarray, data_range: float) -> float:
    """PSNR in dB (``skimage.metrics``); ``inf`` for identical arrays."""
    from skimage.metrics import peak_signal_noise_ratio  # lazily: it imports scipy.stats (seconds)

    return float(peak_signal_noise_ratio(np.asarray(reference, np.float64), np.asarray(output, np.float64), data_range=data_range))


def ssim(output: np.ndarray, reference: np.ndarray, data_range: float, channel_axis: int | None = None,
         where: np.ndarray | None = None) -> float:
    """SSIM (``skimage.metrics``); NaN for images under 7 pixels on a side.

    ``where``: a bool mask of the spatial shape; the mean of the SSIM map over it only.
    """
    a, b = np.asarray(reference, np.float64), np.asarray(output, np.float64)
    spatial = [n for i, n in enumerate(a.shape) if channel_axis is None or i != channel_axis % a.ndim]
    if min(spatial) < 7:
        return float("nan")
    from skimage.metrics import structural_similarity

    if where is None:
        return float(structural_similarity(a, b, data_range=data_range, channel_axis=channel_axis))
    _, full = structural_similarity(a, b, data_range=data_range, channel_axis=channel_axis, full=True)
    if channel_axis is not None:
        full = np.moveaxis(full, channel_axis, -1).mean(-1)
    return float(full[where].mean()) if where.any() else float("nan")


def lr_consistency(output: np.ndarray, lr: np.ndarray, data_range: float) -> dict:
    """How well the output explains its input: downsample it back to ``lr``'s grid, compare.

    ``output`` and ``lr`` are (Y, X) or (C, Y, X) in the same units. Returns
    ``{"psnr": dB of D(output) vs lr, "bias": mean bias of D(output) in % of
    lr's robust range}``.
    """
    lr = np.asarray(lr, np.float64)
    down = downsample_array(np.asarray(output, np.float32), lr.shape[-2:]).astype(np.float64)
    return {"psnr": psnr(down, lr, data_range), "bias": mean_bias_percent(down, lr)}


# ---- a test image with the statistics of sparse fluorescence ------------------------------------
def sparse_fluorescence(shape: tuple[int, int] = (256, 256), spots: int = 20, seed: int = 0) -> np.ndarray:
    """A synthetic sparse fluorescence plane, uint16: Poisson spots on a dark, noisy background.

    Gaussian spots (sigma 1-3 px, 50-2000 photons at the peak) on a background
    of 5 photons, Poisson shot noise, a camera offset of 10 counts and
    Gaussian read noise (sigma 2 counts): most pixels are dark background a
    few counts above 0, as in the images where a biased model loses its mean
    and clips at 0.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    photons = np.full(shape, 5.0)
    for _ in range(spots):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        sigma, peak = rng.uniform(1.0, 3.0), rng.uniform(50, 2000)
        photons += peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    counts = rng.poisson(photons) + 10 + rng.normal(0, 2.0, shape)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def undershoot_fraction(output: np.ndarray, image: np.ndarray, tolerance: float = 0.01) -> float:
    """Fraction of ``output`` pixels below ``image``'s minimum minus ``tolerance`` x its robust range.

    The ground-truth-free check of an upscaled ``image``: no value the data
    cannot have (holes dug below the plane's own floor). For (C, Y, X) or
    (Y, X, C) data pass one channel at a time.
    """
    image = np.asarray(image, np.float64)
    floor = image.min() - tolerance * robust_range(image)
    return float((np.asarray(output, np.float64) < floor).mean())


def new_zero_fraction(output: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of ``output`` pixels at or below 0 where ``reference`` (same shape) is above 0."""
    output, reference = np.asarray(output), np.asarray(reference)
    if output.shape != reference.shape:
        raise ValueError(f"output {output.shape} and reference {reference.shape} must have the same shape")
    return float(((output <= 0) & (reference > 0)).mean())


def dark_fluorescence(shape: tuple[int, int] = (256, 256), dtype=np.uint16, seed: int = 0) -> np.ndarray:
    """A synthetic dark-background fluorescence plane: nuclei and spots of several sizes, Poisson noise.

    Nuclei (ellipses, radius 4-22 px, soft edges, textured) and spots (Gaussian,
    sigma 0.6-2.5 px) on a background of 3 photons, Poisson shot noise, a
    camera offset and read noise, 1 count per photon: uint16 on an offset of 3
    (the background near 6 counts, minimum 1-2, peaks in the thousands), uint8
    on an offset of 2 (the background near 5, peaks up to the dtype's top).
    Most pixels are dark background; bright objects sit right next to it.
    """
    from scipy.ndimage import gaussian_filter

    dtype = np.dtype(dtype)
    if dtype not in (np.uint8, np.uint16):
        raise ValueError(f"dark_fluorescence makes uint8 or uint16 planes, not {dtype}")
    eight = dtype == np.uint8
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    photons = np.full(shape, 3.0)
    for _ in range(max(1, h * w // 5000)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(4, 22), rng.uniform(4, 22)
        angle = rng.uniform(0, np.pi)
        u = ((yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)) / ry
        v = (-(yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)) / rx
        edge = 1 / (1 + np.exp((np.sqrt(u * u + v * v) - 1) * min(ry, rx) / 1.0))
        texture = 1 + 0.4 * gaussian_filter(rng.normal(0, 1, shape), 1.5) / 0.19
        photons += rng.uniform(30, 150 if eight else 1500) * edge * np.clip(texture, 0.3, None)
    for _ in range(max(1, h * w // 800)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        sigma = rng.uniform(0.6, 2.5)
        photons += rng.uniform(20, 250 if eight else 5000) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    gain, offset, read = (1.0, 2.0, 0.7) if eight else (1.0, 3.0, 0.7)
    counts = gain * rng.poisson(photons) + offset + rng.normal(0, read, shape)
    info = np.iinfo(dtype)
    return np.clip(np.rint(counts), info.min, info.max).astype(dtype)


def few_levels(shape: tuple[int, int] = (256, 256), levels: int = 13, dtype=np.uint16, seed: int = 0) -> np.ndarray:
    """A synthetic low-dynamic-range plane: smooth cell-like texture whose values span only ``levels`` counts.

    Textures at a few scales (as in dim transmitted-light or short-exposure
    images), noise of 0.4 counts, rounded to integers on an offset (100 for
    uint16, 20 for uint8): about ``levels`` distinct values over the plane.
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    signal = sum(gaussian_filter(rng.normal(0, 1, shape), sigma) * sigma for sigma in (2.0, 5.0, 12.0))
    lo, hi = np.percentile(signal, (0.5, 99.5))
    signal = (signal - lo) / (hi - lo) * (levels - 1)
    offset = 20.0 if np.dtype(dtype) == np.uint8 else 100.0
    counts = signal + offset + rng.normal(0, 0.4, shape)
    info = np.iinfo(dtype)
    return np.clip(np.rint(counts), info.min, info.max).astype(dtype)
