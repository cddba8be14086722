"""The napari widget: pick a layer and a size, run DIINN in a thread, get an overlaid layer.

A page of glue over :func:`diinn_napari.engine.upscale_steps`. napari builds it
from the manifest (``DIINNWidget(napari_viewer=...)``) when a user opens
*Plugins > DIINN super-resolution* or *Layers > Transform*. torch is imported
when the widget is opened (to list devices and models), never when napari starts.

The output layer appears when the first plane is done and fills in plane by
plane; a cancelled run keeps the planes already done in a layer marked partial.
*Preview* decodes only the part of the current plane that is on screen.

The size mode "isotropic voxels" resamples the Z axis of a stack to its XY
pixel size (or a target Z step) with :func:`diinn_napari.isotropic.isotropic_steps`,
optionally after :func:`diinn_napari.isotropic.adapt` on the stack itself; its
output fills in block by block of Y rows.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, PushButton, SpinBox
from napari.layers import Image
from napari.utils.notifications import show_error, show_info

from .intensity import INTENSITY_MODES
from .settings import DEFAULT_CONSISTENCY, PRECISIONS, RunSettings, overlay_placement

if TYPE_CHECKING:
    import napari

ISOTROPIC = "isotropic voxels"
SIZE_MODES = ("factor", "pixel size", "output shape", ISOTROPIC)
DTYPES = ("same as input", "float32", "uint16", "uint8")
BROWSE = "Browse..."
PREVIEW_SUFFIX = "DIINN preview"
# What a run's progress counts, and how a partial layer's name says it: the plane-wise modes finish one
# (leading-index) plane at a time, isotropic voxels one block of Y rows of one volume at a time.
UNIT_WORDS = {"planes": "planes", "rows": "Y rows"}
# The two parts of an isotropic run with adaptation, as the progress bar names them.
PHASES = ("adapting to the stack", "super-resolution")


@dataclass
class RunPlan:
    """Everything one run needs, fixed when it starts (later changes to the controls do not leak in)."""

    layer: Image
    in_yx: tuple[int, int]
    out_yx: tuple[int, int]
    ratio: tuple[float, float]  # real output/input size ratio per axis (Y, X)
    shape: tuple[int, ...]  # of the whole result
    dtype: np.dtype
    run: RunSettings  # what the engine does, its size resolved to out_yx
    record: dict[str, Any] = field(default_factory=dict)  # recorded in layer.metadata["diinn"]
    trust_map: bool = False  # also show the trust map (plane-wise modes)
    plane_only: bool = False  # only the plane on screen (plane-wise modes)
    unit: str = "planes"  # what finishes at a time: "planes" or (isotropic voxels) "rows"
    units_total: int = 1
    # isotropic voxels: spacing (dz, dy, dx), target (None = XY pixel size), z_out (the output Z step),
    # adapt_steps, axial_sigma; None for the plane-wise modes
    isotropic: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        if self.isotropic is not None:
            return f"isotropic z{self.isotropic['z_out']:.3g}"
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
        self._phase = None  # what the progress bar counts (PHASES)
        self._live = None  # the output layer of the running job
        self._live_trust = None  # and its trust map
        self._cancel: threading.Event | None = None  # stops an adaptation running in its own thread
        self._units_done = 0  # planes (or Y rows) of the running job known to be finished
        self._adding = False  # the output layer is being added (napari may handle other signals meanwhile)
        self._pending: list = []  # run-end handlers that arrived while it was being added
        self._model_files: list[str] = []
        self.layer = ComboBox(label="image", choices=self._image_layers, nullable=True)
        self.size_mode = ComboBox(label="size by", choices=SIZE_MODES, value="factor")
        self.factor_y = FloatSpinBox(label="factor Y", value=2.0, min=1.0, max=64.0, step=0.25)
        self.factor_x = FloatSpinBox(label="factor X", value=2.0, min=1.0, max=64.0, step=0.25)
        self.same_factor = CheckBox(text="same factor for Y and X", value=True)
        self.pixel_size = FloatSpinBox(label="target pixel size", value=0.5, min=1e-9, max=1e9, step=0.01)
        self.output_y = SpinBox(label="output Y", value=512, min=1, max=10**6)
        self.output_x = SpinBox(label="output X", value=512, min=1, max=10**6)
        self.z_target = FloatSpinBox(label="target Z step (0 = XY pixel size)", value=0.0, min=0.0, max=1e9,
                                     step=0.001, tooltip="output Z step in the layer's units; output plane k lies at "
                                                         "the first plane's Z + k x this step")
        self.z_consistency = SpinBox(label="Z data consistency", value=0, min=0, max=20,
                                     tooltip="back-projection steps along Z (0 = off, the default: on axially blurred "
                                             "stacks it puts the blur back)")
        self.adapt = CheckBox(text="adapt to this stack first (self-supervised, on its XY planes)", value=False)
        self.adapt_steps = SpinBox(label="adaptation steps", value=300, min=1, max=100000,
                                   tooltip="fine-tuning steps on the stack's XY planes degraded along one axis "
                                           "before reconstructing")
        self.model = ComboBox(label="model", choices=self._model_choices, value="auto")
        self.device = ComboBox(label="device", choices=["auto"] + available_devices(), value="auto")
        self.tile_size = SpinBox(label="tile size (0 = auto)", value=0, min=0, max=8192)
        self.intensity = ComboBox(label="intensity", choices=INTENSITY_MODES, value="auto")
        self.out_dtype = ComboBox(label="output dtype", choices=DTYPES, value="same as input")
        self.precision = ComboBox(label="precision", choices=PRECISIONS, value="fp32",
                                  tooltip="fp32: exact (default). bf16: about 1.5x faster on CPUs with avx512_bf16/AMX "
                                          "and on CUDA, within 0.01 dB; slower on CPUs without them. fp16: CUDA only")
        self.consistency = SpinBox(label="data consistency", value=DEFAULT_CONSISTENCY, min=0, max=20,
                                   tooltip="back-projection iterations after the network (0 = off): downsampled, "
                                           "the output gives back the input")
        self.trust_map = CheckBox(text="add a trust map layer (where the model disagreed with the data)", value=False)
        self.plane_only = CheckBox(text="only the plane on screen (quick look)", value=False)
        self.info = Label(value="")
        self.preview_button = PushButton(text="Preview (visible region)")
        self.run_button = PushButton(text="Run")
        self.extend([self.layer, self.size_mode, self.factor_y, self.factor_x, self.same_factor, self.pixel_size,
                     self.output_y, self.output_x, self.z_target, self.z_consistency, self.adapt, self.adapt_steps,
                     self.model, self.device, self.tile_size, self.intensity,
                     self.out_dtype, self.precision, self.consistency, self.trust_map, self.plane_only, self.info, self.preview_button, self.run_button])
        for w in (self.layer, self.size_mode, self.factor_y, self.factor_x, self.same_factor, self.pixel_size,
                  self.output_y, self.output_x, self.z_target, self.adapt, self.adapt_steps, self.device,
                  self.out_dtype, self.plane_only):
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
        if self.size_mode.value == ISOTROPIC:
            return self._isotropic_plan(layer, shape)
        if self.size_mode.value == "factor":
            size = {"scale": (self.factor_y.value, self.factor_y.value if self.same_factor.value else self.factor_x.value)}
        elif self.size_mode.value == "pixel size":
            size = {"pixel_size": self.pixel_size.value}
        else:
            size = {"output_shape": (self.output_y.value, self.output_x.value)}
        run = self._run_settings(layer, int(self.consistency.value)).replace(**size)
        out = run.output_yx(shape[-2:], input_pixel_size=tuple(layer.scale[-2:]))
        run = run.replace(output_shape=out)  # the size this run resolved to
        data = self._level0(layer)
        dtype = run.output_dtype(data.dtype)
        leading = (1,) * (len(shape) - 2) if self.plane_only.value else shape[:-2]
        colour = (data.shape[-1],) if layer.rgb else ()
        ratio = (out[0] / shape[-2], out[1] / shape[-1])
        record = {"source": layer.name, "size_mode": self.size_mode.value, "size_ratio": list(ratio), **run.record(),
                  "output_dtype": str(dtype), "trust_map": bool(self.trust_map.value),
                  "plane_only": bool(self.plane_only.value)}
        return RunPlan(layer, tuple(shape[-2:]), out, ratio, tuple(leading) + out + colour, dtype, run, record,
                       trust_map=bool(self.trust_map.value), plane_only=bool(self.plane_only.value),
                       units_total=int(np.prod(leading, dtype=np.int64)))

    def _run_settings(self, layer: Image, consistency: int) -> RunSettings:
        """The engine settings the controls ask for, without a size; the model follows the layer (gray or RGB)."""
        model = "rgb" if layer.rgb else "gray"
        if self.model.value not in ("auto", BROWSE, None):
            model = self.model.value
        same = self.out_dtype.value == "same as input"
        return RunSettings(model=model, device=self.device.value, tile_size=self.tile_size.value or None,
                           intensity=self.intensity.value, out_dtype=None if same else self.out_dtype.value,
                           precision=self.precision.value, consistency=consistency)

    def _isotropic_plan(self, layer: Image, shape: tuple[int, ...]) -> RunPlan:
        """Isotropic voxels: Z (third axis from the end) resampled to the XY pixel size or the target Z step."""
        from .isotropic import default_axial_sigma, isotropic_shape, output_spacing

        name = layer.name
        if layer.rgb:
            raise ValueError(f"layer {name!r} is RGB: isotropic voxels needs a single-channel Z stack "
                             "(split the colour channels into separate layers first)")
        if len(shape) < 3:
            raise ValueError(f"layer {name!r} is 2D {tuple(shape)}: isotropic voxels needs a Z stack "
                             "(axes ..., Z, Y, X); use the factor, pixel size or output shape modes for 2D images")
        if shape[-3] < 2:
            raise ValueError(f"layer {name!r} has {shape[-3]} Z plane: isotropic voxels needs at least 2")
        dz, dy, dx = (float(s) for s in layer.scale[-3:])
        target = float(self.z_target.value) or None
        if target is None and dz <= min(dy, dx) * (1 + 1e-6):
            raise ValueError(
                f"layer {name!r} has no Z anisotropy: its Z scale {dz:g} is not larger than its Y/X scale "
                f"{dy:g}, {dx:g}. Set the layer's scale to the stack's voxel size (dz, dy, dx), e.g. in the console "
                f"viewer.layers[{name!r}].scale = (2.0, 0.5, 0.5) for dz=2, dy=dx=0.5, or give a target Z step "
                f"smaller than {dz:g}")
        spacing = (dz, dy, dx)
        try:
            out_shape = isotropic_shape(shape, spacing, target)
            z_out = output_spacing(spacing, target)[0]
        except ValueError as err:
            raise ValueError(f"layer {name!r} (scale {dz:g}, {dy:g}, {dx:g}): {err}") from None
        run = self._run_settings(layer, int(self.z_consistency.value))
        dtype = run.output_dtype(self._level0(layer).dtype)
        steps = int(self.adapt_steps.value) if self.adapt.value else 0
        sigma = default_axial_sigma(dz / min(dy, dx)) if steps else None
        iso = {"spacing": spacing, "target": target, "z_out": z_out, "adapt_steps": steps, "axial_sigma": sigma}
        record = {"source": name, "size_mode": ISOTROPIC, **run.record(), "spacing_in": list(spacing),
                  "z_step_in": dz, "z_step_out": z_out, "target_z_step": target,
                  "z_planes": [int(shape[-3]), int(out_shape[-3])], "fusion": "mean", "output_dtype": str(dtype),
                  "adapt_steps": steps, "axial_sigma": sigma}
        yx = tuple(shape[-2:])
        return RunPlan(layer, yx, yx, (1.0, 1.0), tuple(out_shape), dtype, run, record, unit="rows",
                       units_total=int(np.prod(shape[:-3], dtype=np.int64)) * int(shape[-2]), isotropic=iso)

    def _update(self, _=None) -> None:
        mode = self.size_mode.value
        iso = mode == ISOTROPIC
        self.factor_y.visible = mode == "factor"
        self.factor_x.visible = mode == "factor" and not self.same_factor.value
        self.same_factor.visible = mode == "factor"
        self.pixel_size.visible = mode == "pixel size"
        self.output_y.visible = self.output_x.visible = mode == "output shape"
        # isotropic voxels has its own consistency (default 0) and works on whole volumes: no plane, trust or preview
        self.z_target.visible = self.z_consistency.visible = self.adapt.visible = iso
        self.adapt_steps.visible = iso and self.adapt.value
        self.consistency.visible = self.trust_map.visible = self.plane_only.visible = not iso
        self.preview_button.enabled = self._worker is None and not iso
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
        if plan.isotropic is not None:
            z_in, z_out = plan.record["z_planes"]
            self.info.value += (f"; Z step {plan.isotropic['spacing'][0]:g} -> {plan.isotropic['z_out']:g} "
                                f"({z_in} -> {z_out} planes)")
            if plan.isotropic["adapt_steps"]:
                self.info.value += f", after {plan.isotropic['adapt_steps']} adaptation steps"

    # ---- running ---------------------------------------------------------------------------------
    def _run_or_cancel(self, _=None) -> None:
        if self._worker is not None:
            self._worker.quit()  # a generator worker stops at its next yield: between tiles
            if self._cancel is not None:
                self._cancel.set()  # and an adaptation in its own thread at its next step
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
        self._cancel = None
        if plan.isotropic is not None:
            index = None
            self._cancel = threading.Event()
            # connecting "errored" here keeps the worker from re-raising: errors become notifications
            worker = thread_worker(_isotropic_in_steps, start_thread=False, connect={"errored": self._on_error})(
                data, plan.shape, plan.isotropic, plan.run, self._cancel)
        else:
            index = self._current_index(plan.layer) if plan.plane_only else None
            if index is not None:
                data = data[tuple(slice(i, i + 1) for i in index)]
            worker = thread_worker(_upscale_in_steps, start_thread=False, connect={"errored": self._on_error})(
                data, plan.run, plan.layer.rgb, plan.trust_map)
        worker.yielded.connect(lambda value: self._on_yielded(worker, value, plan, index))
        worker.returned.connect(lambda value: self._on_done(plan, index, *value))
        worker.aborted.connect(lambda: self._on_stopped(plan, "cancelled"))
        worker.errored.connect(lambda _: self._on_stopped(plan, "failed"))
        worker.finished.connect(lambda: self._on_finished(plan))
        self._worker = worker
        self._live = self._live_trust = None
        self._units_done, self._pending = 0, []
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
        # Drawing a layer or a progress bar can run Qt's event loop, which then handles the worker's later
        # signals (even the end of the run) inside this call: the result is recorded before anything is
        # drawn, and the progress bar last.
        if worker is not self._worker:  # a late signal of a run that has already ended
            return
        if self._live is not None and self._live.metadata["diinn"]["partial"] is False:
            return  # the result has already arrived in full
        done, total, result, trust, units_done = value[:5]
        phase = value[5] if len(value) > 5 else PHASES[1]  # isotropic voxels: adaptation first, if asked for
        if result is not None:
            self._units_done = max(self._units_done, units_done)  # signals may arrive out of order
            if self._live is None:  # the first plane is done: show the layer now, fill it in as planes finish
                self._show_result(plan, index, result, trust)
            else:
                meta = self._live.metadata["diinn"]
                meta[f"{plan.unit}_done"] = max(meta[f"{plan.unit}_done"], self._units_done)
                self._live.refresh()
                if self._live_trust is not None:
                    self._live_trust.refresh()
        self._show_progress(worker, done, total, phase)

    def _show_progress(self, worker, done: int, total: int, phase: str) -> None:
        from napari.utils import progress

        if worker is not self._worker:  # the run ended while the result was drawn: no new bar
            return
        if self._progress is None or phase != self._phase:
            if self._progress is not None:
                self._progress.close()
            self._progress, self._phase = progress(total=total, desc=f"DIINN {phase}"), phase
        self._progress.update(done - self._progress.n)

    def _show_result(self, plan: RunPlan, index, result: np.ndarray, trust: np.ndarray | None) -> None:
        """Add the output layer (and its trust map); signals handled while napari adds it wait until it is there.

        Adding the first layer can run Qt's event loop (napari draws it), which
        delivers the worker's next signals inside this call: a cancel or the
        end of the run must then apply to the layer being added, not find none.
        """
        if self._adding:  # a signal delivered while the layer is being added: it shows this same array
            return
        self._adding = True
        try:
            self._remove_preview(plan.layer)
            self._live = self._viewer.add_image(result, **self._layer_kwargs(plan, index, result))
            if trust is not None:
                self._live_trust = self._viewer.add_image(trust, **self._trust_kwargs(plan, index))
        finally:
            self._adding = False
        meta = self._live.metadata["diinn"]
        meta[f"{plan.unit}_done"] = max(meta[f"{plan.unit}_done"], self._units_done)
        pending, self._pending = self._pending, []
        for call in pending:
            call()
        if self._worker is None:  # the run ended (handled in a nested event loop) before this layer existed
            self._mark_unended(plan)

    def _layer_kwargs(self, plan: RunPlan, index, result: np.ndarray) -> dict:
        layer = plan.layer
        scale, translate = self._placement(plan, index)
        meta = {**plan.record, "output_shape": list(result.shape), f"{plan.unit}_total": plan.units_total,
                f"{plan.unit}_done": 0, "partial": True}
        return dict(name=f"{layer.name} {plan.label} DIINN", scale=scale, translate=translate,
                    metadata={**layer.metadata, "diinn": meta}, **_looks_like(layer, result))

    def _trust_kwargs(self, plan: RunPlan, index) -> dict:
        scale, translate = self._placement(plan, index)
        return dict(name=f"{plan.layer.name} {plan.label} DIINN trust", scale=scale, translate=translate,
                    colormap="magma", blending="additive", opacity=0.6, visible=True,
                    metadata={"diinn": {**plan.record, "trust_map": "magnitude of the back-projection correction "
                                        "(image units): large where the model disagreed with the measured input"}})

    def _placement(self, plan: RunPlan, index) -> tuple[list[float], list[float]]:
        layer = plan.layer
        n = layer.ndim
        if plan.isotropic is not None:
            # Z planes are point samples: output plane k at translate + k * z_out, so plane 0 stays on input
            # plane 0 and only the Z scale changes (see diinn_napari.isotropic)
            scale, translate = [float(s) for s in layer.scale], [float(t) for t in layer.translate]
            scale[n - 3] = float(plan.isotropic["z_out"])
            return scale, translate
        scale, translate = overlay_placement(layer.scale, layer.translate, (1.0,) * (n - 2) + plan.ratio)
        if index is not None:  # one plane: place it at its own Z/T position
            translate[: n - 2] = [t + i * s for t, i, s in zip(layer.translate[: n - 2], index, layer.scale[: n - 2])]
        return scale, translate

    def _on_done(self, plan: RunPlan, index, result: np.ndarray | None, trust: np.ndarray | None) -> None:
        """The whole result is there: make sure the layer shows all of it (plane signals may lag behind)."""
        if result is None:
            return
        if self._adding:  # delivered while the first plane's layer is being added: finish it afterwards
            self._pending.append(lambda: self._on_done(plan, index, result, trust))
            return
        if self._live is None:
            self._show_result(plan, index, result, trust)
        meta = self._live.metadata["diinn"]
        meta["partial"], meta[f"{plan.unit}_done"] = False, meta[f"{plan.unit}_total"]
        self._live.refresh()
        if self._live_trust is not None:
            self._live_trust.refresh()

    def _on_stopped(self, plan: RunPlan, why: str) -> None:
        """Cancelled or failed: keep the planes already done, in a layer that says it is partial."""
        if self._adding:  # delivered while the first plane's layer is being added: mark it afterwards
            self._pending.append(lambda: self._on_stopped(plan, why))
            return
        if self._live is None:
            if why == "cancelled":
                show_info("DIINN: cancelled")
            return
        meta = self._live.metadata["diinn"]
        done, total, words = meta[f"{plan.unit}_done"], meta[f"{plan.unit}_total"], UNIT_WORDS[plan.unit]
        if done >= total:  # every unit had arrived before the stop: the result is whole
            meta["partial"] = False
            self._live.refresh()
            return
        self._live.name = f"{self._live.name} (partial: {done} of {total} {words})"
        meta["stopped"] = why
        show_info(f"DIINN: {why}; kept the {done} finished {words} in {self._live.name!r}")

    def _mark_unended(self, plan: RunPlan) -> None:
        """A run that ended with neither its result nor a stop: mark its layer complete or cancelled.

        A Cancel pressed during the last step lets the generator end, and superqt then emits
        neither ``returned`` nor ``aborted``; the layer holds what the yields delivered. While
        the first layer is being added this finds none, and :meth:`_show_result` calls it again.
        """
        meta = self._live.metadata["diinn"] if self._live is not None else {}
        if meta.get("partial") and "stopped" not in meta:
            self._on_stopped(plan, "cancelled")

    def _on_error(self, err: Exception) -> None:
        show_error(f"DIINN super-resolution failed: {err}")

    def _on_finished(self, plan: RunPlan) -> None:
        self._mark_unended(plan)
        if self._progress is not None:
            self._progress.close()
        self._progress = self._phase = None
        self._worker = None
        self._cancel = None
        self.run_button.text = "Run"
        self.preview_button.enabled = True
        self._update()

    # ---- preview of the visible region ------------------------------------------------------------
    def _preview_clicked(self, _=None) -> None:
        if self.size_mode.value == ISOTROPIC:
            show_error("DIINN: Preview works on one plane; isotropic voxels needs the whole stack: use Run")
            return
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
        worker = thread_worker(_preview, start_thread=False, connect={"errored": self._on_error})(
            plane, window, plan.run, layer.rgb)
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
        meta = {**plan.record, "preview_window": list(window), "seconds": seconds, "made": time.time()}
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


def _upscale_in_steps(data, run: RunSettings, rgb: bool, return_trust: bool):
    """Generator run by the thread worker.

    Yields ``(done, total, result, trust, planes_done)`` per tile; ``result``
    (the whole output array, filled so far) and ``trust`` (its trust map, if
    asked for) only when a plane has just finished. Returns ``(result, trust)``.
    """
    from .engine import Engine

    result = trust = None
    planes_done = 0
    for step in Engine(run).steps(data, rgb=rgb, return_trust=return_trust):
        if step.plane is None:
            yield step.done, step.total, None, None, planes_done
            continue
        if result is None:
            leading = tuple(data.shape[: data.ndim - (3 if rgb else 2)])
            result = np.zeros(leading + step.plane.shape, step.plane.dtype)
            if step.trust is not None:
                trust = np.zeros(leading + step.trust.shape, np.float32)
        result[step.index] = step.plane
        if trust is not None:
            trust[step.index] = step.trust
        planes_done += 1
        yield step.done, step.total, result, trust, planes_done
    return result, trust


def _isotropic_in_steps(data, shape: tuple[int, ...], iso: dict, run: RunSettings, cancel: threading.Event):
    """Generator run by the thread worker for isotropic voxels: adapt (optional), then resample Z.

    Adaptation (``iso["adapt_steps"]`` > 0) runs in a thread of its own so that
    this generator can yield its progress every 50 ms: the worker's ``quit()``
    is seen at the next yield, and ``cancel`` (set by the widget with it)
    stops the adaptation at its next step. Yields ``(done, total, result,
    None, rows_done, phase)``: ``result`` (the whole output, filled so far)
    when a block of Y rows has just finished. Returns ``(result, None)``.
    """
    from .isotropic import adapt, isotropic_steps

    spacing, target = iso["spacing"], iso["target"]
    model = run.model
    steps = iso["adapt_steps"]
    if steps:
        state: dict[str, Any] = {"step": 0}

        def work():
            try:
                state["model"] = adapt(data, spacing, target, model=model, steps=steps,
                                       axial_sigma=iso["axial_sigma"], device=run.device,
                                       intensity=run.intensity, cancel=cancel,
                                       progress=lambda i, n, loss: state.update(step=i, loss=loss))
            except BaseException as err:  # re-raised in the worker, which turns it into a notification
                state["error"] = err

        thread = threading.Thread(target=work, name="diinn-adapt", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                thread.join(0.05)
                yield state["step"], steps, None, None, 0, PHASES[0]
        finally:
            if thread.is_alive():  # the worker was stopped (or this generator closed): stop the adaptation too
                cancel.set()
        if "error" in state:
            raise state["error"]
        model = state["model"]
    result = None
    rows_done = 0
    for step in isotropic_steps(data, spacing, target, settings=run.replace(model=model), fusion="mean"):
        if step.block is None:
            yield step.done, step.total, None, None, rows_done, PHASES[1]
            continue
        if result is None:
            result = np.zeros(shape, step.block.dtype)
        result[step.index + (slice(None), slice(*step.rows), slice(None))] = step.block
        rows_done += step.rows[1] - step.rows[0]
        yield step.done, step.total, result, None, rows_done, PHASES[1]
    return result, None


def _preview(plane, window, run: RunSettings, rgb: bool):
    """Worker: decode one window of one plane; returns (image, seconds)."""
    import time

    from .engine import Engine

    start = time.perf_counter()
    image = Engine(run).window(np.asarray(plane), window, rgb=rgb)
    return image, time.perf_counter() - start
