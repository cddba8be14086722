"""The upscaling engine: every shell (napari widget, batch CLI, evaluation) calls it.

Data flows one way, one YX plane at a time:

    read plane -> normalise -> LR tiles (+ overlap) -> encode -> decode the output
    pixels each tile owns -> denormalise -> stitch into the output plane

A tile's overlap is the model's receptive radius, and every tile decodes its
own window of the *global* output grid, so the tiled result equals the
whole-image result; peak memory depends on the tile size, not the image size.

Fidelity, per tile and still equal to the whole-image result:

* outliers (normalised values outside ``outlier_clamp``) reach the network as
  the clamped median of their neighbours; their excess is added back by
  bicubic interpolation, so a hot pixel spreads no further than bicubic;
* data consistency (``consistency`` = K back-projection steps): the network
  decodes its window widened by the halo K steps need, then
  ``x <- clip(x + U(y - D(x)))`` with D the training degradation
  (:mod:`diinn_napari.quality`), U bicubic and clip the projection onto
  ``[floor, dtype max]``: the floor is the plane's own p0.1 (less a fraction
  of a count), not the dtype's minimum, so U's ringing around bright spots
  cannot dig holes below the data (the network's output is projected too);
* few-level planes (at most :data:`FEW_LEVELS` quantisation steps over the
  robust range: dim data): the network's departure from bicubic is shrunk by
  half a step, and each back-projection residual is Wiener-shrunk by the LR's
  rounding noise against its local energy (:func:`quantisation_gain`), so
  the quantisation steps are not sharpened as if they were structure while
  residual structure well above a step is still enforced;
* the trust map is the magnitude of that correction on the output grid.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from .core import (Assembly, CancelCheck, Cancelled, ProgressCallback, auto_tile_size, cast, check_array,
                   check_cancel, check_finite, check_output_finite, compute_dtype, replace_outliers, valid_range)
from .devices import pick_device
from .intensity import fit_intensity
from .model import DIINN
from .model.grid import bicubic_matrix, nearest_lr_index
from .settings import OUTLIER_CLAMP, RunSettings
from .quality import antialias_matrix, antialias_support
from .weights import load_weights, resolve

__all__ = ["Engine", "Step", "Cancelled", "upscale", "upscale_steps", "iter_upscaled_planes", "upscale_window", "fill_nodata",
           "get_model", "inference_model", "torch_threads", "resize_mask", "check_precision"]

# the autocast dtype of each precision RunSettings accepts (fp32: no autocast)
AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class Step(NamedTuple):
    """Progress of :func:`upscale_steps`: tiles done of total, the plane's index, the plane once finished.

    ``trust`` comes with a finished plane when ``return_trust=True``: the
    (Y_out, X_out) float32 trust map of that plane (see :func:`upscale`).
    """

    done: int
    total: int
    index: tuple[int, ...]
    plane: np.ndarray | None
    trust: np.ndarray | None = None

    @property
    def piece(self) -> tuple[tuple[int, ...], np.ndarray] | None:
        """``(index, plane)`` when the step finished a plane (what :class:`~diinn_napari.core.Assembly` places)."""
        return None if self.plane is None else (self.index, self.plane)


# ---- planning ------------------------------------------------------------------------------------
def _spatial_layout(image, rgb: bool) -> tuple[tuple[int, ...], tuple[int, int]]:
    """Validate an array-like (anything with shape, dtype and indexing); return (leading shape, (Y, X))."""
    shape = check_array(image)
    need = 3 if rgb else 2
    if len(shape) < need:
        raise ValueError(
            f"image has shape {shape}: need at least {need} axes ({'..., Y, X, 3' if rgb else '..., Y, X'})"
        )
    if rgb:
        if shape[-1] not in (3, 4):
            raise ValueError(
                f"rgb=True needs a last axis of 3 colour channels (RGB) or 4 (RGBA), got shape {shape}"
            )
        return shape[:-3], shape[-3:-1]
    return shape[:-2], shape[-2:]


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot run fast (fp16 needs CUDA); RunSettings checked the name."""
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision='fp16' needs a CUDA device; use 'fp32' (exact) or 'bf16' (approximate) on {device.type}")
    if precision == "bf16" and device.type not in ("cuda", "cpu"):
        raise ValueError(f"precision='bf16' runs on CUDA or the CPU, not on {device.type}; use 'fp32'")


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with ``threads`` torch CPU threads, then give back the caller's setting (None: no change).

    torch's setting is process-wide; restoring it between tiles keeps a caller's
    own setting in force while a generator such as :func:`upscale_steps` is paused.
    """
    if threads is None or threads == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---- models --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _cached_model(path: str, mtime: float, device: str) -> DIINN:
    return load_weights(path, device)


def get_model(model: str | os.PathLike | DIINN = "default", channels: int = 1, device: str | torch.device = "auto") -> DIINN:
    """A model on ``device``: a bundled name or weights path (loaded once per (file, device), in eval mode), or an instance.

    An instance is never changed: on ``device`` already it is returned as it
    is (its mode too: :func:`inference_model` runs it in eval mode and gives
    its mode back), elsewhere a copy on ``device`` in eval mode is returned.
    """
    device = pick_device(device)
    if isinstance(model, DIINN):
        return model if _is_on(model, device) else copy.deepcopy(model).to(device).eval()
    path = resolve(model, channels)
    return _cached_model(str(path.resolve()), path.stat().st_mtime, str(device))


def _is_on(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether all of ``model``'s parameters and buffers are on ``device`` ('cuda' without an index: any CUDA device)."""
    return all(t.device.type == device.type and (device.index is None or t.device.index == device.index)
               for t in itertools.chain(model.parameters(), model.buffers()))


@contextlib.contextmanager
def inference_model(model: str | os.PathLike | DIINN = "default", channels: int = 1,
                    device: str | torch.device = "auto") -> Iterator[DIINN]:
    """:func:`get_model` in eval mode for the block; a caller's instance keeps its mode and device.

    The cost is paid only where it must be: an instance on ``device`` in eval
    mode is used as it is, one in training mode is switched to eval for the
    block and back after it (the same instance run by two threads at once
    sees eval until the last block ends), one elsewhere is copied to
    ``device`` for each block (move it there yourself to run it many times).
    """
    net = get_model(model, channels, device)
    modes = [(m, m.training) for m in net.modules()] if net is model else []
    if not any(training for _, training in modes):
        yield net
        return
    net.eval()
    try:
        yield net
    finally:
        for module, training in modes:
            module.training = training


# ---- the pipeline --------------------------------------------------------------------------------
def _settings(settings: RunSettings | None, scale, options: dict) -> RunSettings:
    """The settings of a convenience call: ``settings`` with any keyword options (and ``scale``) on top."""
    if scale is not None:
        options = {**options, "scale": scale}
    base = settings if settings is not None else RunSettings()
    if not isinstance(base, RunSettings):
        raise TypeError(f"settings must be a diinn_napari.RunSettings, got {type(base).__name__}")
    return base.replace(**options) if options else base


