"""Isotropic volumes: super-resolve the Z axis of anisotropic stacks with DIINN.

    from diinn_napari.isotropic import isotropic
    iso = isotropic(stack, spacing=(dz, dy, dx))          # Z resampled to the XY pixel size

Z planes are *point samples*: input plane ``j`` lies at ``z_first + j * dz``
and output plane ``k`` at ``z_first + k * target``, so the output has
``floor((Z - 1) * dz / target) + 1`` planes, its first plane is the first
input plane and, when ``dz / target`` is an integer ``r``, output plane
``r * j`` lies exactly on input plane ``j``. The network super-resolves every
XZ plane and every YZ plane along Z only (X and Y keep their pixels) and the
two views are fused (mean by default; see :data:`FUSIONS`).

:func:`adapt` fine-tunes a model on the user's own stack: its XY planes hold
the lateral resolution that Z lacks, so XY planes degraded along one axis
only (axial blur, then point sampling every ``dz / target`` pixels) teach the
model the (Z, lateral) degradation of XZ/YZ planes.

Command line (reads the Z step from ImageJ ``spacing`` or OME
``PhysicalSizeZ``, the XY pixel size from the resolution tags / OME)::

    python -m diinn_napari.isotropic STACK.tif --out STACK_iso.tif [--adapt-steps 300]

This module imports torch only when work starts (the napari plugin may
import it for :func:`isotropic_shape`).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .model import DIINN
    from .settings import RunSettings

log = logging.getLogger("diinn_napari.isotropic")

# How the XZ and YZ reconstructions of a voxel are combined. "mean" (default)
# averages the two views (measured best, see benchmarks/isotropic.py); "max"
# and "min" keep the brighter/darker; "xz"/"yz" compute one view only (half
# the time).
FUSIONS = ("mean", "max", "min", "xz", "yz")
# Intensity map of a volume: fitted on at most this many evenly spaced Z planes.
INTENSITY_PLANES = 16


class IsoStep(NamedTuple):
    """Progress of :func:`isotropic_steps`: work units done of total; a finished block of output rows.

    ``index`` is the leading index (the axes in front of Z), ``rows`` the Y
    range ``(y0, y1)`` of ``block`` ((Z_out, y1 - y0, X), output dtype), given
    on the step that finishes that block, else ``None``.
    """

    done: int
    total: int
    index: tuple[int, ...]
    rows: tuple[int, int] | None
    block: np.ndarray | None


# ---- geometry: the planner (no torch) -----------------------------------------------------------
from .isotropic_plan import (  # noqa: E402  (public here too: the library's geometry)
    FWHM_PER_SIGMA,
    check_spacing as _check_spacing,
    default_axial_sigma,
    isotropic_shape,
    output_spacing,
    volume_axes as _volume_axes,
    z_positions as _positions,
    z_step,
)


# ---- the pipeline --------------------------------------------------------------------------------
def _layout(volume) -> tuple[tuple[int, ...], tuple[int, int, int]]:
    if not (hasattr(volume, "shape") and hasattr(volume, "dtype") and hasattr(volume, "__getitem__")):
        raise TypeError(f"volume must be a numpy array or an array-like (dask, zarr), got {type(volume).__name__}")
    shape = tuple(int(n) for n in volume.shape)
    if len(shape) < 3:
        raise ValueError(f"volume has shape {shape}: need (..., Z, Y, X); move channel/time axes in front of Z")
    if 0 in shape:
        raise ValueError(f"volume is empty (shape {shape})")
    if shape[-3] < 2:
        raise ValueError(f"volume has {shape[-3]} Z plane(s): Z super-resolution needs at least 2")
    return shape[:-3], shape[-3:]


def _cancelled(cancel) -> bool:
    return cancel is not None and (cancel.is_set() if isinstance(cancel, threading.Event) else bool(cancel()))


def fit_volume_intensity(volume, mode: str = "auto"):
    """The engine's intensity map, fitted on one (Z, Y, X) volume (at most :data:`INTENSITY_PLANES` Z planes read).

    One map for the whole volume, so the XZ and YZ planes (which cut across
    all Z planes) are normalised alike.
    """
    from .intensity import fit_intensity

    n = int(volume.shape[0])
    picks = np.unique(np.linspace(0, n - 1, min(n, INTENSITY_PLANES)).round().astype(int))
    sample = np.stack([np.asarray(volume[int(i)]) for i in picks])
    return fit_intensity(sample, mode)


def isotropic_steps(
    volume,
    spacing,
    target: float | None = None,
    *,
    model: str | os.PathLike | DIINN = "default",
    device: str | torch.device = "auto",
    fusion: str = "mean",
    tile_size: int | None = None,
    block_rows: int | None = None,
    progress: Callable[[int, int], Any] | None = None,
    cancel: Callable[[], bool] | threading.Event | None = None,
    intensity: str = "auto",
    out_dtype: np.dtype | str | None = None,
    consistency: int = 0,
    outlier_clamp: tuple[float, float] | None | str = "default",
    max_output_voxels: int | None = None,
    settings: RunSettings | None = None,
) -> Iterator[IsoStep]:
    """:func:`isotropic` one network call at a time; a step that finishes a block of Y rows carries it.

    ``settings``: the shells' :class:`~diinn_napari.settings.RunSettings`; when
    given, its model, device, tile_size, intensity, out_dtype, consistency and
    outlier_clamp are used instead of those keywords (its size fields are not:
    Z is sized by ``spacing`` and ``target``).

    Per leading index (the axes in front of Z) the volume is processed in
    blocks of ``block_rows`` Y rows: the block's input rows plus the model's
    receptive radius are read (``volume[..., :, y0 - m : y1 + m, :]``), its XZ
    planes (tiled along X) and its YZ planes (every X, the block's rows) are
    decoded, fused, made consistent, and yielded. Memory: one block of input
    and two of output (float32), plus one tile of network features.
    """
    import torch

    from .engine import Cancelled, _in_dtype, _valid_range, compute_dtype, get_model
    from .settings import OUTLIER_CLAMP, RunSettings
    from .intensity import check_dtype
    from .model.grid import AxisSamples, sample_bicubic_matrix

    if settings is None:  # the keywords, validated the way the shells' settings object is
        default_clamp = isinstance(outlier_clamp, str) and outlier_clamp == "default"
        settings = RunSettings(model=model, device=device, tile_size=tile_size or None, intensity=intensity,
                               out_dtype=out_dtype, consistency=consistency,
                               outlier_clamp=OUTLIER_CLAMP if default_clamp else outlier_clamp)
    leading, (Z, Y, X) = _layout(volume)
    check_dtype(volume.dtype)
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    step = z_step(spacing, target)
    positions = _positions(Z, step)
    Zo = len(positions)
    samples = AxisSamples(positions, step)
    n_out = int(np.prod(leading, dtype=np.int64)) * Zo * Y * X
    if max_output_voxels is not None and n_out > max_output_voxels:
        raise ValueError(
            f"the output would be {leading + (Zo, Y, X)} = {n_out:,} voxels, above max_output_voxels={max_output_voxels:,}; "
            "process a crop, use a coarser target Z step, or raise the limit"
        )
    consistency, clamp, intensity = settings.consistency, settings.outlier_clamp, settings.intensity
    dtype = settings.output_dtype(volume.dtype)  # the engine's dtype rule
    compute = compute_dtype(dtype)
    net = get_model(settings.model, 1, settings.device)
    if net.in_channels != 1:
        raise ValueError(f"isotropic() needs a single-channel model; this one takes {net.in_channels} channels "
                         "(colour volumes: process each channel as a leading axis)")
    dev = next(net.parameters()).device
    m = net.receptive_radius
    tile = int(settings.tile_size or (256 if dev.type == "cuda" else 128))
    rows_per_block = int(block_rows or max(8, min(Y, (1 << 22) // max(1, Zo * X))))
    if rows_per_block < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows!r}")
    views = [v for v in ("xz", "yz") if fusion in ("mean", "max", "min", v)]
    plan = [((y0, min(y0 + rows_per_block, Y)), _block_calls(y0, min(y0 + rows_per_block, Y), Z, Y, X, m, tile, views))
            for y0 in range(0, Y, rows_per_block)]
    total = int(np.prod(leading, dtype=np.int64)) * sum(len(calls) for _, calls in plan)
    done = 0
    upsample = sample_bicubic_matrix(samples, Z, 0, Zo, 0, Z).to(dev)  # (Zo, Z): cubic along Z at the output planes
    # consistency: D samples the output column at the input planes (output index j / step), cubic
    down = sample_bicubic_matrix(np.arange(Z, dtype=np.float64) / step, Zo, 0, Z, 0, Zo).to(dev)

    with torch.no_grad():
        for index in np.ndindex(*leading):
            vol = volume[index] if index else volume
            mapping = fit_volume_intensity(vol, intensity)
            lo, hi = _valid_range(mapping, compute)
            for (y0, y1), calls in plan:
                a, b = max(0, y0 - m - 1), min(Y, y1 + m + 1)  # one more row: real neighbours for the outlier median
                seen, excess = _replace_outliers(mapping.normalize(np.asarray(vol[:, a:b, :])), clamp)
                seen_t = torch.from_numpy(seen).to(dev)  # (Z, b - a, X)
                acc = {v: torch.empty((Zo, y1 - y0, X), dtype=torch.float32, device=dev) for v in views}
                for view, (r0, r1), (s0, s1), (w0, w1) in calls:
                    if _cancelled(cancel):
                        raise Cancelled(f"cancelled after {done} of {total} steps")
                    if view == "xz":  # planes y = r0..r1-1, (Z, X) each, LR columns s0:s1, output columns w0:w1
                        lr = seen_t[:, r0 - a : r1 - a, s0:s1].permute(1, 0, 2)
                        out = _decode(net, lr[:, None].contiguous(), samples, Z, Zo, X, (w0, w1), s0)
                        acc[view][:, r0 - y0 : r1 - y0, w0:w1] = out.permute(1, 0, 2)
                    else:  # planes x = r0..r1-1, (Z, Y) each, LR rows s0:s1, output rows w0:w1 (= the block)
                        lr = seen_t[:, s0 - a : s1 - a, r0:r1].permute(2, 0, 1)
                        out = _decode(net, lr[:, None].contiguous(), samples, Z, Zo, Y, (w0, w1), s0)
                        acc[view][:, :, r0:r1] = out.permute(1, 2, 0)
                    done += 1
                    if progress is not None:
                        progress(done, total)
                    yield IsoStep(done, total, index, None, None)
                fused = _fuse([acc[v] for v in views], fusion).clamp(lo, hi)
                measured = seen_t[:, y0 - a : y1 - a, :]
                for _ in range(consistency):  # back-projection along Z with the point-sampling degradation
                    residual = measured - torch.einsum("jk,kyx->jyx", down, fused)
                    fused = (fused + torch.einsum("kj,jyx->kyx", upsample, residual)).clamp(lo, hi)
                if excess is not None:  # outliers: their excess travels the cubic path along Z, linearly
                    extra = torch.from_numpy(np.ascontiguousarray(excess[:, y0 - a : y1 - a, :])).to(dev)
                    fused = (fused + torch.einsum("kj,jyx->kyx", upsample, extra)).clamp(lo, hi)
                yield IsoStep(done, total, index, (y0, y1), _in_dtype(mapping.denormalize(fused.cpu().numpy(), compute), dtype))


# LR pixels (Z x lateral x planes, halo included) per network call. Bounds the memory of one call like an
# engine tile of 256 x 256: features 16 MiB, the fast decoder's per-LR-pixel table (4 KiB a pixel) <= 256 MiB.
CALL_PIXELS = 1 << 16


def _block_calls(y0: int, y1: int, Z: int, Y: int, X: int, m: int, tile: int, views: list[str]) -> list:
    """Network calls of one block of Y rows: (view, planes, LR lateral range, output lateral window)."""
    calls = []
    if "xz" in views:
        for w0 in range(0, X, tile):
            w1 = min(w0 + tile, X)
            s0, s1 = max(0, w0 - m), min(X, w1 + m)
            per_call = max(1, CALL_PIXELS // (Z * (s1 - s0)))
            calls += [("xz", (r, min(r + per_call, y1)), (s0, s1), (w0, w1)) for r in range(y0, y1, per_call)]
    if "yz" in views:
        s0, s1 = max(0, y0 - m), min(Y, y1 + m)
        per_call = max(1, CALL_PIXELS // (Z * (s1 - s0)))
        calls += [("yz", (c, min(c + per_call, X)), (s0, s1), (y0, y1)) for c in range(0, X, per_call)]
    return calls


def _decode(net, lr, samples, Z: int, Zo: int, lateral: int, window: tuple[int, int], origin: int):
    """(B, 1, Z, w) normalised planes -> (B, Zo, window) decoded along Z at ``samples`` (lateral axis unchanged)."""
    features = net.encode(lr)
    out = net.decode_window(lr, features, (Z, lateral), (Zo, lateral), (0, Zo, window[0], window[1]), (0, origin),
                            "fast", samples=(samples, None))
    return out[:, 0]


def _replace_outliers(block: np.ndarray, clamp) -> tuple[np.ndarray, np.ndarray | None]:
    """The engine's outlier rule on a (Z, Y, X) block: values outside ``clamp`` -> clamped 3x3x3 median.

    Returns (what the network sees, the excess to add back by interpolation or None).
    """
    if clamp is None:
        return block, None
    outside = (block < clamp[0]) | (block > clamp[1])
    if not outside.any():
        return block, None
    from scipy.ndimage import median_filter

    median = np.clip(median_filter(block, size=3, mode="nearest"), clamp[0], clamp[1])
    seen = np.where(outside, median, block).astype(np.float32)
    return seen, (block - seen).astype(np.float32)


def _fuse(views: list, fusion: str):
    """Combine the XZ and YZ reconstructions of a block (one view: itself)."""
    import torch

    if len(views) == 1:
        return views[0]
    if fusion == "mean":
        return (views[0] + views[1]) * 0.5
    return torch.maximum(*views) if fusion == "max" else torch.minimum(*views)


def isotropic(
    volume,
    spacing,
    target: float | None = None,
    *,
    out: np.ndarray | None = None,
    **options,
) -> np.ndarray:
    """Resample the Z axis of (..., Z, Y, X) volumes to the XY pixel size (or to ``target``) with DIINN.

    volume: numpy or array-like (dask, zarr, memmap), (..., Z, Y, X); axes in
        front of Z (time, channel) are processed independently. Read one block
        of Y rows at a time.
    spacing: (dz, dy, dx) in one unit (e.g. µm).
    target: output Z step in that unit; default the XY pixel size
        (``min(dy, dx)``). Must be <= dz.

    Z planes are point samples: input plane ``j`` lies at ``z0 + j * dz``,
    output plane ``k`` at ``z0 + k * target``; the output has
    ``Z_out = floor((Z - 1) * dz / target) + 1`` planes (:func:`isotropic_shape`)
    and, when ``dz / target`` is an integer ``r``, output plane ``r * j`` sits
    exactly at input plane ``j`` (with ``consistency >= 1`` it also equals that
    plane, up to dtype rounding). In napari: Z scale ``target`` and the same
    Z translate as the input (the first plane does not move).

    Every XZ and YZ plane is super-resolved along Z only (scale ``dz / target``,
    the other axis unchanged) and the two views are fused (``fusion``: "mean",
    "max", "min", or one view, "xz" / "yz").

    Options (as in :func:`diinn_napari.engine.upscale`): model, device,
    tile_size, progress(done, total), cancel (callable or Event; raises
    :class:`~diinn_napari.engine.Cancelled`), intensity (one map per volume,
    fitted on up to 16 evenly spaced Z planes), out_dtype (default the
    input's, float64 included: the network computes in float32), outlier_clamp ("default": the engine's
    ``OUTLIER_CLAMP``; outliers are replaced by their clamped 3x3x3 median for
    the network and their excess is added back by cubic interpolation along
    Z), max_output_voxels, and block_rows (Y rows per block).
    ``consistency``: iterative back-projection steps along Z with the
    point-sampling degradation (the output, cubic-interpolated at the input
    planes, should give the input planes back). Default 0, unlike the
    engine: the degradation it enforces has no axial blur, so on blurred Z
    planes it would put the blur back into the planes it matches.
    ``out``: a preallocated array (e.g. a tifffile memmap) of the output shape
    and dtype to write into.

    Returns the (..., Z_out, Y, X) volume, in the input dtype by default.
    """
    _layout(volume)
    shape = isotropic_shape(volume.shape, spacing, target)
    result = out
    if result is not None and tuple(result.shape) != shape:
        raise ValueError(f"out has shape {tuple(result.shape)}; the output needs {shape}")
    for step in isotropic_steps(volume, spacing, target, **options):
        if step.block is None:
            continue
        if result is None:
            result = np.empty(shape, step.block.dtype)
        result[step.index + (slice(None), slice(*step.rows), slice(None))] = step.block
    return result


def iter_isotropic_volumes(volume, spacing, target: float | None = None, **options) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Yield ``(leading_index, output_volume)``, one (Z_out, Y, X) volume at a time (for writers).

    Options as in :func:`isotropic`; one output volume exists at a time, so a
    writer can emit its Z planes (``output_volume[k]``) as each volume finishes.
    """
    current, result = None, None
    for step in isotropic_steps(volume, spacing, target, **options):
        if step.block is None:
            continue
        if step.index != current:
            current = step.index
            result = np.empty((step.block.shape[0], int(volume.shape[-2]), int(volume.shape[-1])), step.block.dtype)
        result[:, step.rows[0] : step.rows[1]] = step.block
        if step.rows[1] == result.shape[1]:
            yield current, result
            current = None


# ---- self-supervised adaptation ------------------------------------------------------------------
def _training_planes(volume, intensity: str) -> list[np.ndarray]:
    """Every XY plane of every (Z, Y, X) volume, normalised with its volume's intensity map."""
    leading, _ = _layout(volume)
    planes = []
    for index in np.ndindex(*leading):
        vol = volume[index] if index else volume
        mapping = fit_volume_intensity(vol, intensity)
        planes += [mapping.normalize(np.asarray(vol[z])) for z in range(int(vol.shape[0]))]
    return planes


def adapt(
    volume,
    spacing,
    target: float | None = None,
    *,
    model: str | os.PathLike | DIINN = "default",
    steps: int = 300,
    axial_sigma: float | None = None,
    lr_rows: int = 8,
    patch: int = 32,
    batch: int = 4,
    learning_rate: float = 5e-5,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity: str = "auto",
    progress: Callable[[int, int, float], Any] | None = None,
    cancel: Callable[[], bool] | threading.Event | None = None,
) -> DIINN:
    """Self-supervised fine-tuning on the stack's own XY planes; returns an adapted copy of ``model``.

    Each step draws ``batch`` random XY crops (random plane, flips, and a
    transpose, so rows are Y or X), degrades them along the rows exactly as
    Z is sampled (Gaussian blur of ``axial_sigma`` XY pixels, then point
    samples every ``ratio = dz / target`` pixels; ``lr_rows`` x ``patch`` LR
    pixels), decodes the full HR crop at the point-sample positions and takes
    an L1 step (Adam, ``learning_rate``, cosine decay to 10 %).
    ``axial_sigma=None`` uses :func:`default_axial_sigma` of the Z step in XY
    pixels (``dz / dx``); 0 = pure point sampling. ``progress(step, steps,
    loss)`` after each step; ``cancel`` stops between steps
    (raises :class:`~diinn_napari.engine.Cancelled`). The input model (and the
    engine's cached copy) are not modified.
    """
    import torch
    import torch.nn.functional as F

    from .engine import Cancelled, get_model
    from .model.grid import AxisSamples
    from .quality import degrade_axis

    _layout(volume)
    dz, dy, dx = _check_spacing(spacing)
    step = z_step(spacing, target)
    ratio = 1.0 / step  # output planes per input plane = HR pixels per LR row in training
    pixel = dz * step  # the output Z step, in which the XY planes are the HR
    if axial_sigma is None:
        axial_sigma = default_axial_sigma(dz / min(dy, dx))
    if not (math.isfinite(axial_sigma) and axial_sigma >= 0):
        raise ValueError(f"axial_sigma must be >= 0 (XY pixels), got {axial_sigma!r}")
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps must be a whole number >= 0, got {steps!r}")
    if not math.isclose(pixel, min(dy, dx), rel_tol=0.05):
        log.info("target %g differs from the XY pixel size %g: training pairs use the XY pixels as the target grid",
                 pixel, min(dy, dx))
    net = copy.deepcopy(get_model(model, 1, device))
    if net.in_channels != 1:
        raise ValueError(f"adapt() needs a single-channel model; this one takes {net.in_channels} channels")
    dev = next(net.parameters()).device
    planes = _training_planes(volume, intensity)
    h_min, w_min = min(p.shape[0] for p in planes), min(p.shape[1] for p in planes)
    margin = math.ceil(3 * axial_sigma) if axial_sigma >= 0.1 else 0  # HR rows the blur reads beyond the crop
    side = min(h_min, w_min)  # a transposed plane must fit too
    rows = min(lr_rows, int((side - 1 - 2 * margin) / ratio + 1e-9) + 1)
    if rows < 2:
        raise ValueError(f"XY planes of {h_min} x {w_min} pixels are too small for adaptation at ratio {ratio:g} "
                         f"with axial_sigma {axial_sigma:g}: need {math.ceil(ratio) + 1 + 2 * margin} pixels")
    n_hr = len(_positions(rows, step))  # HR rows the point samples span
    width = min(patch, side)
    samples = AxisSamples(_positions(rows, step), step)
    gen = np.random.default_rng(seed)
    opt = torch.optim.Adam(net.parameters(), lr=learning_rate)
    net.train()
    for i in range(steps):
        if _cancelled(cancel):
            raise Cancelled(f"adaptation cancelled after {i} of {steps} steps")
        crops = []
        for _ in range(batch):
            plane = planes[gen.integers(len(planes))]
            if gen.random() < 0.5:  # rows = X: the YZ case
                plane = plane.T
            if gen.random() < 0.5:
                plane = plane[::-1]
            if gen.random() < 0.5:
                plane = plane[:, ::-1]
            h, w = plane.shape
            y = gen.integers(0, h - (n_hr + 2 * margin) + 1)
            x = gen.integers(0, w - width + 1)
            crops.append(np.ascontiguousarray(plane[y : y + n_hr + 2 * margin, x : x + width]))
        hr = torch.from_numpy(np.stack(crops))[:, None].to(dev)
        lr = degrade_axis(hr, ratio, axial_sigma, rows, offset=margin)
        target_hr = hr[:, :, margin : margin + n_hr]
        features = net.encode(lr)
        pred = net.decode_window(lr, features, (rows, width), (n_hr, width), (0, n_hr, 0, width), (0, 0), "fast",
                                 samples=(samples, None))
        loss = F.l1_loss(pred, target_hr)
        for group in opt.param_groups:  # cosine decay to 10 %
            group["lr"] = learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / max(1, steps))))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None:
            progress(i + 1, steps, loss.item())
    return net.eval()


