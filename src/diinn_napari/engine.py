"""The upscaling engine: every shell (napari widget, batch CLI, evaluation) calls it.

Data flows one way, one YX plane at a time:

    read plane -> normalise -> LR tiles (+ overlap) -> encode -> decode the output
    pixels each tile owns -> denormalise -> stitch into the output plane

A tile's overlap is the model's receptive radius, and every tile decodes its
own window of the *global* output grid, so the tiled result equals the
whole-image result; peak memory depends on the tile size, not the image size.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

from .devices import pick_device
from .intensity import check_dtype, fit_intensity
from .model import DIINN
from .model.grid import nearest_lr_index
from .planning import output_size
from .weights import load_weights, resolve

DEFAULT_MAX_OUTPUT_PIXELS = 2_000_000_000
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}

ProgressCallback = Callable[[int, int], Any]
CancelCheck = Callable[[], bool] | threading.Event


class Cancelled(Exception):
    """Raised when ``cancel`` fires; work stops between tiles."""


class Step(NamedTuple):
    """Progress of :func:`upscale_steps`: tiles done of total, the plane's index, the plane once finished."""

    done: int
    total: int
    index: tuple[int, ...]
    plane: np.ndarray | None


# ---- planning ------------------------------------------------------------------------------------
def auto_tile_size(device: torch.device, scale: float) -> int:
    """LR tile edge: big enough to amortise the overlap, small enough to bound memory per tile."""
    base = 512 if device.type == "cuda" else 256
    return int(max(32, min(base, 4096 // max(1.0, scale))))


def _spatial_layout(image, rgb: bool) -> tuple[tuple[int, ...], tuple[int, int]]:
    """Validate an array-like (anything with shape, dtype and indexing); return (leading shape, (Y, X))."""
    if not (hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__")):
        raise TypeError(f"image must be a numpy array or an array-like (dask, zarr), got {type(image).__name__}")
    shape = tuple(int(n) for n in image.shape)
    check_dtype(image.dtype)
    need = 3 if rgb else 2
    if len(shape) < need:
        raise ValueError(
            f"image has shape {shape}: need at least {need} axes ({'..., Y, X, 3' if rgb else '..., Y, X'})"
        )
    if 0 in shape:
        raise ValueError(f"image is empty (shape {shape})")
    if rgb:
        if shape[-1] != 3:
            raise ValueError(f"rgb=True needs a last axis of 3 colour channels, got shape {shape} (drop an alpha channel first)")
        return shape[:-3], shape[-3:-1]
    return shape[:-2], shape[-2:]


# ---- models --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _cached_model(path: str, mtime: float, device: str) -> DIINN:
    return load_weights(path, device)


def get_model(model: str | os.PathLike | DIINN = "default", channels: int = 1, device: str | torch.device = "auto") -> DIINN:
    """A model ready for inference: bundled name, weights path, or an instance; loaded once per (file, device)."""
    device = pick_device(device)
    if isinstance(model, DIINN):
        return model.to(device).eval()
    path = resolve(model, channels)
    return _cached_model(str(path.resolve()), path.stat().st_mtime, str(device))


# ---- the pipeline --------------------------------------------------------------------------------
def upscale_steps(
    image,
    scale: float | tuple[float, float] | None = None,
    *,
    output_shape: tuple[int, int] | None = None,
    model: str | os.PathLike | DIINN = "default",
    device: str | torch.device = "auto",
    rgb: bool = False,
    tile_size: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    intensity: str = "auto",
    out_dtype: np.dtype | str | None = None,
    precision: str = "fp32",
    mode: str = "fast",
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
) -> Iterator[Step]:
    """The pipeline, one tile per step: yields a :class:`Step` after every tile.

    A step that finishes a plane carries it (``step.plane``), so a GUI thread
    worker can report progress and stop between tiles. Streams: one input
    plane is read (``np.asarray(image[index])``) and one output plane exists at
    a time. Arguments as in :func:`upscale`; ``max_output_pixels`` limits one
    output plane here.
    """
    leading, (h, w) = _spatial_layout(image, rgb)
    H, W = output_size((h, w), scale, output_shape)
    channels = 3 if rgb else 1
    if H * W > max_output_pixels:
        raise ValueError(
            f"one output plane would be {H} x {W} = {H * W:,} pixels, above max_output_pixels={max_output_pixels:,}; "
            "lower the scale, process a crop, or raise max_output_pixels"
        )
    dtype = np.dtype(out_dtype) if out_dtype is not None else np.dtype(image.dtype)
    if dtype.kind == "f":
        dtype = np.dtype(np.float32)
    check_dtype(dtype)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    net = get_model(model, channels, device)
    if net.in_channels != channels:
        kind = "RGB (..., Y, X, 3) with rgb=True" if net.in_channels == 3 else "single-channel (rgb=False)"
        raise ValueError(
            f"the model takes {net.in_channels}-channel input but the image is "
            f"{'RGB' if rgb else 'single-channel'}: pass a {kind} image or choose a {channels}-channel model"
        )
    dev = next(net.parameters()).device
    if PRECISIONS[precision] is not None and dev.type != "cuda":
        raise ValueError(f"precision={precision!r} needs a CUDA device; use 'fp32' on {dev.type}")
    tile = int(tile_size or auto_tile_size(dev, max(H / h, W / w)))
    if tile < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size!r}")
    tiles = _tile_grid(h, w, H, W, tile)
    total = len(tiles) * int(np.prod(leading, dtype=np.int64))
    done = 0
    for index in np.ndindex(*leading):
        plane = np.asarray(image[index])
        if plane.dtype.kind == "f" and not np.isfinite(plane).all():
            where = f" in plane {index}" if index else ""
            raise ValueError(f"image contains NaN or infinite values{where}; replace them (e.g. np.nan_to_num) first")
        mapping = fit_intensity(plane, intensity)
        lr = mapping.normalize(plane)
        lr = lr.transpose(2, 0, 1) if rgb else lr[None]
        out = np.empty((channels, H, W), dtype)
        for i, (window, tile_box) in enumerate(tiles):
            if cancel is not None and (cancel.is_set() if isinstance(cancel, threading.Event) else cancel()):
                raise Cancelled(f"cancelled after {done} of {total} tiles")
            sr = _run_tile(net, lr, (h, w), (H, W), window, tile_box, dev, mode, PRECISIONS[precision])
            y0, y1, x0, x1 = window
            out[:, y0:y1, x0:x1] = mapping.denormalize(sr, dtype)
            done += 1
            if progress is not None:
                progress(done, total)
            finished = i == len(tiles) - 1
            yield Step(done, total, index, (out.transpose(1, 2, 0) if rgb else out[0]) if finished else None)


def iter_upscaled_planes(image, scale=None, **kwargs) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Upscale every YX plane of ``image`` in turn; yields ``(leading_index, plane)``.

    Arguments as in :func:`upscale`; one output plane exists at a time, so
    callers can write planes as they come.
    """
    for step in upscale_steps(image, scale, **kwargs):
        if step.plane is not None:
            yield step.index, step.plane


def upscale(
    image,
    scale: float | tuple[float, float] | None = None,
    *,
    output_shape: tuple[int, int] | None = None,
    model: str | os.PathLike | DIINN = "default",
    device: str | torch.device = "auto",
    rgb: bool = False,
    tile_size: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    intensity: str = "auto",
    out_dtype: np.dtype | str | None = None,
    precision: str = "fp32",
    mode: str = "fast",
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
) -> np.ndarray:
    """Super-resolve ``image`` by any real factor with DIINN.

    image: numpy or array-like (dask, zarr, memmap) shaped (..., Y, X), or
        (..., Y, X, 3) with ``rgb=True``; every leading plane (Z, T, C) is
        upscaled independently and read one at a time.
    scale: output/input size ratio, a number >= 1 or (sy, sx); each axis
        becomes round(n * s). Or ``output_shape=(Y, X)``.
    model: "default" (bundled gray or RGB model), a bundled name, a weights
        path, or a :class:`~diinn_napari.model.DIINN` instance.
    device: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda:N" or "mps".
    tile_size: LR tile edge in pixels (default: automatic per device).
    progress: called as ``progress(done_tiles, total_tiles)``.
    cancel: callable or threading.Event, checked between tiles; raises :class:`Cancelled`.
    intensity: "auto" (uint8 by range, others by robust percentiles of each
        whole plane), "percentile", "dtype" or "none" (already 0..1).
    out_dtype: output dtype; default the input's (floats become float32).
    precision: "fp32", or "fp16"/"bf16" autocast on CUDA.
    mode: "fast" (factorised decoder) or "reference" (textbook decoder).
    max_output_pixels: refuse outputs larger than this many pixels in all.

    Returns (..., Y_out, X_out) or (..., Y_out, X_out, 3).
    """
    leading, (h, w) = _spatial_layout(image, rgb)
    H, W = output_size((h, w), scale, output_shape)
    n_pixels = int(np.prod(leading, dtype=np.int64)) * H * W
    if n_pixels > max_output_pixels:
        raise ValueError(
            f"the output would be {leading + (H, W)} = {n_pixels:,} pixels, above max_output_pixels={max_output_pixels:,}; "
            "lower the scale, process a crop or fewer planes, or raise max_output_pixels"
        )
    result = None
    planes = iter_upscaled_planes(
        image, output_shape=(H, W), model=model, device=device, rgb=rgb, tile_size=tile_size, progress=progress,
        cancel=cancel, intensity=intensity, out_dtype=out_dtype, precision=precision, mode=mode,
        max_output_pixels=max_output_pixels,
    )
    for index, plane in planes:
        if result is None:
            result = np.empty(leading + plane.shape, plane.dtype)
        result[index] = plane
    return result


# ---- tiles ---------------------------------------------------------------------------------------
def _owned_range(n_in: int, n_out: int, lo: int, hi: int) -> tuple[int, int]:
    """Output pixels whose nearest LR pixel lies in [lo, hi): a contiguous range."""
    idx = nearest_lr_index(n_in, n_out)
    return int(np.searchsorted(idx, lo, "left")), int(np.searchsorted(idx, hi, "left"))


def _tile_grid(h: int, w: int, H: int, W: int, tile: int):
    """[(output window (y0, y1, x0, x1), LR core (r0, r1, c0, c1)), ...] covering the output once."""
    rows = [(r, min(r + tile, h)) for r in range(0, h, tile)]
    cols = [(c, min(c + tile, w)) for c in range(0, w, tile)]
    grid = []
    for r0, r1 in rows:
        y0, y1 = _owned_range(h, H, r0, r1)
        for c0, c1 in cols:
            x0, x1 = _owned_range(w, W, c0, c1)
            if y1 > y0 and x1 > x0:
                grid.append(((y0, y1, x0, x1), (r0, r1, c0, c1)))
    return grid


@torch.no_grad()
def _run_tile(net: DIINN, lr: np.ndarray, lr_shape, out_shape, window, core, device, mode, autocast_dtype) -> np.ndarray:
    """Encode one LR tile with its overlap and decode the output window it owns -> (C, y1-y0, x1-x0)."""
    h, w = lr_shape
    m = net.receptive_radius
    r0, r1, c0, c1 = core
    t0, t1, s0, s1 = max(0, r0 - m), min(h, r1 + m), max(0, c0 - m), min(w, c1 + m)
    x = torch.from_numpy(np.ascontiguousarray(lr[:, t0:t1, s0:s1]))[None].to(device)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        features = net.encode(x)
        sr = net.decode_window(x, features, lr_shape, out_shape, window, (t0, s0), mode)
    return sr[0].float().cpu().numpy()
