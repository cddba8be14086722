"""Isotropic volumes: super-resolve the Z axis of anisotropic stacks with DIINN (the library).

    from diinn_napari.isotropic import isotropic
    iso = isotropic(stack, spacing=(dz, dy, dx))          # Z resampled to the XY pixel size

The geometry (where the output planes lie, what is refused) is the
planner's, :func:`~diinn_napari.isotropic_plan.plan_isotropic`: Z planes are
point samples, input plane ``j`` at ``z_first + j * dz`` and output plane
``k`` at ``z_first + k * target``, so the output has
``floor((Z - 1) * dz / target) + 1`` planes. The network super-resolves every
XZ plane and every YZ plane along Z only (X and Y keep their pixels) and the
two views are fused (mean by default; see :data:`FUSIONS`).

Fine-tuning a model on the stack first: :func:`diinn_napari.adapt.adapt`.
Files (streamed, resumable, with a settings record)::

    python -m diinn_napari.batch STACK.tif --isotropic --out DIR [--adapt-steps 300]

(``python -m diinn_napari.isotropic`` is the same command.) This module
imports torch only when work starts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .core import Assembly, CancelCheck, ProgressCallback, check_array, check_cancel, collect
from .isotropic_plan import default_axial_sigma, isotropic_shape, output_spacing, plan_spacing, z_step

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .model import DIINN
    from .settings import RunSettings

__all__ = ["isotropic", "isotropic_steps", "iter_isotropic_volumes", "IsoStep", "FUSIONS", "fit_volume_intensity",
           "check_volume", "isotropic_shape", "output_spacing", "z_step", "default_axial_sigma"]

# How the XZ and YZ reconstructions of a voxel are combined. "mean" (default)
# averages the two views (measured best, see benchmarks/isotropic.py); "max"
# and "min" keep the brighter/darker; "xz"/"yz" compute one view only (half
# the time).
FUSIONS = ("mean", "max", "min", "xz", "yz")
# Intensity map of a volume: fitted on at most this many evenly spaced Z planes.
INTENSITY_PLANES = 16
# LR pixels (Z x lateral x planes, halo included) per network call. Bounds the memory of one call like an
# engine tile of 256 x 256: features 16 MiB, the fast decoder's per-LR-pixel table (4 KiB a pixel) <= 256 MiB.
CALL_PIXELS = 1 << 16


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

    @property
    def piece(self) -> tuple[tuple, np.ndarray] | None:
        """``(where, block)`` in the (..., Z_out, Y, X) output once a block is finished (:class:`~diinn_napari.core.Assembly`)."""
        if self.block is None:
            return None
        return self.index + (slice(None), slice(*self.rows), slice(None)), self.block


def check_volume(volume) -> tuple[tuple[int, ...], tuple[int, int, int]]:
    """Validate a (..., Z, Y, X) array-like of at least 2 Z planes; return (leading shape, (Z, Y, X))."""
    shape = check_array(volume, "volume")
    if len(shape) < 3:
        raise ValueError(f"volume has shape {shape}: need (..., Z, Y, X); move channel/time axes in front of Z")
    if shape[-3] < 2:
        raise ValueError(f"volume has {shape[-3]} Z plane(s): Z super-resolution needs at least 2")
    return shape[:-3], shape[-3:]


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
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    intensity: str = "auto",
    out_dtype: np.dtype | str | None = None,
    consistency: int = 0,
    outlier_clamp: tuple[float, float] | None | str = "default",
    max_output_voxels: int | None = None,
    settings: RunSettings | None = None,
    skip: Callable[[tuple[int, ...], tuple[int, int]], bool] | None = None,
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

    ``skip(index, (y0, y1))``: True for a block that is made already (a resumed
    store): it is neither read nor decoded (a step without rows stands for it),
    and a volume whose blocks are all skipped is not read. A block's pixels do
    not depend on ``block_rows`` or on the blocks skipped.
    """
    import torch

    from .core import auto_tile_size, cast, check_finite, check_output_finite, compute_dtype, replace_outliers, valid_range
    from .engine import inference_model
    from .model.grid import AxisSamples, sample_bicubic_matrix
    from .settings import OUTLIER_CLAMP, RunSettings

    if settings is None:  # the keywords, validated the way the shells' settings object is
        default_clamp = isinstance(outlier_clamp, str) and outlier_clamp == "default"
        settings = RunSettings(model=model, device=device, tile_size=tile_size or None, intensity=intensity,
                               out_dtype=out_dtype, consistency=consistency,
                               outlier_clamp=OUTLIER_CLAMP if default_clamp else outlier_clamp)
    if settings.ensemble:
        raise ValueError("the geometric self-ensemble (ensemble=True) is for plane-wise upscaling; isotropic Z "
                         "resampling fuses its XZ and YZ decodings already: drop ensemble")
    leading, (Z, Y, X) = check_volume(volume)
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    plan = plan_spacing(volume.shape, spacing, target)
    step, Zo = plan.step, plan.planes
    samples = AxisSamples(plan.positions(), step)
    n_out = int(np.prod(leading, dtype=np.int64)) * Zo * Y * X
    if max_output_voxels is not None and n_out > max_output_voxels:
        raise ValueError(
            f"the output would be {leading + (Zo, Y, X)} = {n_out:,} voxels, above max_output_voxels={max_output_voxels:,}; "
            "process a crop, use a coarser target Z step, or raise the limit"
        )
    consistency, clamp, intensity = settings.consistency, settings.outlier_clamp, settings.intensity
    dtype = settings.output_dtype(volume.dtype)  # the engine's dtype rule
    compute = compute_dtype(dtype)
    rows_per_block = int(block_rows or max(8, min(Y, (1 << 22) // max(1, Zo * X))))
    if rows_per_block < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows!r}")
    views = [v for v in ("xz", "yz") if fusion in ("mean", "max", "min", v)]
    with inference_model(settings.model, 1, settings.device) as net:
        if net.in_channels != 1:
            raise ValueError(f"isotropic() needs a single-channel model; this one takes {net.in_channels} channels "
                             "(colour volumes: process each channel as a leading axis)")
        dev = next(net.parameters()).device
        m = net.receptive_radius
        tile = int(settings.tile_size or auto_tile_size(dev, axial=True))
        blocks = [((y0, min(y0 + rows_per_block, Y)), _block_calls(y0, min(y0 + rows_per_block, Y), Z, Y, X, m, tile, views))
                  for y0 in range(0, Y, rows_per_block)]
        total = int(np.prod(leading, dtype=np.int64)) * sum(len(calls) for _, calls in blocks)
        done = 0
        upsample = sample_bicubic_matrix(samples, Z, 0, Zo, 0, Z).to(dev)  # (Zo, Z): cubic along Z at the output planes
        # consistency: D samples the output column at the input planes (output index j / step), cubic
        down = sample_bicubic_matrix(np.arange(Z, dtype=np.float64) / step, Zo, 0, Z, 0, Zo).to(dev)
        for index in np.ndindex(*leading):
            vol = volume[index] if index else volume
            mapping = None  # fitted on the whole volume, when its first block is to be made
            for (y0, y1), calls in blocks:
                if skip is not None and skip(index, (y0, y1)):
                    done += len(calls)
                    if progress is not None:
                        progress(done, total)
                    yield IsoStep(done, total, index, None, None)
                    continue
                if mapping is None:
                    mapping = fit_volume_intensity(vol, intensity)
                    lo, hi = valid_range(mapping, compute)
                a, b = max(0, y0 - m - 1), min(Y, y1 + m + 1)  # one more row: real neighbours for the outlier median
                rows = np.asarray(vol[:, a:b, :])
                check_finite(rows, "volume", f" in rows {a}..{b - 1}" + (f" of volume {index}" if index else ""))
                seen, excess = replace_outliers(mapping.normalize(rows), clamp)
                seen_t = torch.from_numpy(seen).to(dev)  # (Z, b - a, X)
                acc = {v: torch.empty((Zo, y1 - y0, X), dtype=torch.float32, device=dev) for v in views}
                for view, (r0, r1), (s0, s1), (w0, w1) in calls:
                    check_cancel(cancel, done, total)
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
                own = slice(y0 - a, y1 - a)  # the block's rows in what was read
                fused = _settle(_fuse([acc[v] for v in views], fusion), seen_t[:, own], None if excess is None else
                                excess[:, own], (lo, hi), consistency, down, upsample)
                values = fused.cpu().numpy()
                check_output_finite(values, f" in rows {y0}..{y1 - 1}" + (f" of volume {index}" if index else ""))
                yield IsoStep(done, total, index, (y0, y1), cast(mapping.denormalize(values, compute), dtype))


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
    """(B, 1, Z, w) normalised planes -> (B, Zo, window) decoded along Z at ``samples`` (lateral axis unchanged).

    Without gradients only here, not around the generator: a caller's own code keeps its grad mode between steps.
    """
    import torch

    with torch.no_grad():
        features = net.encode(lr)
        out = net.decode_window(lr, features, (Z, lateral), (Zo, lateral), (0, Zo, window[0], window[1]), (0, origin),
                                "fast", samples=(samples, None))
    return out[:, 0]


def _settle(fused, measured, excess, valid: tuple[float, float], consistency: int, down, upsample):
    """One fused block (Zo, rows, X) made consistent with its ``measured`` planes (Z, rows, X), outliers added back.

    ``consistency`` back-projection steps along Z with the point-sampling
    degradation ``down`` (Z, Zo) and the cubic ``upsample`` (Zo, Z), each
    followed by the projection onto ``valid``; then the outliers' ``excess``
    (a (Z, rows, X) numpy array, or None) travels the cubic path along Z, linearly.
    """
    import torch

    lo, hi = valid
    fused = fused.clamp(lo, hi)
    for _ in range(consistency):
        residual = measured - torch.einsum("jk,kyx->jyx", down, fused)
        fused = (fused + torch.einsum("kj,jyx->kyx", upsample, residual)).clamp(lo, hi)
    if excess is not None:
        extra = torch.from_numpy(np.ascontiguousarray(excess)).to(fused.device)
        fused = (fused + torch.einsum("kj,jyx->kyx", upsample, extra)).clamp(lo, hi)
    return fused


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
        (``min(dy, dx)``). Must be <= dz. Without it, a volume whose dz is
        not larger than its pixel size is refused as isotropic already
        (:func:`~diinn_napari.isotropic_plan.plan_isotropic` says what is refused).

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
    :class:`~diinn_napari.core.Cancelled`), intensity (one map per volume,
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
    check_volume(volume)
    return collect(isotropic_steps(volume, spacing, target, **options), isotropic_shape(volume.shape, spacing, target),
                   out)


def iter_isotropic_volumes(volume, spacing, target: float | None = None, **options) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Yield ``(leading_index, output_volume)``, one (Z_out, Y, X) volume at a time (for writers).

    Options as in :func:`isotropic`; one output volume exists at a time, so a
    writer can emit its Z planes (``output_volume[k]``) as each volume finishes.
    """
    check_volume(volume)
    out_zyx = isotropic_shape(volume.shape, spacing, target)[-3:]
    result = None
    for step in isotropic_steps(volume, spacing, target, **options):
        if step.block is None:
            continue
        if result is None:
            result = Assembly(out_zyx)
        result.place((slice(None), slice(*step.rows)), step.block)
        if step.rows[1] == out_zyx[1]:
            yield step.index, result.result
            result = None


if __name__ == "__main__":  # the file command is the batch command's: python -m diinn_napari.batch --isotropic
    from .batch import main

    sys.exit(main(["--isotropic", *sys.argv[1:]]))