# ---- command line --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command-line options of ``python -m diinn_napari.isotropic``."""
    p = argparse.ArgumentParser(
        prog="python -m diinn_napari.isotropic",
        description="Resample the Z axis of a TIFF stack to the XY pixel size (or --target) with DIINN, "
                    "optionally after self-supervised adaptation to the stack (--adapt-steps).")
    p.add_argument("stack", help="ImageJ/OME/plain TIFF with a Z axis (ZYX, ZCYX, TZCYX, ...)")
    p.add_argument("--out", help="output TIFF (default: STACK_iso.tif next to the input)")
    p.add_argument("--target", type=float, help="output Z step in the file's unit (default: the XY pixel size)")
    p.add_argument("--z-step", type=float, help="input Z step; overrides the file's ImageJ spacing / OME PhysicalSizeZ")
    p.add_argument("--pixel-size", type=float, help="XY pixel size; overrides the file's resolution / OME PhysicalSizeX")
    p.add_argument("--model", default="default", help="bundled model name or weights file (default: %(default)s)")
    p.add_argument("--adapt-steps", type=int, default=0,
                   help="self-supervised fine-tuning steps on the stack's XY planes before resampling (default: 0, off)")
    p.add_argument("--axial-sigma", type=float, default=None,
                   help="axial blur of the adaptation, XY pixels (default: from the Z step, see default_axial_sigma)")
    p.add_argument("--save-model", help="write the adapted weights here (.safetensors)")
    p.add_argument("--fusion", choices=FUSIONS, default="mean", help="how XZ and YZ views combine (default: mean)")
    p.add_argument("--consistency", type=int, default=0, help="back-projection steps along Z (default: 0)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--seed", type=int, default=0)
    return p