class Engine:
    """Runs one :class:`~diinn_napari.settings.RunSettings` on arrays; every shell goes through it.

    :meth:`steps` yields after every tile (what a GUI thread worker needs),
    :meth:`planes` yields finished planes (what a writer needs), :meth:`run`
    returns the whole result and :meth:`window` decodes one window of the
    output of a plane (the napari preview). Models are loaded once per
    (weights file, device) and kept (:func:`get_model`).
    """

    def __init__(self, settings: RunSettings):
        if not isinstance(settings, RunSettings):
            raise TypeError(f"Engine takes a diinn_napari.RunSettings, got {type(settings).__name__}")
        self.settings = settings

    @contextlib.contextmanager
    def model(self, rgb: bool) -> Iterator[DIINN]:
        """The settings' model for single-channel or RGB input, on its device in eval mode, checked against the settings.

        A context (:func:`inference_model`): a caller's model instance gets its mode back after the block.
        """
        s = self.settings
        channels = 3 if rgb else 1
        with inference_model(s.model, channels, s.device) as net:
            if net.in_channels != channels:
                kind = "RGB (..., Y, X, 3) with rgb=True" if net.in_channels == 3 else "single-channel (rgb=False)"
                raise ValueError(
                    f"the model takes {net.in_channels}-channel input but the image is "
                    f"{'RGB' if rgb else 'single-channel'}: pass a {kind} image or choose a {channels}-channel model"
                )
            check_precision(s.precision, next(net.parameters()).device)
            yield net

    def steps(self, image, *, rgb: bool = False, input_pixel_size=None, progress: ProgressCallback | None = None,
              cancel: CancelCheck | None = None, return_trust: bool = False, out=None, mask=None) -> Iterator[Step]:
        """The pipeline, one tile per step: yields a :class:`Step` after every tile.

        A step that finishes a plane carries it (``step.plane``), so a GUI
        thread worker can report progress and stop between tiles. Streams:
        one input plane is read (``np.asarray(image[index])``) and one output
        plane exists at a time; ``max_output_pixels`` limits one output plane
        here. With ``return_trust=True`` the step that finishes a plane also
        carries its trust map (``step.trust``). Arguments as in :func:`upscale`.

        ``out``: an array-like of the output's shape that takes
        ``out[index + (ys, xs)] = tile`` (a zarr array, a
        :class:`~diinn_napari.io.omezarr.PyramidSink`): every tile is written
        there as it finishes and no output plane is held, so memory follows
        the tile, whatever the output's size; steps then carry no plane.
        A block sink (:class:`~diinn_napari.io.omezarr.BlockStore`) with
        ``return_trust=True`` must take the trust map too (``takes_trust``:
        :class:`~diinn_napari.io.omezarr.TrustedBlocks`), block by block.
        """
        s = self.settings
        leading, (h, w) = _spatial_layout(image, rgb)
        masks = _plane_masks(mask, leading, (h, w))
        H, W = s.output_yx((h, w), input_pixel_size)
        if H * W > s.max_output_pixels:
            raise ValueError(
                f"one output plane would be {H} x {W} = {H * W:,} pixels, above max_output_pixels="
                f"{s.max_output_pixels:,}; lower the scale, process a crop, or raise max_output_pixels"
            )
        dtype = s.output_dtype(image.dtype)
        sink = out
        if sink is not None:
            expected = leading + (H, W) + ((int(image.shape[-1]),) if rgb else ())
            if tuple(sink.shape) != expected:
                raise ValueError(f"out has shape {tuple(sink.shape)}; the output needs {expected}")
        if sink is not None and hasattr(sink, "write_block"):
            if return_trust and not getattr(sink, "takes_trust", False):
                raise ValueError("return_trust into a block sink needs one that takes the trust map too "
                                 "(diinn_napari.io.omezarr.TrustedBlocks)")
            yield from self._block_steps(image, sink, rgb, (h, w), (H, W), leading, dtype, progress, cancel, masks,
                                         return_trust)
            return
        with self.model(rgb) as net:
            dev = next(net.parameters()).device
            tile = int(s.tile_size or auto_tile_size(dev, max(H / h, W / w)))
            tiles = _tile_grid(h, w, H, W, tile)
            total = len(tiles) * int(np.prod(leading, dtype=np.int64))
            done = 0
            for index in np.ndindex(*leading):
                prepared = _PreparedPlane(s, image[index], rgb, masks(index), (h, w), (H, W), dtype, index)
                if sink is None:
                    out = np.empty((prepared.channels + prepared.alpha, H, W), dtype)
                trust = np.empty((H, W), np.float32) if return_trust else None
                for i, window in enumerate(tiles):
                    check_cancel(cancel, done, total, "tiles")
                    tile_out, correction = prepared.decode(net, dev, window, trust=return_trust)
                    y0, y1, x0, x1 = window
                    if sink is not None:
                        sink[index + (slice(y0, y1), slice(x0, x1))] = prepared.finish(tile_out, window)
                    else:
                        out[:prepared.channels, y0:y1, x0:x1] = tile_out
                    if trust is not None:
                        # in the image's own units: the map's values compare with the output's
                        trust[y0:y1, x0:x1] = prepared.trust(correction)
                    done += 1
                    if progress is not None:
                        progress(done, total)
                    finished = i == len(tiles) - 1
                    if sink is not None:
                        yield Step(done, total, index, None, trust if finished else None)
                        continue
                    yield Step(done, total, index, prepared.finish(out) if finished else None,
                               trust if finished else None)

    def _block_steps(self, image, sink, rgb: bool, lr_shape, out_shape, leading, dtype, progress, cancel,
                     masks, return_trust: bool = False) -> Iterator[Step]:
        """:meth:`steps` into a block sink (:class:`~diinn_napari.io.omezarr.BlockStore`): whole blocks, resumable.

        Each block (a level-0 chunk) is decoded in windows of at most
        :data:`BLOCK_WINDOW` output pixels a side (and at most the tile's
        output), cast into one block buffer and handed over whole; blocks the
        sink holds already are skipped, and a plane whose blocks are all done
        is not read. The windows depend only on the block grid, so a resumed
        run gives the bits an uninterrupted one gives. ``return_trust``: each
        block's trust map goes with it (``sink.write_block(..., trust=)``).
        """
        s = self.settings
        (h, w), (H, W) = lr_shape, out_shape
        with self.model(rgb) as net:
            dev = next(net.parameters()).device
            tile = int(s.tile_size or auto_tile_size(dev, max(H / h, W / w)))
            side = max(16, min(BLOCK_WINDOW, int(np.ceil(tile * max(H / h, W / w)))))
            blocks = sink.block_windows()
            per_block = [_split_window(b, side) for b in blocks]
            total = sum(len(p) for p in per_block) * int(np.prod(leading, dtype=np.int64))
            done = 0
            for index in np.ndindex(*leading):
                todo = [(b, parts) for b, parts in zip(blocks, per_block) if not sink.is_done(index, b)]
                done += sum(len(parts) for b, parts in zip(blocks, per_block) if sink.is_done(index, b))
                if not todo:
                    if progress is not None:
                        progress(done, total)
                    yield Step(done, total, index, None)
                    continue
                prepared = _PreparedPlane(s, image[index], rgb, masks(index), (h, w), (H, W), dtype, index)
                for block, parts in todo:
                    y0, y1, x0, x1 = block
                    buffer = np.empty((prepared.channels, y1 - y0, x1 - x0), dtype)
                    trust = np.empty((y1 - y0, x1 - x0), np.float32) if return_trust else None
                    for window in parts:
                        check_cancel(cancel, done, total, "tiles")
                        a0, a1, b0, b1 = window
                        colour, correction = prepared.decode(net, dev, window, trust=return_trust)
                        buffer[:, a0 - y0:a1 - y0, b0 - x0:b1 - x0] = colour
                        if trust is not None:
                            trust[a0 - y0:a1 - y0, b0 - x0:b1 - x0] = prepared.trust(correction)
                        done += 1
                        if progress is not None:
                            progress(done, total)
                        if window is not parts[-1]:
                            yield Step(done, total, index, None)
                    if trust is None:
                        sink.write_block(index, block, prepared.finish(buffer, block))
                    else:
                        sink.write_block(index, block, prepared.finish(buffer, block), trust=trust)
                    yield Step(done, total, index, None)

    def planes(self, image, **kwargs) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
        """Every finished output plane in turn, as ``(leading_index, plane)``; arguments as :meth:`steps`."""
        for step in self.steps(image, **kwargs):
            if step.plane is not None:
                yield step.index, step.plane

    def run(self, image, *, rgb: bool = False, input_pixel_size=None, progress: ProgressCallback | None = None,
            cancel: CancelCheck | None = None, return_trust: bool = False, out=None, mask=None):
        """The whole result (and trust map with ``return_trust``); see :func:`upscale`.

        ``out``: a zarr array (or any array-like taking ``out[index] = tile``)
        or a path: the result is written there tile by tile and returned
        (a path: a new multiscale OME-Zarr image; its level-0 zarr array is
        returned; for RGB / RGBA the colour is stored as NGFF's c axis and the
        return is a lazy samples-last view of level 0, ``io.omezarr.SamplesLast``,
        of the result's (..., Y, X, 3|4) shape: its ``.array`` is the zarr array).
        """
        leading, (h, w) = _spatial_layout(image, rgb)
        H, W = self.settings.output_yx((h, w), input_pixel_size)
        if out is not None:
            if return_trust:
                raise ValueError("return_trust needs the result in memory; leave out=None for a trust map")
            if isinstance(out, (str, os.PathLike)):
                from .io.omezarr import SamplesLast, create_image

                colour = (int(image.shape[-1]),) if rgb else ()
                sink = create_image(out, leading + (H, W) + colour, self.settings.output_dtype(image.dtype), rgb=rgb)
                for _ in self.steps(image, rgb=rgb, input_pixel_size=input_pixel_size, progress=progress,
                                    cancel=cancel, out=sink, mask=mask):
                    pass
                at = sink.writer.colour_at
                return sink.array if at is None else SamplesLast(sink.array, at)
            for _ in self.steps(image, rgb=rgb, input_pixel_size=input_pixel_size, progress=progress, cancel=cancel,
                                out=out, mask=mask):
                pass
            return getattr(out, "array", out)
        n_pixels = int(np.prod(leading, dtype=np.int64)) * H * W
        if n_pixels > self.settings.max_output_pixels:
            raise ValueError(
                f"the output would be {leading + (H, W)} = {n_pixels:,} pixels, above max_output_pixels="
                f"{self.settings.max_output_pixels:,}; lower the scale, process a crop or fewer planes, "
                "or raise max_output_pixels"
            )
        colour = (int(image.shape[-1]),) if rgb else ()
        result = Assembly(leading + (H, W) + colour)
        trust = Assembly(leading + (H, W))
        for step in self.steps(image, rgb=rgb, input_pixel_size=input_pixel_size, progress=progress, cancel=cancel,
                               return_trust=return_trust, mask=mask):
            if result.add(step) and return_trust:
                trust.place(step.index, step.trust)
        return (result.result, trust.result) if return_trust else result.result

    def window(self, plane, window: tuple[int, int, int, int], *, rgb: bool = False, input_pixel_size=None,
               mask=None) -> np.ndarray:
        """Output rows ``y0:y1`` and columns ``x0:x1`` of one plane: the pixels :meth:`run` gives there.

        The intensity map is fitted on the whole plane and the window decoded
        on the global output grid, at the cost of the window alone (the
        napari preview). ``plane`` is (Y, X), or (Y, X, 3|4) with ``rgb=True``;
        ``window`` is (y0, y1, x0, x1) inside the output grid; ``mask`` the
        plane's (Y, X) mask of pixels holding data, or None.
        """
        s = self.settings
        plane = np.asarray(plane)
        leading, (h, w) = _spatial_layout(plane, rgb)
        if leading:
            raise ValueError(f"a window is cut from one plane, (Y, X){' + (3,)' if rgb else ''}; got shape {plane.shape}")
        H, W = s.output_yx((h, w), input_pixel_size)
        y0, y1, x0, x1 = (int(v) for v in window)
        if not (0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W):
            raise ValueError(f"window {window} is not inside the output grid (0..{H}, 0..{W})")
        prepared = _PreparedPlane(s, plane, rgb, _plane_masks(mask, (), (h, w))(()), (h, w), (H, W),
                                  s.output_dtype(plane.dtype))
        with self.model(rgb) as net:
            out, _ = prepared.decode(net, next(net.parameters()).device, (y0, y1, x0, x1))
        return prepared.finish(out, (y0, y1, x0, x1))


