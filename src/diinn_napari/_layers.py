"""How results sit in the viewer: over their source, displayed like it; shared by the run and the preview.

A result's pixel centres lie on its source's continuous grid
(:func:`~diinn_napari.settings.overlay_placement`), a single plane at its own
Z/T position, an isotropic volume with only its Z scale changed (output plane
k at the first plane's Z + k x the output Z step), under the source's affine.
Colours, contrast, units and axis labels are copied from the source, so a
result looks like it; so is its metadata (a GeoTIFF's band names, nodata,
and its transform and mask scaled to the result's grid).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_info

from ._planner import UNIT_WORDS, RunPlan
from ._reader import result_metadata
from .settings import overlay_placement

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

PREVIEW_SUFFIX = "DIINN preview"
# out of memory, the layer over the store is refreshed as blocks arrive, but at most so often that refreshing (napari
# reads the displayed level's region and the thumbnail level again) takes about this share of the main thread's time
STORE_REFRESH_SHARE = 0.1
STORE_REFRESH_MIN_S = 0.2  # and never more often than this
TRUST_NOTE = ("magnitude of the back-projection correction (image units): large where the model disagreed with "
              "the measured input")


def level0(layer: Image):
    """The full-resolution data of a layer (level 0 of a multiscale one)."""
    return layer.data[0] if layer.multiscale else layer.data


def is_preview(layer) -> bool:
    return layer.name.endswith(PREVIEW_SUFFIX)


def current_plane(layer: Image, world_point) -> tuple[int, ...]:
    """The layer's plane at the viewer's point: its index on each leading (non-YX) axis."""
    point = layer.world_to_data(world_point)
    return tuple(int(round(point[i])) for i in range(layer.ndim - 2))


def visible_corners(layer: Image) -> np.ndarray:
    """((y0, x0), (y1, x1)) of the layer's visible pixels in level-0 coordinates (napari's corner_pixels)."""
    corners = np.asarray(layer.corner_pixels, dtype=np.float64)[:, -2:]
    if layer.multiscale:  # corner pixels are in the displayed level's coordinates
        corners = corners * np.asarray(layer.downsample_factors[layer.data_level])[-2:]
    return corners


def placement(plan: RunPlan, index: tuple[int, ...] | None = None) -> tuple[list[float], list[float]]:
    """napari scale and translate of a result of ``plan`` (``index``: the one plane it holds, if only one)."""
    scale_in, translate_in = list(plan.source.scale), list(plan.source.translate)
    n = len(scale_in)
    if plan.isotropic is not None:
        # Z planes are point samples: output plane k at translate + k * target, so plane 0 stays on input plane 0
        scale_in[n - 3] = float(plan.isotropic.target)
        return scale_in, translate_in
    scale, translate = overlay_placement(scale_in, translate_in, (1.0,) * (n - 2) + plan.ratio)
    if index is not None:  # one plane: place it at its own Z/T position
        translate[: n - 2] = [t + i * s for t, i, s in zip(translate_in[: n - 2], index, scale_in[: n - 2])]
    return scale, translate


def same_affine(source: Image) -> dict:
    """The source's affine for a result (a GeoTIFF with a rotated transform has one), or nothing when it has none.

    napari applies it after scale and translate, so a result placed over the
    source's pixel grid stays over it.
    """
    matrix = np.asarray(source.affine.affine_matrix)
    return {} if np.allclose(matrix, np.eye(len(matrix))) else {"affine": matrix}


def looks_like(source: Image, data: np.ndarray | None, dtype=None) -> dict:
    """Display settings that make a result look like its source: units, axis labels, colours, contrast.

    ``data`` None (a result in a store, not read whole): the contrast is the
    source's, or the range of ``dtype`` when it is another integer type.
    """
    kwargs = dict(rgb=source.rgb, blending=source.blending)
    for attr in ("units", "axis_labels"):
        if hasattr(source, attr):
            kwargs[attr] = getattr(source, attr)
    if not source.rgb:
        kwargs.update(colormap=source.colormap, gamma=source.gamma)
        dtype = np.dtype(data.dtype if data is not None else dtype)
        # another dtype means other numbers: take the contrast from the data (all of it, not one plane)
        if dtype == np.dtype(source.dtype):
            kwargs["contrast_limits"] = source.contrast_limits
        elif data is not None:
            kwargs["contrast_limits"] = value_range(data)
        elif dtype.kind in "iu":
            kwargs["contrast_limits"] = (float(np.iinfo(dtype).min), float(np.iinfo(dtype).max))
        else:  # float values keep the source's units
            kwargs["contrast_limits"] = source.contrast_limits
    return kwargs


def sampled_planes(level, most: int = 8) -> np.ndarray:
    """At most ``most`` planes of ``level`` (an array-like (..., Y, X)), evenly spread over its leading axes:
    enough for a contrast range, read from the store each time (a stack's smallest level is not read whole)."""
    leading = tuple(level.shape[:-2])
    count = int(np.prod(leading, dtype=np.int64))
    picks = np.unique(np.linspace(0, count - 1, min(most, count)).round().astype(int))
    return np.stack([np.asarray(level[np.unravel_index(k, leading) if leading else ()]) for k in picks])


def value_range(data: np.ndarray) -> tuple[float, float]:
    lo, hi = float(np.min(data)), float(np.max(data))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def remove_preview(viewer: napari.Viewer, source: Image) -> None:
    name = f"{source.name} {PREVIEW_SUFFIX}"
    if name in viewer.layers:
        viewer.layers.remove(name)


def show_preview(viewer: napari.Viewer, source: Image, plan: RunPlan, window: tuple[int, int, int, int],
                 image: np.ndarray, seconds: float) -> Image:
    """Show a decoded window of the plan's current plane as the source's one preview layer."""
    remove_preview(viewer, source)
    scale, translate = placement(plan, plan.plane)
    translate[-2] += window[0] * scale[-2]
    translate[-1] += window[2] * scale[-1]
    data = image.reshape((1,) * (source.ndim - 2) + image.shape)
    meta = {**plan.record, "preview_window": list(window), "seconds": seconds, "made": time.time()}
    return viewer.add_image(data, name=f"{source.name} {PREVIEW_SUFFIX}", scale=scale, translate=translate,
                            metadata={"diinn": meta}, **same_affine(source), **looks_like(source, image))


class ResultLayers:
    """The output layer of one run (and its trust map): added when the first unit is done, filled in, then ended.

    The arrays are the worker's own, filled in place; the layers show them
    by reference and are refreshed as planes (or Y rows) finish. Out of
    memory (:meth:`show_store`), the layer is multiscale over the store's
    levels, added when the store is opened and refreshed as blocks finish.
    """

    def __init__(self, viewer: napari.Viewer, source: Image, plan: RunPlan, index: tuple[int, ...] | None):
        self.viewer, self.source, self.plan, self.index = viewer, source, plan, index
        self.image: Image | None = None
        self.trust: Image | None = None
        # out of memory: the blocks the layer shows, and the perf_counter time before which it is not refreshed
        self._blocks_shown, self._refresh_after = 0, 0.0

    @property
    def _done_key(self) -> str:
        return f"{self.plan.unit}_done"

    def show(self, result: np.ndarray, trust: np.ndarray | None, units_done: int) -> None:
        """Add the layers on the first call (napari may run Qt's event loop meanwhile), refresh them later."""
        plan = self.plan
        if self.image is None:
            remove_preview(self.viewer, self.source)
            scale, translate = placement(plan, self.index)
            meta = {**plan.record, "output_shape": list(result.shape), f"{plan.unit}_total": plan.units_total,
                    self._done_key: 0, "partial": True}
            self.image = self.viewer.add_image(
                result, name=f"{self.source.name} {plan.label} DIINN", scale=scale, translate=translate,
                metadata={**result_metadata(self.source.metadata, plan.in_yx, plan.out_yx), "diinn": meta},
                **same_affine(self.source), **looks_like(self.source, result))
            if trust is not None:
                self.trust = self.viewer.add_image(
                    trust, name=f"{self.source.name} {plan.label} DIINN trust", scale=scale, translate=translate,
                    **same_affine(self.source),
                    colormap="magma", blending="additive", opacity=0.6, visible=True,
                    metadata={"diinn": {**plan.record, "trust_map": TRUST_NOTE}})
        meta = self.image.metadata["diinn"]
        if meta["partial"]:
            meta[self._done_key] = max(meta[self._done_key], units_done)
        self.refresh()

    def show_store(self, stored, units_done: int) -> None:
        """Out of memory: add a multiscale layer over the store on the first call (naming the store, and the
        blocks resumed), refresh it as blocks arrive (``stored``: a :class:`~diinn_napari._run.Stored`).

        Refreshes are spaced (:data:`STORE_REFRESH_SHARE`, :data:`STORE_REFRESH_MIN_S`): blocks that arrive
        meanwhile are shown by the next one, the last block at once (and :meth:`end` refreshes too).
        """
        from .io.omezarr import open_levels

        plan = self.plan
        if self.image is None:
            remove_preview(self.viewer, self.source)
            scale, translate = placement(plan, self.index)
            meta = {**plan.record, "output_shape": list(plan.shape), f"{plan.unit}_total": plan.units_total,
                    self._done_key: 0, "partial": True, "store": stored.path, "blocks_total": stored.blocks_total,
                    "blocks_done": stored.blocks_done, "blocks_resumed": stored.resumed}
            self.image = self.viewer.add_image(
                open_levels(stored.path, colour_last=plan.source.rgb), multiscale=True, name=f"{self.source.name} {plan.label} DIINN",
                scale=scale, translate=translate,
                metadata={**result_metadata(self.source.metadata, plan.in_yx, plan.out_yx), "diinn": meta},
                **same_affine(self.source), **looks_like(self.source, None, plan.dtype))
            if stored.trust_path is not None:
                self.trust = self.viewer.add_image(
                    open_levels(stored.trust_path), multiscale=True, name=f"{self.source.name} {plan.label} DIINN trust",
                    scale=scale, translate=translate, **same_affine(self.source),
                    colormap="magma", blending="additive", opacity=0.6, visible=True, contrast_limits=(0.0, 1.0),
                    metadata={"diinn": {**plan.record, "trust_map": TRUST_NOTE, "store": stored.trust_path}})
            said = [f"DIINN: the result goes to OME-Zarr {stored.path} ({plan.memory_note})", *stored.notes]
            if stored.trust_path is not None:
                said.append(f"its trust map to {stored.trust_path}")
            if stored.resumed >= stored.blocks_total:
                said.append("it was already complete: shown as it is")
            elif stored.resumed:
                said.append(f"resumed: {stored.resumed} of {stored.blocks_total} blocks were done, skipped")
            show_info("; ".join(said))
            self._blocks_shown = stored.blocks_done  # (adding the layer read them)
        meta = self.image.metadata["diinn"]
        if meta["partial"]:
            meta[self._done_key] = max(meta[self._done_key], units_done)
        meta["blocks_done"] = max(meta["blocks_done"], stored.blocks_done)
        now = time.perf_counter()
        if (meta["blocks_done"] > self._blocks_shown and now >= self._refresh_after) \
                or meta["blocks_done"] == stored.blocks_total:
            self.refresh()
            self._blocks_shown = meta["blocks_done"]
            self._refresh_after = now + max(STORE_REFRESH_MIN_S, (time.perf_counter() - now) / STORE_REFRESH_SHARE)

    def refresh(self) -> None:
        for layer in (self.image, self.trust):
            if layer is not None:
                layer.refresh()
        if self.trust is not None and self.trust.multiscale:  # a map in a store: its range from the smallest level
            self.trust.contrast_limits = value_range(sampled_planes(self.trust.data[-1]))

    def end(self, stopped: str | None) -> None:
        """The run is over: ``stopped`` None (the result is whole), "cancelled" or "failed" (keep what is done)."""
        if self.image is None:
            if stopped == "cancelled":
                show_info("DIINN: cancelled")
            return
        meta = self.image.metadata["diinn"]
        total, words = meta[f"{self.plan.unit}_total"], UNIT_WORDS[self.plan.unit]
        if stopped is None:
            meta["partial"], meta[self._done_key] = False, total
        elif meta[self._done_key] >= total:  # every unit had arrived before the stop: the result is whole
            meta["partial"] = False
        elif "store" in meta:  # out of memory: the finished blocks are kept in the store; a rerun resumes them
            done, total = meta["blocks_done"], meta["blocks_total"]
            self.image.name = f"{self.image.name} (partial: {done} of {total} blocks)"
            meta["stopped"] = stopped
            show_info(f"DIINN: {stopped}; kept the {done} finished blocks in {meta['store']} (shown in "
                      f"{self.image.name!r}); Run with the same settings resumes there")
        else:
            done = meta[self._done_key]
            self.image.name = f"{self.image.name} (partial: {done} of {total} {words})"
            meta["stopped"] = stopped
            show_info(f"DIINN: {stopped}; kept the {done} finished {words} in {self.image.name!r}")
        self.refresh()