def isotropic_file(
    stack: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    target: float | None = None,
    z_step: float | None = None,
    pixel_size: float | None = None,
    model: str | os.PathLike | DIINN = "default",
    adapt_steps: int = 0,
    axial_sigma: float | None = None,
    save_model: str | os.PathLike | None = None,
    fusion: str = "mean",
    consistency: int = 0,
    device: str = "auto",
    seed: int = 0,
    progress: Callable[[int, int], Any] | None = None,
    cancel: Callable[[], bool] | threading.Event | None = None,
) -> Path:
    """Read a TIFF stack, (adapt a model to it,) resample Z and write the result; returns the output path.

    The Z step comes from ``z_step``, else the file's ImageJ ``spacing`` or
    OME ``PhysicalSizeZ`` (a ValueError names the option when there is
    none); the XY pixel size from ``pixel_size``, else the resolution tags or
    OME ``PhysicalSizeX/Y``. Axes: any of T, C, Z before Y, X (a plain
    multi-page TIFF's pages are taken as Z). The output keeps the input's
    axes, dtype and format (ImageJ stays ImageJ, OME stays OME) with the Z
    spacing set to the new step (ImageJ ``spacing``, OME ``PhysicalSizeZ``);
    default name ``STACK_iso.tif`` next to the input. ``adapt_steps`` > 0
    runs :func:`adapt` first (``save_model`` keeps its weights).
    ``progress(done, total)`` and ``cancel`` cover the resampling.
    """
    import dataclasses

    import tifffile

    from .io import read_info, write_planes

    path = Path(stack)
    info = read_info(path)
    order = _volume_axes(info.axes, path.name)
    dz = z_step if z_step is not None else info.z_spacing
    if dz is None:
        raise ValueError(f"{path.name}: the file has no Z step (ImageJ 'spacing' or OME PhysicalSizeZ); "
                         "give it with --z-step (z_step= in Python), in the unit of the XY pixel size")
    if pixel_size is not None:
        dy = dx = float(pixel_size)
    elif info.pixel_size is not None:
        dy, dx = info.pixel_size
    elif target is not None:
        dy = dx = float(target)  # only the ratio target / dz matters then
    else:
        raise ValueError(f"{path.name}: the file has no XY pixel size (resolution tags or OME PhysicalSizeX); "
                         "give --pixel-size (pixel_size=) or an explicit --target Z step")
    spacing = (float(dz), float(dy), float(dx))
    volume = np.transpose(tifffile.imread(path), order)  # a view: (..., Z, Y, X)
    shape = isotropic_shape(volume.shape, spacing, target)
    new_dz = output_spacing(spacing, target)[0]
    log.info("%s: %s %s, Z step %g -> %g, %d -> %d planes", path.name, info.axes, tuple(info.shape), dz, new_dz,
             volume.shape[-3], shape[-3])
    net = model
    if adapt_steps:
        def report(i, n, loss):
            if i == n or i % max(1, n // 10) == 0:
                log.info("adaptation step %d/%d, L1 %.4f", i, n, loss)

        net = adapt(volume, spacing, target, model=model, steps=adapt_steps, axial_sigma=axial_sigma,
                    device=device, seed=seed, progress=report, cancel=cancel)
        if save_model:
            from .weights import save_weights

            save_weights(net, save_model, {"adapted_on": path.name, "spacing": list(spacing), "target": new_dz,
                                           "steps": adapt_steps, "axial_sigma": axial_sigma})
            log.info("adapted weights: %s", save_model)
    result = isotropic(volume, spacing, target, model=net, device=device, fusion=fusion, consistency=consistency,
                       progress=progress, cancel=cancel)
    result = np.transpose(result, np.argsort(order))  # back to the file's axis order
    imagej = {k: v for k, v in info.imagej.items() if k != "Labels"}  # one label per plane: no longer matches
    if info.kind == "imagej":
        imagej["spacing"] = new_dz
    out_info = dataclasses.replace(info, shape=tuple(result.shape), z_spacing=new_dz, imagej=imagej)
    dest = Path(out) if out else path.with_name(path.stem + "_iso.tif")
    planes = (result[index] for index in np.ndindex(*result.shape[:-2]))
    write_planes(dest, out_info, tuple(result.shape[-2:]), result.dtype, planes,
                 record={"isotropic": {"source": path.name, "z_step_in": dz, "z_step_out": new_dz,
                                       "model": str(model) if not hasattr(model, "config") else "instance",
                                       "adapt_steps": adapt_steps, "fusion": fusion, "consistency": consistency}})
    return dest


def run_cli(args: argparse.Namespace) -> Path:
    """:func:`isotropic_file` with the parsed command-line options, progress logged."""
    def progress(done, total):
        if done == total or done % max(1, total // 10) == 0:
            log.info("resampling %d/%d", done, total)

    return isotropic_file(args.stack, args.out, target=args.target, z_step=args.z_step, pixel_size=args.pixel_size,
                          model=args.model, adapt_steps=args.adapt_steps, axial_sigma=args.axial_sigma,
                          save_model=args.save_model, fusion=args.fusion, consistency=args.consistency,
                          device=args.device, seed=args.seed, progress=progress)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: errors become a message and exit code 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        dest = run_cli(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    log.info("wrote %s", dest)
    return 0


class _CallableModule(types.ModuleType):
    """Lets ``diinn_napari.isotropic(volume, ...)`` work once this submodule is imported.

    Importing ``diinn_napari.isotropic`` binds the package attribute
    ``isotropic`` to this module, shadowing a function of the same name; a
    callable module keeps the documented call working either way.
    """

    def __call__(self, *args, **kwargs):
        return isotropic(*args, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
else:
    sys.modules[__name__].__class__ = _CallableModule
