"""The napari widget: pick a layer and a size, run DIINN in a thread, get an overlaid layer.

A page of glue over :func:`diinn_napari.engine.upscale_steps`. napari builds it
from the manifest (``DIINNWidget(napari_viewer=...)``) when a user opens
*Plugins > DIINN super-resolution* or *Layers > Transform*. torch is imported
when the widget is opened (to list devices and models), never when napari starts.

The output layer appears when the first plane is done and fills in plane by
plane; a cancelled run keeps the planes already done in a layer marked partial.
*Preview* decodes only the part of the current plane that is on screen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, PushButton, SpinBox
from napari.layers import Image
from napari.utils.notifications import show_error, show_info

from .intensity import INTENSITY_MODES
from .planning import DEFAULT_CONSISTENCY, OUTLIER_CLAMP, output_size, overlay_placement

if TYPE_CHECKING:
    import napari

SIZE_MODES = ("factor", "pixel size", "output shape")
DTYPES = ("same as input", "float32", "uint16", "uint8")
BROWSE = "Browse..."
PREVIEW_SUFFIX = "DIINN preview"


@dataclass
class RunPlan:
    """Everything one run needs, fixed when it starts (later changes to the controls do not leak in)."""

    layer: Image
    in_yx: tuple[int, int]
    out_yx: tuple[int, int]
    ratio: tuple[float, float]  # real output/input size ratio per axis (Y, X)
    shape: tuple[int, ...]  # of the whole result
    dtype: np.dtype
    model: str
    settings: dict[str, Any] = field(default_factory=dict)  # recorded in layer.metadata["diinn"]

    @property
    def label(self) -> str:
        ry, rx = self.ratio
        return f"x{ry:.3g}" if abs(ry - rx) < 1e-9 else f"x{ry:.3g},{rx:.3g}"


class DIINNWidget(Container):
    """Super-resolve an image layer by any real factor, a target pixel size or an output shape."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        from .devices import available_devices

        self._viewer = napari_viewer
        self._worker = None
        self._progress = None
        self._live = None  # the output layer of the running job
        self._live_trust = None  # and its trust map
        self._model_files: list[str] = []
        self.layer = ComboBox(label="image", choices=self._image_layers, nullable=True)
        self.size_mode = ComboBox(label="size by", choices=SIZE_MODES, value="factor")
        self.factor_y = FloatSpinBox(label="factor Y", value=2.0, min=1.0, max=64.0, step=0.25)
        self.factor_x = FloatSpinBox(label="factor X", value=2.0, min=1.0, max=64.0, step=0.25)
        self.same_factor = CheckBox(text="same factor for Y and X", value=True)
        self.pixel_size = FloatSpinBox(label="target pixel size", value=0.5, min=1e-9, max=1e9, step=0.01)
        self.output_y = SpinBox(label="output Y", value=512, min=1, max=10**6)
        self.output_x = SpinBox(label="output X", value=512, min=1, max=10**6)
        self.model = ComboBox(label="model", choices=self._model_choices, value="auto")
        self.device = ComboBox(label="device", choices=["auto"] + available_devices(), value="auto")
        self.tile_size = SpinBox(label="tile size (0 = auto)", value=0, min=0, max=8192)
        self.intensity = ComboBox(label="intensity", choices=INTENSITY_MODES, value="auto")
        self.out_dtype = ComboBox(label="output dtype", choices=DTYPES, value="same as input")
        self.consistency = SpinBox(label="data consistency", value=DEFAULT_CONSISTENCY, min=0, max=20,
                                   tooltip="back-projection iterations after the network (0 = off): downsampled, "
                                           "the output gives back the input")
        self.trust_map = CheckBox(text="add a trust map layer (where the model disagreed with the data)", value=False)
        self.plane_only = CheckBox(text="only the plane on screen (quick look)", value=False)
        self.info = Label(value="")
        self.preview_button = PushButton(text="Preview (visible region)")
        self.run_button = PushButton(text="Run")
        self.extend([self.layer, self.size_mode, self.factor_y, self.factor_x, self.same_factor, self.pixel_size,
                     self.output_y, self.output_x, self.model, self.device, self.tile_size, self.intensity,
                     self.out_dtype, self.consistency, self.trust_map, self.plane_only, self.info, self.preview_button, self.run_button])
        for w in (self.layer, self.size_mode, self.factor_y, self.factor_x, self.same_factor, self.pixel_size,
                  self.output_y, self.output_x, self.device, self.out_dtype, self.plane_only):
            w.changed.connect(self._update)
        self.model.changed.connect(self._on_model)
        self.run_button.changed.connect(self._run_or_cancel)
        self.preview_button.changed.connect(self._preview_clicked)
        layers = napari_viewer.layers
        layers.events.inserted.connect(self._on_layers_changed)
        layers.events.removed.connect(self._on_layers_changed)
        layers.selection.events.active.connect(self._follow_selection)
        self._on_layers_changed()
        self._follow_selection()
        self._update()

    # ---- choices ---------------------------------------------------------------------------------
    def _image_layers(self, _=None) -> list[Image]:
        return [layer for layer in self._viewer.layers
                if isinstance(layer, Image) and not layer.name.endswith(PREVIEW_SUFFIX)]

    def _on_layers_changed(self, _=None) -> None:
        self.reset_choices()
        if self.layer.value is None:  # e.g. the first image was just opened: take it
            self._follow_selection()

    def _follow_selection(self, _=None) -> None:
        """Preselect the selected image layer, or the only one."""
        self.reset_choices()  # the selection can change before the layer list's events reach us
        images = self._image_layers()
        active = self._viewer.layers.selection.active
        if active is not None and active in images:
            self.layer.value = active
        elif self.layer.value is None and len(images) == 1:
            self.layer.value = images[0]

    def _model_choices(self, _=None) -> list[str]:
        from .weights import available_models

        return ["auto"] + available_models() + self._model_files + [BROWSE]

    def add_model_file(self, path: str) -> None:
        """Offer a user weights file in the model list and select it."""
        if path not in self._model_files:
            self._model_files.append(str(path))
        self.model.reset_choices()
        self.model.value = str(path)

    def _on_model(self, value) -> None:
        if value == BROWSE:
            from qtpy.QtWidgets import QFileDialog

            path, _ = QFileDialog.getOpenFileName(None, "DIINN weights", "", "Weights (*.safetensors)")
            if path:
                self.add_model_file(path)
            else:
                self.model.value = "auto"
        self._update()

    # ---- what will happen ------------------------------------------------------------------------
    @staticmethod
    def _level0(layer: Image):
        return layer.data[0] if layer.multiscale else layer.data

    def _spatial_shape(self, layer: Image) -> tuple[int, ...]:
        data = self._level0(layer)
        return tuple(data.shape[:-1] if layer.rgb else data.shape)

    def plan(self) -> RunPlan:
        """The settings of the next run, read from the controls now. Raises ValueError."""
        layer = self.layer.value
        if layer is None:
            raise ValueError("no image layer: open or select an image first")
        shape = self._spatial_shape(layer)
        if len(shape) < 2:
            raise ValueError(f"layer {layer.name!r} has fewer than 2 spatial axes")
        if self.size_mode.value == "factor":
            factors = (self.factor_y.value, self.factor_y.value if self.same_factor.value else self.factor_x.value)
            out = output_size(shape, factors)
        elif self.size_mode.value == "pixel size":
            target = self.pixel_size.value
            out = output_size(shape, (layer.scale[-2] / target, layer.scale[-1] / target))
        else:
            out = output_size(shape, output_shape=(self.output_y.value, self.output_x.value))
        data = self._level0(layer)
        dtype = np.dtype(data.dtype) if self.out_dtype.value == "same as input" else np.dtype(self.out_dtype.value)
        dtype = np.dtype(np.float32) if dtype.kind == "f" else dtype
        leading = (1,) * (len(shape) - 2) if self.plane_only.value else shape[:-2]
        model = "rgb" if layer.rgb else "gray"
        if self.model.value not in ("auto", BROWSE, None):
            model = self.model.value
        colour = (data.shape[-1],) if layer.rgb else ()
        ratio = (out[0] / shape[-2], out[1] / shape[-1])
        settings = {"source": layer.name, "model": str(model), "size_ratio": list(ratio), "intensity": self.intensity.value,
                    "device": self.device.value, "tile_size": self.tile_size.value or None,
                    "output_dtype": str(dtype), "consistency": int(self.consistency.value),
                    "outlier_clamp": list(OUTLIER_CLAMP),
                    "trust_map": bool(self.trust_map.value), "plane_only": bool(self.plane_only.value)}
        return RunPlan(layer, tuple(shape[-2:]), out, ratio, tuple(leading) + out + colour, dtype, model, settings)

    def _engine_kwargs(self, plan: RunPlan) -> dict:
        s = plan.settings
        return dict(output_shape=plan.out_yx, model=plan.model, device=s["device"], rgb=plan.layer.rgb,
                    tile_size=s["tile_size"], intensity=s["intensity"], out_dtype=plan.dtype,
                    consistency=s["consistency"], return_trust=s["trust_map"])

    def _update(self, _=None) -> None:
        mode = self.size_mode.value
        self.factor_y.visible = mode == "factor"
        self.factor_x.visible = mode == "factor" and not self.same_factor.value
        self.same_factor.visible = mode == "factor"
        self.pixel_size.visible = mode == "pixel size"
        self.output_y.visible = self.output_x.visible = mode == "output shape"
        try:
            plan = self.plan()
        except ValueError as err:
            self.info.value = str(err)
            return
        from .devices import pick_device

        nbytes = int(np.prod(plan.shape, dtype=np.int64)) * plan.dtype.itemsize
        device = pick_device(self.device.value) if self.device.value == "auto" else self.device.value
        self.info.value = (f"output {' x '.join(map(str, plan.shape))} {plan.dtype}, "
                           f"{nbytes / 2**20:,.1f} MiB, on {device}")

    # ---- running ---------------------------------------------------------------------------------
    def _run_or_cancel(self, _=None) -> None:
        if self._worker is not None:
            self._worker.quit()  # a generator worker stops at its next yield: between tiles
            self.info.value = "cancelling..."
            return
        plan = self._plan_or_notify()
        if plan is not None:
            self.start(plan)

    def _plan_or_notify(self) -> RunPlan | None:
        try:
            return self.plan()
        except ValueError as err:
            show_error(f"DIINN: {err}")
            return None

    def start(self, plan: RunPlan, start_thread: bool = True):
        """Run ``plan`` (from :meth:`plan`) in a thread worker; returns the worker.

        With ``start_thread=False`` the caller connects to the worker's signals
        first and then calls ``worker.start()`` (no signal can be missed).
        """
        from napari.qt.threading import thread_worker

        data = self._level0(plan.layer)
        index = self._current_index(plan.layer) if plan.settings["plane_only"] else None
        if index is not None:
            data = data[tuple(slice(i, i + 1) for i in index)]
        # connecting "errored" here keeps the worker from re-raising: errors become notifications
        worker = thread_worker(_upscale_in_steps, start_thread=False, connect={"errored": self._on_error})(
            data, self._engine_kwargs(plan))
        worker.yielded.connect(lambda value: self._on_yielded(worker, value, plan, index))
        worker.returned.connect(lambda value: self._on_done(plan, index, *value))
        worker.aborted.connect(lambda: self._on_stopped(plan, "cancelled"))
        worker.errored.connect(lambda _: self._on_stopped(plan, "failed"))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._live = self._live_trust = None
        self.run_button.text = "Cancel"
        self.preview_button.enabled = False
        if start_thread:
            worker.start()
        return worker

    def _current_index(self, layer: Image) -> tuple[int, ...]:
        point = layer.world_to_data(self._viewer.dims.point)
        n_leading = layer.ndim - 2
        shape = self._spatial_shape(layer)
        return tuple(int(np.clip(round(point[i]), 0, shape[i] - 1)) for i in range(n_leading))

    def _on_yielded(self, worker, value, plan: RunPlan, index) -> None:
        from napari.utils import progress

        if worker is not self._worker:  # a late signal of a run that has already ended
            return
        if self._live is not None and self._live.metadata["diinn"]["partial"] is False:
            return  # the result has already arrived in full
        done, total, result, trust, planes_done = value
        if self._progress is None:
            self._progress = progress(total=total, desc="DIINN super-resolution")
        self._progress.update(done - self._progress.n)
        if result is None:
            return
        if self._live is None:  # the first plane is done: show the layer now, fill it in as planes finish
            self._remove_preview(plan.layer)
            self._live = self._viewer.add_image(result, **self._layer_kwargs(plan, index, result))
            if trust is not None:
                self._live_trust = self._viewer.add_image(trust, **self._trust_kwargs(plan, index))
        else:
            self._live.refresh()
            if self._live_trust is not None:
                self._live_trust.refresh()
        meta = self._live.metadata["diinn"]
        meta["planes_done"] = max(meta["planes_done"], planes_done)  # signals may arrive out of order

    def _layer_kwargs(self, plan: RunPlan, index, result: np.ndarray) -> dict:
        layer = plan.layer
        scale, translate = self._placement(plan, index)
        n_planes = int(np.prod(result.shape[: result.ndim - (3 if layer.rgb else 2)], dtype=np.int64))
        meta = {**plan.settings, "output_shape": list(result.shape), "planes_total": n_planes, "planes_done": 0,
                "partial": True}
        return dict(name=f"{layer.name} {plan.label} DIINN", scale=scale, translate=translate,
                    metadata={**layer.metadata, "diinn": meta}, **_looks_like(layer, result))

    def _trust_kwargs(self, plan: RunPlan, index) -> dict:
        scale, translate = self._placement(plan, index)
        return dict(name=f"{plan.layer.name} {plan.label} DIINN trust", scale=scale, translate=translate,
                    colormap="magma", blending="additive", opacity=0.6, visible=True,
                    metadata={"diinn": {**plan.settings, "trust_map": "magnitude of the back-projection correction "
                                        "(image units): large where the model disagreed with the measured input"}})

    def _placement(self, plan: RunPlan, index) -> tuple[list[float], list[float]]:
        layer = plan.layer
        n = layer.ndim
        scale, translate = overlay_placement(layer.scale, layer.translate, (1.0,) * (n - 2) + plan.ratio)
        if index is not None:  # one plane: place it at its own Z/T position
            translate[: n - 2] = [t + i * s for t, i, s in zip(layer.translate[: n - 2], index, layer.scale[: n - 2])]
        return scale, translate

    def _on_done(self, plan: RunPlan, index, result: np.ndarray | None, trust: np.ndarray | None) -> None:
        """The whole result is there: make sure the layer shows all of it (plane signals may lag behind)."""
        if result is None:
            return
        if self._live is None:
            self._remove_preview(plan.layer)
            self._live = self._viewer.add_image(result, **self._layer_kwargs(plan, index, result))
            if trust is not None:
                self._live_trust = self._viewer.add_image(trust, **self._trust_kwargs(plan, index))
        meta = self._live.metadata["diinn"]
        meta["partial"], meta["planes_done"] = False, meta["planes_total"]
        self._live.refresh()
        if self._live_trust is not None:
            self._live_trust.refresh()

    def _on_stopped(self, plan: RunPlan, why: str) -> None:
        """Cancelled or failed: keep the planes already done, in a layer that says it is partial."""
        if self._live is None:
            if why == "cancelled":
                show_info("DIINN: cancelled")
            return
        meta = self._live.metadata["diinn"]
        self._live.name = f"{self._live.name} (partial: {meta['planes_done']} of {meta['planes_total']} planes)"
        meta["stopped"] = why
        show_info(f"DIINN: {why}; kept the {meta['planes_done']} finished planes in {self._live.name!r}")

    def _on_error(self, err: Exception) -> None:
        show_error(f"DIINN super-resolution failed: {err}")

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
        self._progress = None
        self._worker = None
        self.run_button.text = "Run"
        self.preview_button.enabled = True
        self._update()

    # ---- preview of the visible region ------------------------------------------------------------
    def _preview_clicked(self, _=None) -> None:
        plan = self._plan_or_notify()
        if plan is not None:
            self.preview(plan)

    def preview_window(self, plan: RunPlan) -> tuple[int, int, int, int]:
        """The output window (y0, y1, x0, x1) that covers what the canvas shows of the layer.

        At most as many output pixels per axis as the canvas has screen pixels
        (centred on the view), so a preview costs about one screenful.
        """
        h, w = plan.in_yx
        H, W = plan.out_yx
        corners = np.asarray(plan.layer.corner_pixels)[:, -2:]
        if plan.layer.multiscale:  # corner pixels are in the displayed level's coordinates
            level = plan.layer.data_level
            corners = corners * (np.asarray(plan.layer.downsample_factors[level])[-2:])
        lo = np.clip(np.floor(corners[0]), 0, [h - 1, w - 1]).astype(int)
        hi = np.clip(np.ceil(corners[1]) + 1, lo + 1, [h, w]).astype(int)
        if np.all(hi - lo <= 1):  # never drawn (e.g. hidden canvas): take the whole plane
            lo, hi = np.array([0, 0]), np.array([h, w])
        window = []
        for axis, (n_in, n_out) in enumerate(((h, H), (w, W))):
            a = int(np.floor(lo[axis] * n_out / n_in))
            b = int(np.ceil(hi[axis] * n_out / n_in))
            budget = max(64, int(self._viewer.canvas.size[axis]))
            if b - a > budget:
                middle = (a + b) // 2
                a, b = middle - budget // 2, middle - budget // 2 + budget
            window += [max(0, a), min(n_out, b)]
        return tuple(window)

    def preview(self, plan: RunPlan, start_thread: bool = True):
        """Decode the visible part of the current plane in a worker; shown as a temporary layer."""
        from napari.qt.threading import thread_worker

        layer = plan.layer
        index = self._current_index(layer)
        plane = self._level0(layer)[index]
        window = self.preview_window(plan)
        kwargs = {k: v for k, v in self._engine_kwargs(plan).items() if k not in ("tile_size", "return_trust")}
        worker = thread_worker(_preview, start_thread=False, connect={"errored": self._on_error})(plane, window, kwargs)
        worker.returned.connect(lambda result: self._show_preview(plan, index, window, result))
        self.info.value = f"preview of output rows {window[0]}:{window[1]}, columns {window[2]}:{window[3]}..."
        if start_thread:
            worker.start()
        return worker

    def _show_preview(self, plan: RunPlan, index, window, result) -> None:
        import time

        image, seconds = result
        layer = plan.layer
        self._remove_preview(layer)
        scale, translate = self._placement(plan, index)  # the current plane's Z/T position
        translate[-2] += window[0] * scale[-2]
        translate[-1] += window[2] * scale[-1]
        data = image.reshape((1,) * (layer.ndim - 2) + image.shape)
        meta = {**plan.settings, "preview_window": list(window), "seconds": seconds, "made": time.time()}
        self._viewer.add_image(data, name=f"{layer.name} {PREVIEW_SUFFIX}", scale=scale, translate=translate,
                               metadata={"diinn": meta}, **_looks_like(layer, image))
        self.info.value = f"preview: {image.shape[0]} x {image.shape[1]} px in {seconds:.1f} s"

    def _remove_preview(self, layer: Image) -> None:
        name = f"{layer.name} {PREVIEW_SUFFIX}"
        if name in self._viewer.layers:
            self._viewer.layers.remove(name)


