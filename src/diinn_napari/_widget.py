"""The napari widget: pick a layer and a size, run DIINN in a thread, get an overlaid layer.

A page of glue over :func:`diinn_napari.engine.upscale_steps`. torch is imported
when the widget is opened (to list devices and models), never when napari starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, PushButton, SpinBox
from napari.layers import Image
from napari.utils.notifications import show_error, show_info

from .intensity import INTENSITY_MODES
from .planning import output_size, overlay_placement

if TYPE_CHECKING:
    import napari

SIZE_MODES = ("factor", "pixel size", "output shape")
DTYPES = ("same as input", "float32", "uint16", "uint8")
BROWSE = "Browse..."


class DIINNWidget(Container):
    """Super-resolve an image layer by any real factor, a target pixel size or an output shape."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        from .devices import available_devices

        self._viewer = viewer
        self._worker = None
        self._progress = None
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
        self.plane_only = CheckBox(text="only the plane on screen (quick look)", value=False)
        self.info = Label(value="")
        self.run_button = PushButton(text="Run")
        self.extend([self.layer, self.size_mode, self.factor_y, self.factor_x, self.same_factor, self.pixel_size,
                     self.output_y, self.output_x, self.model, self.device, self.tile_size, self.intensity,
                     self.out_dtype, self.plane_only, self.info, self.run_button])
        for w in (self.layer, self.size_mode, self.factor_y, self.factor_x, self.same_factor, self.pixel_size,
                  self.output_y, self.output_x, self.device, self.out_dtype, self.plane_only):
            w.changed.connect(self._update)
        self.model.changed.connect(self._on_model)
        self.run_button.changed.connect(self._run_or_cancel)
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        self.reset_choices()
        self._update()

    # ---- choices ---------------------------------------------------------------------------------
    def _image_layers(self, _=None) -> list[Image]:
        return [layer for layer in self._viewer.layers if isinstance(layer, Image)]

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
    def _spatial_shape(self, layer: Image) -> tuple[int, ...]:
        data = layer.data[0] if layer.multiscale else layer.data
        return tuple(data.shape[:-1] if layer.rgb else data.shape)

    def plan(self) -> dict:
        """The settings of the next run: output (Y, X), the real size ratio, model, dtype. Raises ValueError."""
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
        data = layer.data[0] if layer.multiscale else layer.data
        dtype = np.dtype(data.dtype) if self.out_dtype.value == "same as input" else np.dtype(self.out_dtype.value)
        dtype = np.dtype(np.float32) if dtype.kind == "f" else dtype
        leading = (1,) * (len(shape) - 2) if self.plane_only.value else shape[:-2]
        model = "rgb" if layer.rgb else "gray"
        if self.model.value not in ("auto", BROWSE, None):
            model = self.model.value
        return {"layer": layer, "in": shape[-2:], "out": out, "ratio": (out[0] / shape[-2], out[1] / shape[-1]),
                "shape": tuple(leading) + out + ((3,) if layer.rgb else ()), "dtype": dtype, "model": model}

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

        nbytes = int(np.prod(plan["shape"], dtype=np.int64)) * plan["dtype"].itemsize
        device = pick_device(self.device.value) if self.device.value == "auto" else self.device.value
        self.info.value = (f"output {' x '.join(map(str, plan['shape']))} {plan['dtype']}, "
                           f"{nbytes / 2**20:,.1f} MiB, on {device}")

    # ---- running ---------------------------------------------------------------------------------
    def _run_or_cancel(self, _=None) -> None:
        if self._worker is not None:
            self._worker.quit()  # a generator worker stops at its next yield: between tiles
            self.info.value = "cancelling..."
            return
        try:
            plan = self.plan()
        except ValueError as err:
            show_error(f"DIINN: {err}")
            return
        self.start(plan)

    def start(self, plan: dict, start_thread: bool = True):
        """Run ``plan`` (from :meth:`plan`) in a thread worker; returns the worker.

        With ``start_thread=False`` the caller connects to the worker's signals
        first and then calls ``worker.start()`` (no signal can be missed).
        """
        from napari.qt.threading import thread_worker

        layer = plan["layer"]
        data = layer.data[0] if layer.multiscale else layer.data
        index = self._current_index(layer) if self.plane_only.value else None
        if index is not None:
            data = data[tuple(slice(i, i + 1) for i in index)]
        kwargs = dict(output_shape=plan["out"], model=plan["model"], device=self.device.value, rgb=layer.rgb,
                      tile_size=self.tile_size.value or None, intensity=self.intensity.value, out_dtype=plan["dtype"])
        # connecting "errored" here keeps the worker from re-raising: errors become notifications
        worker = thread_worker(_upscale_in_steps, start_thread=False, connect={"errored": self._on_error})(data, kwargs)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda result: self._add_result(result, plan, index))
        worker.aborted.connect(lambda: show_info("DIINN: cancelled"))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.text = "Cancel"
        if start_thread:
            worker.start()
        return worker

    def _current_index(self, layer: Image) -> tuple[int, ...]:
        point = layer.world_to_data(self._viewer.dims.point)
        n_leading = layer.ndim - 2
        shape = self._spatial_shape(layer)
        return tuple(int(np.clip(round(point[i]), 0, shape[i] - 1)) for i in range(n_leading))

    def _on_progress(self, value) -> None:
        from napari.utils import progress

        done, total = value
        if self._progress is None:
            self._progress = progress(total=total, desc="DIINN super-resolution")
        self._progress.update(done - self._progress.n)

    def _on_error(self, err: Exception) -> None:
        show_error(f"DIINN super-resolution failed: {err}")

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
        self._progress = None
        self._worker = None
        self.run_button.text = "Run"
        self._update()

    def _add_result(self, result: np.ndarray, plan: dict, index) -> None:
        layer = plan["layer"]
        n = layer.ndim
        ratio = (1.0,) * (n - 2) + plan["ratio"]
        scale, translate = overlay_placement(layer.scale, layer.translate, ratio)
        if index is not None:  # one plane: place it at its own Z/T position
            translate[: n - 2] = [t + i * s for t, i, s in zip(layer.translate[: n - 2], index, layer.scale[: n - 2])]
        factor = plan["ratio"]
        label = f"x{factor[0]:.3g}" if abs(factor[0] - factor[1]) < 1e-9 else f"x{factor[0]:.3g},{factor[1]:.3g}"
        kwargs = dict(name=f"{layer.name} {label} DIINN", scale=scale, translate=translate, rgb=layer.rgb,
                      blending=layer.blending, metadata={**layer.metadata, "diinn": {
                          "source": layer.name, "model": str(plan["model"]), "size_ratio": list(plan["ratio"]),
                          "output_shape": list(result.shape), "intensity": self.intensity.value,
                          "device": self.device.value, "plane_only": index is not None}})
        for attr in ("units", "axis_labels"):
            if hasattr(layer, attr):
                kwargs[attr] = getattr(layer, attr)
        if not layer.rgb:
            kwargs.update(colormap=layer.colormap, gamma=layer.gamma)
            if result.dtype == np.dtype(layer.dtype):
                kwargs["contrast_limits"] = layer.contrast_limits
        self._viewer.add_image(result, **kwargs)


def _upscale_in_steps(data, kwargs: dict):
    """Generator run by the thread worker: yields (done, total) per tile, returns the stacked result."""
    from .engine import upscale_steps

    result = None
    for step in upscale_steps(data, **kwargs):
        if step.plane is not None:
            if result is None:
                leading = tuple(data.shape[: data.ndim - (3 if kwargs["rgb"] else 2)])
                result = np.empty(leading + step.plane.shape, step.plane.dtype)
            result[step.index] = step.plane
        yield step.done, step.total
    return result


def make_widget(napari_viewer: napari.viewer.Viewer) -> DIINNWidget:
    """npe2 widget command."""
    return DIINNWidget(napari_viewer)