class _PreparedPlane:
    """One input plane made ready for the network, and the decoding of any window of its output.

    The single place where a plane is prepared (nodata filled, checked for
    non-finite values, normalised, its data bounds measured) and where an
    output window is decoded and brought back to the output's units and
    dtype, so :meth:`Engine.steps`, its block writer and :meth:`Engine.window`
    give the same pixels for the same window.
    """

    def __init__(self, settings: RunSettings, raw, rgb: bool, mask, lr_shape: tuple[int, int],
                 out_shape: tuple[int, int], dtype: np.dtype, index: tuple[int, ...] = ()):
        s = self.settings = settings
        self.lr_shape, self.out_shape, self.dtype = lr_shape, out_shape, dtype
        self.compute = compute_dtype(dtype)
        self.where = f" in plane {index}" if index else ""
        self.plane, self.missing = fill_nodata(np.asarray(raw), s.nodata, rgb, mask)
        check_finite(self.plane, where=self.where)
        self.mapping, lr, self.valid, self.bounds = _normalised(self.plane, rgb, s.intensity, self.compute,
                                                                self.missing)
        self.lr = np.asarray(lr) if s.ensemble else lr  # the members flip the whole plane
        self.rgb, self.channels = rgb, 3 if rgb else 1
        self.alpha = rgb and self.plane.shape[-1] == 4  # RGBA: colour through the model, alpha resized as a mask
        self._alpha_mask = None

    def decode(self, net: DIINN, device: torch.device, window: tuple[int, int, int, int],
               trust: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Output ``window`` (y0, y1, x0, x1) as (C, y1 - y0, x1 - x0) colour in the output dtype, and its correction map."""
        s = self.settings
        render = _ensemble_render if s.ensemble else _render
        with torch_threads(s.threads):
            sr, correction = render(net, self.lr, self.lr_shape, self.out_shape, window, device, s.mode,
                                    AUTOCAST[s.precision], consistency=s.consistency, clamp=s.outlier_clamp,
                                    valid=self.valid, bounds=self.bounds, trust=trust)
        check_output_finite(sr, self.where)  # before casting makes NaN 0
        return cast(self.mapping.denormalize(sr, self.compute), self.dtype), correction

    def trust(self, correction: np.ndarray) -> np.ndarray:
        """A window's trust map from its (C, y, x) correction: the largest over the colours, in the image's
        own units (the map's values compare with the output's)."""
        return correction.max(0) * abs(self.mapping.hi - self.mapping.lo)

    def finish(self, colour: np.ndarray, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Decoded (C, y, x) colour of ``window`` (None: the whole plane) as output pixels: nodata put back,
        the alpha channel added (resized on the whole plane, then cut: a window holds what a run holds there),
        channels last for RGB."""
        H, W = self.out_shape
        y0, y1, x0, x1 = window if window is not None else (0, H, 0, W)
        if self.missing is not None:
            colour[:self.channels, nodata_on_output(self.missing, self.out_shape, window)] = _fill_value(
                self.settings.nodata, self.dtype)
        if self.alpha:
            if self._alpha_mask is None:
                self._alpha_mask = resize_mask(self.plane[..., 3], self.out_shape, self.dtype)
            alpha = self._alpha_mask[None, y0:y1, x0:x1]
            if colour.shape[0] > self.channels:  # a buffer with room for it
                colour[self.channels:] = alpha
            else:
                colour = np.concatenate([colour, alpha])
        return colour.transpose(1, 2, 0) if self.rgb else colour[0]


def upscale_steps(image, scale=None, *, settings: RunSettings | None = None, rgb: bool = False,
                  progress: ProgressCallback | None = None, cancel: CancelCheck | None = None,
                  return_trust: bool = False, input_pixel_size=None, mask=None, **options) -> Iterator[Step]:
    """:meth:`Engine.steps` of ``settings`` with the keyword ``options`` (RunSettings fields) on top."""
    engine = Engine(_settings(settings, scale, options))
    return engine.steps(image, rgb=rgb, input_pixel_size=input_pixel_size, progress=progress, cancel=cancel,
                        return_trust=return_trust, mask=mask)


def iter_upscaled_planes(image, scale=None, *, settings: RunSettings | None = None, rgb: bool = False,
                         input_pixel_size=None, mask=None, **options) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Every output plane in turn as ``(leading_index, plane)`` (:meth:`Engine.planes`); one exists at a time."""
    return Engine(_settings(settings, scale, options)).planes(image, rgb=rgb, input_pixel_size=input_pixel_size,
                                                              mask=mask)


def upscale(image, scale=None, *, settings: RunSettings | None = None, rgb: bool = False,
            progress: ProgressCallback | None = None, cancel: CancelCheck | None = None,
            return_trust: bool = False, input_pixel_size=None, out=None, mask=None, **options):
    """Super-resolve ``image`` by any real factor with DIINN.

    image: numpy or array-like (dask, zarr, memmap) shaped (..., Y, X), or
        (..., Y, X, 3) / (..., Y, X, 4) with ``rgb=True``; every leading plane
        (Z, T, C) is upscaled independently and read one at a time. RGBA: the
        colour goes through the RGB model, the alpha channel is resized
        bilinearly (a mask: no overshoot, same pixel-centre grid).
    scale: output/input size ratio, a number >= 1 or (sy, sx); each axis
        becomes round(n * s). Or ``output_shape=(Y, X)``, or a target
        ``pixel_size=`` with the image's own as ``input_pixel_size=(y, x)``.
    settings: a :class:`~diinn_napari.settings.RunSettings`; keyword
        ``options`` are its fields (``model``, ``device``, ``tile_size``,
        ``intensity``, ``out_dtype``, ``precision``, ``mode``, ``threads``,
        ``consistency``, ``outlier_clamp``, ``max_output_pixels``, ...) and
        override it. Its docstring says what each does. A ``model=`` instance
        is left as it was: its mode and device are the same after the call
        (:func:`inference_model`).
    progress: called as ``progress(done_tiles, total_tiles)``.
    cancel: callable or threading.Event, checked between tiles; raises :class:`Cancelled`.
    return_trust: also return a trust map (float32, (..., Y_out, X_out), in
        the image's intensity units): per output pixel, the magnitude of the
        correction the back-projection applied (``consistency`` > 0), or with
        ``consistency=0`` the correction one step would apply, |U(y - D(out))|.
        Large where the model disagrees with the measurement. For RGB, the
        largest over the colour channels.
    mask: which pixels hold data (a GDAL internal mask): a (Y, X) bool
        array-like, True where there is data, for every plane, or one per
        plane shaped like the leading axes + (Y, X). Pixels without data are
        treated as ``nodata`` ones: left out of the intensity fit, filled from
        the nearest pixel with data before the network, and set to ``nodata``
        (0 when there is none) where the nearest input pixel has no data.

    out: a zarr array of the output's shape (or any array-like that takes
        ``out[index] = tile``), or a path for a new multiscale OME-Zarr
        image: tiles are written there as they finish, no output plane is
        held in memory, and the zarr array is returned. RGB / RGBA to a
        path: the colour is stored as NGFF's c axis and a lazy samples-last
        view of level 0 is returned (:meth:`Engine.run`).

    Returns (..., Y_out, X_out) or (..., Y_out, X_out, 3|4) in the output
    dtype (``out_dtype``, else the input's); with ``return_trust=True`` the
    pair ``(output, trust)``. For a lazy result of a dask array see :func:`upscale_lazy`.
    """
    return Engine(_settings(settings, scale, options)).run(image, rgb=rgb, input_pixel_size=input_pixel_size, progress=progress,
                                                           cancel=cancel, return_trust=return_trust, out=out,
                                                           mask=mask)


def upscale_lazy(image, scale=None, *, settings: RunSettings | None = None, rgb: bool = False, input_pixel_size=None,
                 chunks: tuple[int, int] | None = None, **options):
    """The result of :func:`upscale` as a lazy dask array: one task per output block, each computed on its own.

    A block is decoded by :meth:`Engine.window` from its plane, with the
    intensity map fitted on the whole plane and the halo the model and the
    back-projection need, on the global output grid. ``chunks=None``: the
    blocks are the engine's own tiles (``tile_size``, else the automatic
    size), and the result equals :func:`upscale`'s bit for bit; other
    ``chunks`` (Y, X) give equal values without back-projection
    (``consistency=0``) and values within rounding (1 in the last unit of an
    integer output) with it, whose float sums then run over other windows.
    ``image``: numpy or dask (..., Y, X) (or (..., Y, X, 3|4) with
    ``rgb=True``); each block's task reads its plane (the output's size /
    scale**2). Needs dask.
    """
    import dask
    import dask.array as da

    from .devices import pick_device

    engine = Engine(_settings(settings, scale, options))
    s = engine.settings
    leading, (h, w) = _spatial_layout(image, rgb)
    H, W = s.output_yx((h, w), input_pixel_size)
    dtype = s.output_dtype(image.dtype)
    colour = (int(image.shape[-1]),) if rgb else ()
    if chunks is None:
        device = next(s.model.parameters()).device if isinstance(s.model, torch.nn.Module) else pick_device(s.device)
        tiles = _tile_grid(h, w, H, W, int(s.tile_size or auto_tile_size(device, max(H / h, W / w))))
        ys = sorted({(t[0], t[1]) for t in tiles})
        xs = sorted({(t[2], t[3]) for t in tiles})
    else:
        ys = [(y0, min(H, y0 + chunks[0])) for y0 in range(0, H, chunks[0])]
        xs = [(x0, min(W, x0 + chunks[1])) for x0 in range(0, W, chunks[1])]
    window = dask.delayed(engine.window, pure=True)
    planes = []
    for index in np.ndindex(*leading):
        plane = image[index] if hasattr(image, "dask") else dask.delayed(np.asarray)(image[index])
        rows = []
        for y0, y1 in ys:
            row = [da.from_delayed(window(plane, (y0, y1, x0, x1), rgb=rgb, input_pixel_size=input_pixel_size),
                                   (y1 - y0, x1 - x0) + colour, dtype) for x0, x1 in xs]
            rows.append(da.concatenate(row, axis=1))
        planes.append(da.concatenate(rows, axis=0))
    result = da.stack(planes) if leading else planes[0]
    return result.reshape(leading + (H, W) + colour) if leading else result


def upscale_window(plane, output_shape: tuple[int, int], window: tuple[int, int, int, int], *,
                   settings: RunSettings | None = None, rgb: bool = False, mask=None, **options) -> np.ndarray:
    """Output rows ``y0:y1`` and columns ``x0:x1`` of ``plane`` upscaled to ``output_shape`` (:meth:`Engine.window`)."""
    return Engine(_settings(settings, None, {**options, "output_shape": output_shape})).window(plane, window, rgb=rgb,
                                                                                               mask=mask)


# ---- tiles ---------------------------------------------------------------------------------------
def _owned_range(n_in: int, n_out: int, lo: int, hi: int) -> tuple[int, int]:
    """Output pixels whose nearest LR pixel lies in [lo, hi): a contiguous range."""
    idx = nearest_lr_index(n_in, n_out)
    return int(np.searchsorted(idx, lo, "left")), int(np.searchsorted(idx, hi, "left"))


BLOCK_WINDOW = 256  # the largest output window (a side) decoded at once into a block sink: bounds the working set


def _split_window(window: tuple[int, int, int, int], side: int) -> list[tuple[int, int, int, int]]:
    """``window`` cut into windows of at most ``side`` x ``side``, row by row."""
    y0, y1, x0, x1 = window
    return [(a, min(y1, a + side), b, min(x1, b + side)) for a in range(y0, y1, side) for b in range(x0, x1, side)]


def _tile_grid(h: int, w: int, H: int, W: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Output windows (y0, y1, x0, x1) covering the output once: the pixels nearest to one LR tile each."""
    rows = [(r, min(r + tile, h)) for r in range(0, h, tile)]
    cols = [(c, min(c + tile, w)) for c in range(0, w, tile)]
    grid = []
    for r0, r1 in rows:
        y0, y1 = _owned_range(h, H, r0, r1)
        for c0, c1 in cols:
            x0, x1 = _owned_range(w, W, c0, c1)
            if y1 > y0 and x1 > x0:
                grid.append((y0, y1, x0, x1))
    return grid