def _looks_like(source: Image, data: np.ndarray) -> dict:
    """Display settings that make a result look like its source: units, axis labels, colours, contrast."""
    kwargs = dict(rgb=source.rgb, blending=source.blending)
    for attr in ("units", "axis_labels"):
        if hasattr(source, attr):
            kwargs[attr] = getattr(source, attr)
    if not source.rgb:
        kwargs.update(colormap=source.colormap, gamma=source.gamma)
        # another dtype means other numbers: take the contrast from the data (all of it, not one plane)
        kwargs["contrast_limits"] = (source.contrast_limits if data.dtype == np.dtype(source.dtype)
                                     else _value_range(data))
    return kwargs


def _value_range(data: np.ndarray) -> tuple[float, float]:
    lo, hi = float(np.min(data)), float(np.max(data))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _upscale_in_steps(data, kwargs: dict):
    """Generator run by the thread worker.

    Yields ``(done, total, result, trust, planes_done)`` per tile; ``result``
    (the whole output array, filled so far) and ``trust`` (its trust map, if
    asked for) only when a plane has just finished. Returns ``(result, trust)``.
    """
    from .engine import upscale_steps

    result = trust = None
    planes_done = 0
    for step in upscale_steps(data, **kwargs):
        if step.plane is None:
            yield step.done, step.total, None, None, planes_done
            continue
        if result is None:
            leading = tuple(data.shape[: data.ndim - (3 if kwargs["rgb"] else 2)])
            result = np.zeros(leading + step.plane.shape, step.plane.dtype)
            if step.trust is not None:
                trust = np.zeros(leading + step.trust.shape, np.float32)
        result[step.index] = step.plane
        if trust is not None:
            trust[step.index] = step.trust
        planes_done += 1
        yield step.done, step.total, result, trust, planes_done
    return result, trust


def _preview(plane, window, kwargs: dict):
    """Worker: decode one window of one plane; returns (image, seconds)."""
    import time

    from .engine import upscale_window

    start = time.perf_counter()
    image = upscale_window(np.asarray(plane), kwargs.pop("output_shape"), window, **kwargs)
    return image, time.perf_counter() - start