def fill_nodata(plane: np.ndarray, nodata: float | None, rgb: bool = False,
                mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``plane`` with its nodata pixels filled from the nearest valid pixel, and the (Y, X) nodata mask.

    A pixel is nodata where it equals ``nodata`` (NaN: where it is NaN; RGB:
    in every colour sample), or where ``mask`` ((Y, X) bool, True where a
    pixel holds data: a GDAL internal mask) is False. Filling makes a scene
    edge no content for the network, so the valid pixels next to it are not
    pulled towards the fill value. The mask returned is None when nothing is
    missing.
    """
    from .io.whole import data_pixels  # (the one rule of training and evaluation too)

    if plane.ndim != (3 if rgb else 2):
        raise ValueError(f"a {'colour' if rgb else 'gray'} plane is (Y, X{', C' if rgb else ''}); got shape {plane.shape}")
    if mask is not None and np.shape(mask) != plane.shape[:2]:
        raise ValueError(f"mask has shape {np.shape(mask)}; the plane's (Y, X) is {plane.shape[:2]}")
    valid = data_pixels(plane, nodata, mask)
    if valid is None:
        return plane, None
    missing = ~valid
    if missing.all():  # nothing to fill from: a constant plane, all of it nodata again on output
        return np.zeros_like(plane), missing
    from scipy.ndimage import distance_transform_edt

    nearest = distance_transform_edt(missing, return_distances=False, return_indices=True)
    return plane[tuple(nearest)], missing


def _plane_masks(mask, leading: tuple[int, ...], yx: tuple[int, int]):
    """``index -> (Y, X) bool mask or None`` from :func:`upscale`'s ``mask`` (one for all planes, or one per plane)."""
    if mask is None:
        return lambda index: None
    shape = tuple(int(n) for n in np.shape(mask))
    if shape == tuple(yx):
        shared = np.asarray(mask, dtype=bool)
        return lambda index: shared
    if shape == tuple(leading) + tuple(yx):
        return lambda index: np.asarray(mask[index], dtype=bool)
    raise ValueError(f"mask has shape {shape}: give one (Y, X) = {tuple(yx)} mask for every plane, "
                     f"or one per plane, {tuple(leading) + tuple(yx)}")


def _fill_value(nodata: float | None, dtype: np.dtype):
    """What pixels without data become on output: ``nodata``, or 0 when only a mask marks them."""
    return cast(np.float32(0.0 if nodata is None else nodata), dtype)


def nodata_on_output(missing: np.ndarray, out_shape: tuple[int, int],
                     window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The output pixels whose nearest input pixel is nodata (the engine's pixel-centre grid); of ``window`` alone when given."""
    (h, w), (H, W) = missing.shape, out_shape
    y0, y1, x0, x1 = window if window is not None else (0, H, 0, W)
    return missing[np.ix_(nearest_lr_index(h, H)[y0:y1], nearest_lr_index(w, W)[x0:x1])]


def _normalised(plane: np.ndarray, rgb: bool, intensity: str, dtype: np.dtype, missing: np.ndarray | None = None):
    """One plane for the network: (intensity map, normalised (C, Y, X) colour, valid output range).

    The map is fitted on the colour of the whole plane (an RGBA plane's alpha
    is left out), nodata pixels (``missing``) left out.
    """
    colour = plane[..., :3] if rgb and plane.shape[-1] == 4 else plane
    mapping = fit_intensity(colour if missing is None or missing.all() else colour[~missing], intensity)
    lr = _Normalised(colour, mapping, rgb)
    return mapping, lr, valid_range(mapping, dtype), data_bounds(lr, colour.dtype, mapping)


class _Normalised:
    """The normalised (C, Y, X) float32 view of a plane, made crop by crop when indexed.

    ``lr[:, t0:t1, s0:s1]`` equals the same slice of the whole normalised
    plane (the map is elementwise) without a float32 copy of the plane: tiles
    read what they need, so the engine's memory follows the tile, not the input.
    """

    def __init__(self, colour: np.ndarray, mapping, rgb: bool):
        self.colour, self.mapping, self.rgb = colour, mapping, rgb
        h, w = colour.shape[:2]
        self.shape = (colour.shape[-1], h, w) if rgb else (1, h, w)
        self.ndim = 3

    def __getitem__(self, key) -> np.ndarray:
        channels, rows, cols = key
        crop = self.mapping.normalize(self.colour[rows, cols])
        return (crop.transpose(2, 0, 1) if self.rgb else crop[None])[channels]

    def __array__(self, dtype=None, copy=None):
        whole = self[:, :, :]
        return whole if dtype is None else whole.astype(dtype)


class DataBounds(NamedTuple):
    """What a plane's own values allow its output, in the normalised units, per channel: (C,) arrays.

    ``floor``: the plane's p0.1 less a margin (0.45 of a quantisation step,
    at most 0.5 % of the robust range), the lowest value the back-projection
    may reach. ``step``: the quantisation step (one count for integer planes,
    the smallest gap between values of a float plane with few values, else 0).
    ``few``: the channel has at most ``FEW_LEVELS`` steps over its robust
    range (p0.1 to p99.9), ``spread``, that range. Statistics of the whole plane, so every tile uses
    the same bounds.
    """

    floor: np.ndarray
    step: np.ndarray
    few: np.ndarray
    spread: np.ndarray


# a plane with at most this many quantisation steps over its robust range is "few-level" (dim data)
FEW_LEVELS = 64
# few-level residuals: the share of the rounding noise variance (step^2 / 12) taken out at x2 (see quantisation_gain)
QUANTISATION_NOISE_SHARE = 0.5
# network output up to this fraction of the robust range below the floor is lifted to it; deeper is kept
DEEP = 0.02
_BOUND_SAMPLES = 1 << 20  # statistics of big planes from a regular subsample
_HISTOGRAM_BAND = 1 << 16  # samples per band of the integer histogram (_integer_percentiles)


def data_bounds(lr: np.ndarray, dtype: np.dtype, mapping) -> DataBounds:
    """:class:`DataBounds` of a normalised (C, Y, X) plane whose input had ``dtype`` and intensity map ``mapping``."""
    channels = lr.shape[0]
    stride = max(1, int(np.sqrt(lr.shape[1] * lr.shape[2] / _BOUND_SAMPLES)))
    if isinstance(lr, _Normalised) and lr.colour.dtype.kind in "ui" and lr.colour.dtype.itemsize <= 2:
        lo, hi = _integer_percentiles(lr, stride, (0.1, 99.9))
        sample = None
    else:
        sample = lr[:, ::stride, ::stride].reshape(channels, -1).astype(np.float64)
        lo, hi = np.percentile(sample, (0.1, 99.9), axis=1)
    if np.dtype(dtype).kind in "ui":  # one count, in normalised units
        step = np.full(channels, 1.0 / abs(mapping.hi - mapping.lo))
    else:  # a float plane quantised to few values: the smallest gap between them
        step = np.zeros(channels)
        for c in range(channels):
            values = np.unique(sample[c])
            if 1 < values.size <= 4 * FEW_LEVELS:
                step[c] = float(np.diff(values).min())
    spread = np.maximum(hi - lo, 1e-12)
    few = (step > 0) & (spread <= FEW_LEVELS * step * (1 + 1e-6))
    floor = lo - np.minimum(0.45 * step, 0.005 * spread)
    return DataBounds(floor, step, few, spread)



def hole_bound(bicubic: torch.Tensor, minimum: float, step: np.ndarray) -> torch.Tensor:
    """Per-pixel lower bound (C, y, x) that keeps an output off the dtype's ``minimum`` wherever ``bicubic`` is.

    For planes whose data reach the dtype's minimum (clipped at 0: a camera
    offset below the floor), where the floor of :class:`DataBounds` cannot
    keep the back-projection off it. Where bicubic rounds above the minimum
    (more than half a ``step``, the count, above it) the output stays at least
    ``min(bicubic, minimum + 0.55 step)``: it rounds to at least one count,
    so the output has no zero pixel bicubic would not have; elsewhere no
    bound (-inf).
    """
    count = torch.from_numpy(np.asarray(step, np.float32)).to(bicubic.device)[:, None, None]
    zero = minimum + 0.5 * count
    return torch.where(bicubic > zero, torch.minimum(bicubic, zero + 0.05 * count), -torch.inf)


def quantisation_gain(residual: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Wiener gain of a back-projection residual (C, h, w) whose LR was rounded: ``max(0, 1 - noise / local energy)``.

    ``noise`` (C, 1, 1) is the variance the rounding adds to the residual;
    the local energy is the mean of ``residual ** 2`` over each pixel's 3x3
    neighbourhood (fewer at the array's edge). Where the residual is the
    rounding error (flat background, the steps themselves) the gain is near
    0: those residuals are not enforced; where structure leaves residuals
    well above a step it is near 1.
    """
    energy = torch.nn.functional.avg_pool2d(residual.square()[None], 3, 1, 1, count_include_pad=False)[0]
    return torch.where(energy > 0, 1 - noise / energy.clamp(min=torch.finfo(energy.dtype).tiny), 0).clamp(min=0)


def quantisation_noise(step: np.ndarray, area_ratio: float) -> np.ndarray:
    """The rounding noise variance :func:`quantisation_gain` takes out of a few-level residual at ``area_ratio``.

    ``QUANTISATION_NOISE_SHARE`` of the rounding's variance ``step ** 2 / 12``
    at x2, falling as ``2 / ratio`` beyond it (the residual bicubic leaves
    grows with the ratio, the rounding error does not). Measured on
    ``quality.few_levels`` planes (8-48 levels, x2-x4) and the 8-bit
    few-level files of ``domains`` against the earlier half-step dead zone:
    +0.04 to +0.30 dB at x3 / x4 for 13 to 48 levels (x3 on 13 levels
    within 0.015 dB), within 0.015 dB for 8 levels and at x2; the numbers
    are in docs/fidelity.md.
    """
    ratio = float(np.sqrt(area_ratio))
    return QUANTISATION_NOISE_SHARE * min(1.0, 2.0 / ratio) * np.square(step) / 12


def _integer_percentiles(lr: _Normalised, stride: int, percents) -> tuple[np.ndarray, np.ndarray]:
    """``np.percentile`` of the normalised subsample ``lr[:, ::stride, ::stride]`` (float64, linear), per channel,
    for an 8- or 16-bit integer plane, from a histogram of its values: the same numbers without a float copy.

    The normalisation is monotone, so the order statistics of the normalised
    sample are the normalised order statistics of the integers; the two around
    each percentile are then interpolated by ``np.percentile`` itself.
    """
    colour = lr.colour
    info = np.iinfo(colour.dtype)
    out = np.empty((len(percents), lr.shape[0]))
    # small bands: bincount copies its input to int64 (8 bytes a sample), which over a whole 1 Mi sample would
    # be the largest allocation of a block-store run (12 MiB); a band of 64 Ki samples costs 0.5 MiB
    rows = max(1, _HISTOGRAM_BAND // max(1, colour.shape[1] // stride))
    for c in range(lr.shape[0]):
        counts = np.zeros(int(info.max) - int(info.min) + 1, np.int64)
        for r in range(0, colour.shape[0], rows * stride):
            band = colour[r:r + rows * stride:stride, ::stride]
            band = band[..., c] if lr.rgb else band
            counts += np.bincount((band.astype(np.int32) - int(info.min)).ravel(), minlength=counts.size)
        cumulative = np.cumsum(counts)
        n = int(cumulative[-1])
        for i, percent in enumerate(percents):
            virtual = (n - 1) * np.true_divide(percent, 100)
            before = int(np.floor(virtual))
            after = min(before + 1, n - 1)
            ends = np.searchsorted(cumulative, [before, after], side="right") + int(info.min)
            values = lr.mapping.normalize(ends.astype(colour.dtype)).astype(np.float64)
            out[i, c] = np.quantile(values, virtual - before) if after > before else values[0]
    return out[0], out[1]


def resize_mask(mask: np.ndarray, out_shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """Resize an alpha channel or mask (Y, X) bilinearly on the same pixel-centre grid as the model.

    Linear interpolation stays within the range of its neighbours (no
    overshoot); integers are rounded, floats come back as float32.
    """
    values = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    out = torch.nn.functional.interpolate(values, size=tuple(out_shape), mode="bilinear", align_corners=False)[0, 0]
    return cast(out.numpy(), dtype)


def _upsample_support(n_in: int, n_out: int, start: int, stop: int) -> tuple[int, int]:
    """LR index range ``[lo, hi)`` that bicubic output pixels ``start..stop-1`` read (global border clamp)."""
    ratio = n_in / n_out
    lo = int(np.floor((start + 0.5) * ratio - 0.5)) - 1
    hi = int(np.floor((stop - 0.5) * ratio - 0.5)) + 3
    return max(lo, 0), min(hi, n_in)


def _halo_windows(n_in: int, n_out: int, start: int, stop: int, steps: int, lr_pad: int = 0):
    """Per axis: output windows W_0 ⊇ ... ⊇ W_steps = [start, stop) and LR windows L_1..L_steps.

    Step k computes x on W_k from x on W_{k-1}: it reads y on L_k (the bicubic
    support of W_k, widened by ``lr_pad`` LR pixels within the image: the
    neighbours a residual's local statistics read) and D(x) there needs x on
    the antialiased support of L_k.
    """
    windows, lr_windows = [(start, stop)], []
    for _ in range(steps):
        a, b = windows[-1]
        lo, hi = _upsample_support(n_in, n_out, a, b)
        lr_win = (max(lo - lr_pad, 0), min(hi + lr_pad, n_in))
        d0, d1 = antialias_support(n_out, n_in, *lr_win)
        windows.append((min(a, d0), max(b, d1)))
        lr_windows.append(lr_win)
    return windows[::-1], lr_windows[::-1]


def _without_outliers(lr: np.ndarray, box: tuple[int, int, int, int], clamp: tuple[float, float] | None):
    """The LR tile ``box`` (t0, t1, s0, s1) of the plane ``lr`` (C, h, w) as the network sees it, and the outliers' excess.

    :func:`~diinn_napari.core.replace_outliers` (3x3 median per channel) on
    the tile plus one pixel of real neighbours (edge pixels repeated only
    where the image itself ends), so tiles agree with the whole plane.
    """
    t0, t1, s0, s1 = box
    crop = lr[:, t0:t1, s0:s1]
    if clamp is None or not ((crop < clamp[0]) | (crop > clamp[1])).any():
        return crop, None
    h, w = lr.shape[-2:]
    a0, b0 = max(0, t0 - 1), max(0, s0 - 1)
    seen, excess = replace_outliers(lr[:, a0 : min(h, t1 + 1), b0 : min(w, s1 + 1)], clamp, size=(1, 3, 3))
    inner = (slice(None), slice(t0 - a0, t1 - a0), slice(s0 - b0, s1 - b0))
    return seen[inner], excess[inner]


# The 8 symmetries of the square as (transpose, flip Y, flip X), applied in that order to the (C, h, w) plane.
SYMMETRIES = tuple(itertools.product((False, True), repeat=3))


def _flip_range(n: int, a: int, b: int, flip: bool) -> tuple[int, int]:
    return (n - b, n - a) if flip else (a, b)


def _ensemble_render(net: DIINN, lr: np.ndarray, lr_shape, out_shape, window, device, mode, autocast_dtype, **kwargs):
    """:func:`_render` for the geometric self-ensemble: the mean of the 8 flipped/transposed decodings, mapped back.

    Each member decodes the same window of the *global* output grid of its
    transformed plane (a transpose swaps Y and X, their sizes and scales; a
    flip mirrors the window), so a tiled run still equals the whole-image
    run. The trust map, when asked, is the mean of the members' corrections.
    """
    (h, w), (H, W) = lr_shape, out_shape
    y0, y1, x0, x1 = window
    lr = np.asarray(lr)  # the members flip and transpose the whole plane
    total = correction = None
    for transpose, flip_y, flip_x in SYMMETRIES:
        plane = lr.transpose(0, 2, 1) if transpose else lr
        (th, tw), (tH, tW) = ((w, h), (W, H)) if transpose else ((h, w), (H, W))
        (a0, a1), (b0, b1) = ((x0, x1), (y0, y1)) if transpose else ((y0, y1), (x0, x1))
        if flip_y:
            plane = plane[:, ::-1]
        if flip_x:
            plane = plane[:, :, ::-1]
        win = (*_flip_range(tH, a0, a1, flip_y), *_flip_range(tW, b0, b1, flip_x))
        sr, corr = _render(net, np.ascontiguousarray(plane), (th, tw), (tH, tW), win, device, mode, autocast_dtype,
                           **kwargs)
        members = [sr] if corr is None else [sr, corr]
        back = []
        for m in members:  # undo in the reverse order: flips, then the transpose
            if flip_x:
                m = m[:, :, ::-1]
            if flip_y:
                m = m[:, ::-1]
            back.append(m.transpose(0, 2, 1) if transpose else m)
        total = back[0].astype(np.float64) if total is None else total + back[0]
        if corr is not None:
            correction = back[1].astype(np.float64) if correction is None else correction + back[1]
    n = len(SYMMETRIES)
    mean = (total / n).astype(np.float32)
    return mean, None if correction is None else (correction / n).astype(np.float32)


@torch.no_grad()
def _render(net: DIINN, lr: np.ndarray, lr_shape, out_shape, window, device, mode, autocast_dtype, *,
            consistency: int = 0, clamp: tuple[float, float] | None = OUTLIER_CLAMP,
            valid: tuple[float, float] = (-np.inf, np.inf), bounds: DataBounds | None = None, trust: bool = False):
    """Decode output ``window`` (y0, y1, x0, x1) of the global grid from the whole normalised plane ``lr`` (C, h, w).

    1. Outliers (values outside ``clamp``) are replaced, for the network, by
       the clamped median of their 3x3 neighbourhood; the rest of the plane
       is unchanged.
    2. The network decodes the window widened by the halo the back-projection
       steps need (encoding the LR pixels that window depends on), so the
       result equals the whole-image result.
    3. Few-level channels (``bounds.few``): the network's detail over bicubic
       soft-thresholded by half a quantisation step. The result is clipped to
       ``valid`` and, where it lies less than ``DEEP`` of the robust range
       below ``bounds.floor``, lifted to it. Each of the ``consistency``
       back-projection steps against that same plane (for few-level channels
       the residual times :func:`quantisation_gain`: its rounding noise
       taken out) is followed by the projection
       onto ``[min(x_0, floor), valid[1]]``: the steps dig no lower than the
       floor or than the network itself went.
    4. The outliers' excess over their replacement is added by bicubic
       interpolation: linear in the excess, spread no further than bicubic.
    5. Channels whose data reach the integer output's minimum (p0.1 there,
       e.g. clipped at 0), with ``consistency``: no output pixel rounds to
       the minimum where bicubic does not (:func:`hole_bound`).

    Returns ``(sr, correction)``: (C, y1-y0, x1-x0) float32 arrays,
    ``correction`` (|x_K - x_0|, or with ``consistency`` 0 one step's
    |U(y - D(x_0))|) only with ``trust=True``.
    """
    (h, w), (H, W) = lr_shape, out_shape
    y0, y1, x0, x1 = window
    steps = max(consistency, 1) if trust else consistency
    few = [] if bounds is None else [c for c in range(len(bounds.few)) if bounds.few[c]]
    pad = 1 if few else 0  # the 3x3 residual statistics of few-level channels read one LR pixel more
    wy, ly = _halo_windows(h, H, y0, y1, steps, pad)
    wx, lx = _halo_windows(w, W, x0, x1, steps, pad)
    (ya, yb), (xa, xb) = wy[0], wx[0]
    # the network on the widened window: its LR tile is the nearest LR pixels plus the receptive radius
    # (which contains the bicubic support of every window below)
    m = net.receptive_radius
    rows, cols = nearest_lr_index(h, H, ya, yb), nearest_lr_index(w, W, xa, xb)
    t0, t1 = max(0, int(rows[0]) - m), min(h, int(rows[-1]) + 1 + m)
    s0, s1 = max(0, int(cols[0]) - m), min(w, int(cols[-1]) + 1 + m)
    crop, excess = _without_outliers(lr, (t0, t1, s0, s1), clamp)
    x = torch.from_numpy(np.ascontiguousarray(crop))[None].to(device)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        features = net.encode(x)
        sr = net.decode_window(x, features, lr_shape, out_shape, (ya, yb, xa, xb), (t0, s0), mode)
    lo, hi = valid
    channels = x.shape[1]
    floor = np.full(channels, lo) if bounds is None else np.maximum(bounds.floor, lo)
    spread = np.zeros(channels) if bounds is None else bounds.spread
    lower = torch.from_numpy(floor.astype(np.float32)).to(device)[:, None, None]
    sr = sr[0].float()
    # few-level channels: detail within half a quantisation step of bicubic is not in the data (it
    # sharpens the steps themselves), so the network's departure from bicubic is shrunk by that much,
    # and the residual's rounding noise is not enforced (quantisation_gain)
    noise = None
    if few:
        by = bicubic_matrix(h, H, ya, yb, t0, t1).to(device)
        bx = bicubic_matrix(w, W, xa, xb, s0, s1).to(device)
        base = by @ x[0, few].float() @ bx.t()
        half = torch.from_numpy((0.5 * bounds.step[few]).astype(np.float32)).to(device)[:, None, None]
        detail = sr[few] - base
        sr[few] = base + torch.sign(detail) * torch.clamp(detail.abs() - half, min=0)
        noise = torch.from_numpy(quantisation_noise(bounds.step[few], H * W / (h * w)).astype(np.float32))
        noise = noise.to(device)[:, None, None]
    # the network's output a little below the floor (ringing in the background) is lifted to it; deeper
    # is its own confident dark detail (a thin dark line the LR cannot show), kept; the back-projection
    # may then go no lower than either (its bicubic U rings around bright spots: the holes)
    sr = first = sr.clamp(lo, hi)  # the trust map: the correction relative to the network's own output
    if not consistency:  # consistency 0: the network's own output, only the dtype's range
        lower = lower.clamp(max=lo)
    lift = (sr < lower) & (sr >= lower - torch.from_numpy(DEEP * spread).float().to(device)[:, None, None])
    sr = torch.where(lift, lower.expand_as(sr), sr)
    lower = torch.minimum(sr, lower)
    correction = None
    y = x[0].float()  # the plane the network saw: consistency with it keeps outliers out of the back-projection
    for k in range(steps):
        (pa, pb), (qa, qb) = wy[k], wx[k]  # x lives on W_k
        (na, nb), (ma, mb) = wy[k + 1], wx[k + 1]  # and becomes x on W_{k+1}
        (la, lb), (ka, kb) = ly[k], lx[k]
        dy = torch.from_numpy(antialias_matrix(H, h, la, lb, pa, pb)).float().to(device)
        dx = torch.from_numpy(antialias_matrix(W, w, ka, kb, qa, qb)).float().to(device)
        uy = bicubic_matrix(h, H, na, nb, la, lb).to(device)
        ux = bicubic_matrix(w, W, ma, mb, ka, kb).to(device)
        residual = y[:, la - t0 : lb - t0, ka - s0 : kb - s0] - dy @ sr @ dx.t()
        if noise is not None:  # the LR's rounding is not data
            residual[few] = residual[few] * quantisation_gain(residual[few], noise)
        step = uy @ residual @ ux.t()
        sr = sr[:, na - pa : nb - pa, ma - qa : mb - qa]
        first = first[:, na - pa : nb - pa, ma - qa : mb - qa]
        lower = lower[:, na - pa : nb - pa, ma - qa : mb - qa]
        if k >= consistency:  # trust only: the correction the first step would apply, none applied
            correction = step.abs()
            break
        sr = torch.maximum(sr + step, lower).clamp(max=hi)
    if trust and correction is None:
        correction = (sr - first).abs()
    clipped = [] if bounds is None or not consistency or not np.isfinite(lo) else [
        c for c in range(channels) if bounds.step[c] > 0 and bounds.floor[c] <= lo]
    if excess is not None or clipped:  # bicubic from the tile's LR onto the window, for both steps below
        by = bicubic_matrix(h, H, y0, y1, t0, t1).to(device)
        bx = bicubic_matrix(w, W, x0, x1, s0, s1).to(device)
    if excess is not None:  # outliers: their excess travels the bicubic path, linearly
        sr = (sr + by @ torch.from_numpy(np.ascontiguousarray(excess)).to(device) @ bx.t()).clamp(lo, hi)
    if clipped:  # a plane clipped at the dtype's minimum: no new pixels at it where bicubic has none
        seen = x[0, clipped].float()
        if excess is not None:
            seen = seen + torch.from_numpy(np.ascontiguousarray(excess[clipped])).to(device)
        sr[clipped] = torch.maximum(sr[clipped], hole_bound(by @ seen @ bx.t(), lo, bounds.step[clipped]))
    return sr.cpu().numpy(), None if correction is None else correction.cpu().numpy()

