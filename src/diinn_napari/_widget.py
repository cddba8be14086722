"""The napari widget: pick a layer and a size, press Run, get a result layer over the source.

napari builds it from the manifest (``DIINNWidget(napari_viewer=...)``) when a
user opens *Plugins > DIINN super-resolution* or *Layers > Transform*. It is
controls only: it reads them into a :class:`~diinn_napari._planner.Request`,
asks :func:`~diinn_napari._planner.plan_run` what that does to the layer,
and hands the plan to a :class:`~diinn_napari._run.RunController` (Run,
Cancel) or a :class:`~diinn_napari._preview.PreviewController` (Preview).
torch is imported when the widget is opened (to list devices and models),
never when napari starts.

Public surface, for scripts and tests: :meth:`DIINNWidget.run`,
:meth:`~DIINNWidget.cancel`, :meth:`~DIINNWidget.preview`,
:attr:`~DIINNWidget.busy`, :attr:`~DIINNWidget.state`,
:attr:`~DIINNWidget.result`, :meth:`~DIINNWidget.plan`, and the two
controllers (``widget.controller.updated`` / ``state_changed`` signals,
``widget.controller.worker_factory``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton, SpinBox
from napari.layers import Image
from napari.utils.notifications import show_error, show_info

from . import _remember
from ._layers import current_plane, is_preview, visible_corners
from ._planner import AUTO_MODEL, DTYPES, ISOTROPIC, SIZE_MODES, Request, RunPlan, Source, plan_run, visible_window
from ._preview import PreviewController
from ._run import RunController, RunState
from .intensity import INTENSITY_MODES
from .settings import DEFAULT_CONSISTENCY, PRECISIONS
from .train.self_adapt import MEASURED_STEPS  # torch-free

if TYPE_CHECKING:
    import napari

BROWSE = "Browse..."
RESULT_MARK = "  [DIINN result]"  # how the image selector marks a layer that is itself a DIINN result
FOLLOW_DELAY_MS = 300  # follow the view: preview again this long after the last camera change
# The controls whose values are remembered across napari sessions (by attribute name).
REMEMBERED = ("size_mode", "factor_y", "factor_x", "same_factor", "pixel_size", "output_y", "output_x", "z_target",
              "model", "z_consistency", "adapt", "adapt_steps", "device", "tile_size", "intensity", "out_dtype",
              "precision", "consistency", "ensemble", "self_adapt", "self_adapt_steps", "trust_map", "plane_only", "follow",
              "memory_budget", "to_zarr")


def is_result(layer) -> bool:
    """Whether a layer is itself a DIINN result (a run's output, not a preview)."""
    meta = getattr(layer, "metadata", None)
    return isinstance(meta, dict) and isinstance(meta.get("diinn"), dict) and not is_preview(layer)


class DIINNWidget(Container):
    """Super-resolve an image layer by any real factor, a target pixel size or an output shape."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = napari_viewer
        self._model_files: list[str] = []
        self.controller = RunController(napari_viewer)
        self.previews = PreviewController(napari_viewer)
        self.layer = ComboBox(label="image", choices=self._image_layers, nullable=True,
                              tooltip=f"the source; a layer marked{RESULT_MARK} is itself a DIINN result")
        self.model = ComboBox(label="model", choices=self._model_choices, value=AUTO_MODEL,
                              tooltip="auto: the bundled gray or RGB model by the layer; or a weights file (Browse...)")
        self.info = Label(value="")
        self.preview_button = PushButton(text="Preview (visible region)",
                                         tooltip="decode what the canvas shows of the current plane, at the output size")
        self.follow = CheckBox(text="follow the view", value=False,
                               tooltip=f"preview again {FOLLOW_DELAY_MS} ms after the camera stops moving")
        self.copy_python = PushButton(text="Copy as Python", tooltip="the upscale(...) call that makes the selected "
                                                                     "DIINN layer (or the last result)")
        self.copy_command = PushButton(text="Copy as command", tooltip="the python -m diinn_napari.batch line that "
                                                                       "makes it from the source file")
        self.run_button = PushButton(text="Run")
        copies = Container(widgets=[self.copy_python, self.copy_command], layout="horizontal", labels=False)
        copies.margins = (0, 0, 0, 0)
        self.copied = ""  # the last text copied to the clipboard
        size = self._size_controls()
        self.advanced = Container(widgets=[*self._isotropic_controls(), *self._options()])
        self.extend([self.layer, *size, self.model, self.info, self.preview_button, self.follow, copies,
                     self.run_button])
        self._defaults = {name: getattr(self, name).value for name in REMEMBERED}
        self.advanced_group = self._collapsible(self.advanced, after=self.model)
        for control in (self.layer, self.size_mode, self.factor_y, self.factor_x, self.same_factor, self.pixel_size,
                        self.output_y, self.output_x, self.z_target, self.adapt, self.adapt_steps, self.device,
                        self.out_dtype, self.plane_only, self.ensemble, self.self_adapt, self.self_adapt_steps,
                        self.trust_map, self.memory_budget, self.to_zarr, self.zarr_path):
            control.changed.connect(self._update)
        self.model.changed.connect(self._on_model)
        self.run_button.clicked.connect(self._on_run_button)
        self.preview_button.clicked.connect(self.preview)
        self.copy_python.clicked.connect(lambda _=None: self.copy("python"))
        self.copy_command.clicked.connect(lambda _=None: self.copy("command"))
        self.restore_button.clicked.connect(self.restore_defaults)
        self.controller.state_changed.connect(self._on_state)
        self.previews.shown.connect(self._on_preview_shown)
        layers = napari_viewer.layers
        layers.events.inserted.connect(self._on_layers_changed)
        layers.events.removed.connect(self._on_layers_changed)
        layers.selection.events.active.connect(self._follow_selection)
        self._follow_timer = self._camera_timer()
        camera = napari_viewer.scene.camera if hasattr(napari_viewer, "scene") else napari_viewer.camera  # napari 0.9
        camera.events.connect(self._on_camera)
        napari_viewer.dims.events.current_step.connect(self._on_camera)
        self.follow.changed.connect(self._on_follow)
        self._restoring = True
        self._restore(_remember.load())
        self._restoring = False
        for name in REMEMBERED:
            getattr(self, name).changed.connect(self._remember)
        self._on_layers_changed()
        self._follow_selection()
        self._update()

    def _collapsible(self, container: Container, after):
        """Put ``container`` in a collapsed *Advanced* group below the control ``after`` (magicgui has no such group)."""
        from superqt import QCollapsible

        group = QCollapsible("Advanced")
        group.setToolTip("tile size, intensity, dtype, precision, consistency, ensemble, adapt to each plane, "
                         "trust map, device, memory budget and OME-Zarr output, ...")
        group.addWidget(container.native)
        group.collapse(animate=False)
        layout = self._widget._layout
        anchor = after.native
        index = next(i for i in range(layout.count()) if layout.itemAt(i).widget() is not None
                     and (layout.itemAt(i).widget() is anchor or layout.itemAt(i).widget().isAncestorOf(anchor)))
        layout.insertWidget(index + 1, group)
        return group

    def _camera_timer(self):
        from qtpy.QtCore import QTimer

        timer = QTimer()
        timer.setSingleShot(True)
        timer.setInterval(FOLLOW_DELAY_MS)
        timer.timeout.connect(self._on_camera_settled)
        return timer

    # ---- the controls ------------------------------------------------------------------------------
    def _size_controls(self) -> list:
        """How to size the output: the mode and its values."""
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
        return [self.size_mode, self.factor_y, self.factor_x, self.same_factor, self.pixel_size, self.output_y,
                self.output_x, self.z_target]

    def _isotropic_controls(self) -> list:
        """Options of the isotropic voxels mode."""
        self.z_consistency = SpinBox(label="Z data consistency", value=0, min=0, max=20,
                                     tooltip="back-projection steps along Z (0 = off, the default: on axially blurred "
                                             "stacks it puts the blur back)")
        self.adapt = CheckBox(text="adapt to this stack first (self-supervised, on its XY planes)", value=False)
        self.adapt_steps = SpinBox(label="adaptation steps", value=300, min=1, max=100000,
                                   tooltip="fine-tuning steps on the stack's XY planes degraded along one axis "
                                           "before reconstructing")
        return [self.z_consistency, self.adapt, self.adapt_steps]

    def _options(self) -> list:
        """The expert options (compute, values, extra outputs)."""
        from .devices import available_devices

        self.device = ComboBox(label="device", choices=["auto"] + available_devices(), value="auto")
        self.tile_size = SpinBox(label="tile size (0 = auto)", value=0, min=0, max=8192)
        self.intensity = ComboBox(label="intensity", choices=INTENSITY_MODES, value="auto")
        self.out_dtype = ComboBox(label="output dtype", choices=DTYPES, value=DTYPES[0])
        self.precision = ComboBox(label="precision", choices=PRECISIONS, value="fp32",
                                  tooltip="fp32: exact (default). bf16: about 1.5x faster on CPUs with avx512_bf16/AMX "
                                          "and on CUDA, within 0.01 dB; slower on CPUs without them. fp16: CUDA only")
        self.consistency = SpinBox(label="data consistency", value=DEFAULT_CONSISTENCY, min=0, max=20,
                                   tooltip="back-projection iterations after the network (0 = off): downsampled, "
                                           "the output gives back the input")
        self.trust_map = CheckBox(text="add a trust map layer (where the model disagreed with the data)", value=False)
        self.plane_only = CheckBox(text="only the plane on screen (quick look)", value=False)
        self.ensemble = CheckBox(text="best quality: self-ensemble (about 8x the time)", value=False,
                                 tooltip="mean of the outputs for the 8 flips and transposes of the input; a small "
                                         "PSNR gain (docs/quality.md) at about 8 times the cost")
        self.self_adapt = CheckBox(text="adapt to each plane first (self-supervised; up to x2)", value=False,
                                   tooltip="before each plane is upscaled, fine-tune a copy of the model on the "
                                           "plane's own downsampled copies (no ground truth; a strip of the plane "
                                           "checks it). Measured +0.20 dB at x2 on held-aside files, a loss at x4: "
                                           "offered up to x2 (docs/finetuning.md). About a minute per plane on a CPU")
        self.self_adapt_steps = SpinBox(label="adaptation steps per plane", value=MEASURED_STEPS, min=1, max=100000,
                                        tooltip=f"fine-tuning steps on each plane ({MEASURED_STEPS}: what was measured)")
        from ._store import default_memory_budget

        self.memory_budget = SpinBox(label="memory budget (MiB, 0 = none)", value=default_memory_budget() // 2**20,
                                     min=0, max=2**31 - 1,
                                     tooltip="a larger result is written to an OME-Zarr store (below) instead of "
                                             "memory; default: a quarter of this machine's RAM")
        self.to_zarr = CheckBox(text="write to OME-Zarr (for results larger than memory)", value=False,
                                tooltip="the result goes block by block into an OME-Zarr store, shown as a multiscale "
                                        "layer that fills in; Cancel keeps the finished blocks, Run again resumes")
        self.zarr_path = FileEdit(label="OME-Zarr store", mode="w", filter="OME-Zarr (*.zarr)",
                                  tooltip="empty: a temporary store named after the settings (the info line and a "
                                          "notification name it); a store of other work is refused")
        self.restore_button = PushButton(text="Restore defaults", tooltip="every control back to its default "
                                                                          "(and forget the remembered settings)")
        return [self.device, self.tile_size, self.intensity, self.out_dtype, self.precision, self.consistency,
                self.ensemble, self.self_adapt, self.self_adapt_steps, self.trust_map, self.plane_only,
                self.memory_budget, self.to_zarr, self.zarr_path, self.restore_button]

    def _update(self, _=None) -> None:
        """Show the controls the size mode uses, and what the next run will make."""
        mode = self.size_mode.value
        iso = mode == ISOTROPIC
        self.factor_y.visible = self.same_factor.visible = mode == "factor"
        self.factor_x.visible = mode == "factor" and not self.same_factor.value
        self.pixel_size.visible = mode == "pixel size"
        self.output_y.visible = self.output_x.visible = mode == "output shape"
        # isotropic voxels has its own consistency (default 0) and works on whole volumes: no plane, trust or preview
        self.z_target.visible = self.z_consistency.visible = self.adapt.visible = iso
        self.adapt_steps.visible = iso and self.adapt.value
        self.consistency.visible = self.trust_map.visible = self.plane_only.visible = self.ensemble.visible = not iso
        self.self_adapt.visible = not iso
        self.self_adapt_steps.visible = not iso and self.self_adapt.value
        self.preview_button.enabled = self.follow.enabled = not self.busy and not iso
        try:
            plan = self.plan()
        except ValueError as err:
            self.info.value = str(err)
            return
        from .devices import pick_device

        self.info.value = plan.describe(pick_device(self.device.value) if self.device.value == "auto"
                                        else self.device.value)

    # ---- choices -------------------------------------------------------------------------------------
    def _images(self) -> list[Image]:
        return [layer for layer in self._viewer.layers if isinstance(layer, Image) and not is_preview(layer)]

    def _image_layers(self, _=None) -> list[tuple[str, Image]]:
        """The selector's choices: every image layer but previews; DIINN results marked as such."""
        return [(layer.name + (RESULT_MARK if is_result(layer) else ""), layer) for layer in self._images()]

    def _on_layers_changed(self, _=None) -> None:
        self.reset_choices()
        if self.layer.value is None:  # e.g. the first image was just opened: take it
            self._follow_selection()

    def _follow_selection(self, _=None) -> None:
        """Preselect the selected image layer, or the only one; never a DIINN result (the source stays the source:
        napari selects a result when it is added). A result can still be chosen in the selector."""
        self.reset_choices()  # the selection can change before the layer list's events reach us
        images = self._images()
        active = self._viewer.layers.selection.active
        if active is not None and active in images and not is_result(active):
            self.layer.value = active
        elif self.layer.value is None and len(images) == 1:
            self.layer.value = images[0]

    def _model_choices(self, _=None) -> list[str]:
        from .weights import available_models

        return [AUTO_MODEL] + available_models() + self._model_files + [BROWSE]

    def add_model_file(self, path: str) -> None:
        """Offer a user weights file in the model list and select it."""
        if str(path) not in self._model_files:
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
                self.model.value = AUTO_MODEL
        self._update()

    # ---- what will happen ------------------------------------------------------------------------------
    def request(self) -> Request:
        """The control values now, as the planner takes them."""
        layer = self.layer.value
        fy = self.factor_y.value
        return Request(
            size_mode=self.size_mode.value, factor=(fy, fy if self.same_factor.value else self.factor_x.value),
            pixel_size=self.pixel_size.value, output_shape=(self.output_y.value, self.output_x.value),
            model=AUTO_MODEL if self.model.value in (BROWSE, None) else self.model.value, device=self.device.value,
            tile_size=int(self.tile_size.value), intensity=self.intensity.value, out_dtype=self.out_dtype.value,
            precision=self.precision.value, consistency=int(self.consistency.value),
            trust_map=bool(self.trust_map.value), plane_only=bool(self.plane_only.value),
            plane=current_plane(layer, self._viewer.dims.point) if layer is not None else (),
            z_target=float(self.z_target.value), z_consistency=int(self.z_consistency.value),
            adapt_steps=int(self.adapt_steps.value) if self.adapt.value else 0, ensemble=bool(self.ensemble.value),
            self_adapt_steps=int(self.self_adapt_steps.value) if self.self_adapt.value else 0,
            memory_budget=int(self.memory_budget.value) * 2**20, to_zarr=bool(self.to_zarr.value),
            zarr_path=str(self.zarr_path.line_edit.value))

    def plan(self) -> RunPlan:
        """The plan of the next run, read from the controls now. Raises ValueError."""
        layer = self.layer.value
        if layer is None:
            raise ValueError("no image layer: open or select an image first")
        return plan_run(Source.of(layer), self.request())

    def preview_window(self, plan: RunPlan | None = None) -> tuple[int, int, int, int]:
        """The output window (y0, y1, x0, x1) of the current plane that covers what the canvas shows of the layer."""
        plan = plan or self.plan()
        return visible_window(plan.in_yx, plan.out_yx, visible_corners(self.layer.value), self._viewer.canvas.size)

    def _plan_or_notify(self) -> RunPlan | None:
        try:
            return self.plan()
        except ValueError as err:
            show_error(f"DIINN: {err}")
            return None

    # ---- actions -------------------------------------------------------------------------------------
    @property
    def state(self) -> RunState:
        """Where the last run stands (:class:`~diinn_napari._run.RunState`)."""
        return self.controller.state

    @property
    def busy(self) -> bool:
        """Whether a run is in progress (running or cancelling)."""
        return self.controller.busy

    @property
    def result(self) -> Image | None:
        """The output layer of the last run (None before its first plane is done)."""
        return self.controller.result

    def run(self) -> bool:
        """Start a run of the current controls (what *Run* does); False, with a notification, if they cannot."""
        if self.busy:
            show_error("DIINN: a run is in progress; cancel it first")
            return False
        plan = self._plan_or_notify()
        if plan is None:
            return False
        self.controller.start(plan, self.layer.value)
        return True

    def cancel(self) -> None:
        """Stop the run between tiles (what *Cancel* does); the planes (or Y rows) already done are kept."""
        self.controller.cancel()

    def preview(self, _=None) -> bool:
        """Decode the visible part of the current plane (what *Preview* does); False, with a notification, if not."""
        if self.size_mode.value == ISOTROPIC:
            show_error("DIINN: Preview works on one plane; isotropic voxels needs the whole stack: use Run")
            return False
        plan = self._plan_or_notify()
        if plan is None:
            return False
        self._request_preview(plan)
        return True

    def _request_preview(self, plan: RunPlan) -> None:
        window = self.preview_window(plan)
        self.previews.request(plan, self.layer.value, window)
        self.info.value = f"preview of output rows {window[0]}:{window[1]}, columns {window[2]}:{window[3]}..."
        if plan.self_adapt_steps:  # adapting takes about a minute: the preview is the model as it is
            self.info.value += " (without the adaptation to the plane: Run adapts)"

    def _on_run_button(self, _=None) -> None:
        if self.busy:
            self.cancel()
        else:
            self.run()

    def _on_state(self, state: RunState) -> None:
        self.run_button.text = "Cancel" if state.busy else "Run"
        if state is RunState.CANCELLING:
            self.info.value = "cancelling..."
        else:
            self._update()

    def _on_preview_shown(self, layer: Image) -> None:
        meta = layer.metadata["diinn"]
        y0, y1, x0, x1 = meta["preview_window"]
        self.info.value = f"preview: {y1 - y0} x {x1 - x0} px in {meta['seconds']:.1f} s"
        if meta.get("self_adapt_steps"):
            self.info.value += " (the model as it is: Run adapts it to each plane first)"

    # ---- follow the view ---------------------------------------------------------------------------
    def _on_camera(self, _=None) -> None:
        if self.follow.value:
            self._follow_timer.start()  # restarted by every change: fires once the camera has been still

    def _on_follow(self, on: bool) -> None:
        if on:
            self._on_camera_settled()
        else:
            self._follow_timer.stop()

    def _on_camera_settled(self) -> None:
        """The camera stopped: preview the visible region again (quietly skipped when a preview cannot be made)."""
        if not self.follow.value or self.busy or self.size_mode.value == ISOTROPIC or self.layer.value is None:
            return
        try:
            plan = self.plan()
        except ValueError:
            return
        self._request_preview(plan)

    # ---- reproduce ----------------------------------------------------------------------------------
    def reproduce_layer(self) -> Image | None:
        """The layer the copy actions describe: the selected DIINN result, else the last result, else the image."""
        active = self._viewer.layers.selection.active
        for layer in (active, self.result, self.layer.value):
            if layer is not None and is_result(layer):
                return layer
        return None

    def reproduction(self, kind: str) -> str:
        """The text *Copy as Python* (``kind`` "python") or *Copy as command* ("command") copies. Raises ValueError."""
        from ._reproduce import ReproduceError, batch_command, python_code

        layer = self.reproduce_layer()
        if layer is None:
            raise ReproduceError("no DIINN result to reproduce: press Run first, or select a DIINN layer")
        if layer.metadata["diinn"].get("partial"):
            raise ReproduceError(f"{layer.name!r} is a partial result (cancelled): the settings are in "
                                 "metadata['diinn']; run it again to copy them")
        record = layer.metadata["diinn"]
        return python_code(record, layer.name) if kind == "python" else batch_command(record)

    def copy(self, kind: str = "python") -> bool:
        """What the copy buttons do: the text to the clipboard, and shown; False, with a notification, if none."""
        from qtpy.QtWidgets import QApplication

        try:
            text = self.reproduction(kind)
        except ValueError as err:
            show_error(f"DIINN: {err}")
            return False
        QApplication.clipboard().setText(text)
        self.copied = text
        show_info(f"DIINN: copied to the clipboard:\n{text}")
        self.info.value = "copied to the clipboard: " + ("the upscale(...) script" if kind == "python"
                                                         else "the batch command")
        return True

    # ---- remembered settings ------------------------------------------------------------------------
    def _remember(self, _=None) -> None:
        if self._restoring:
            return
        values = {}
        for name in REMEMBERED:
            value = getattr(self, name).value
            if name == "model" and value in (BROWSE, None):
                value = AUTO_MODEL
            values[name] = value
        _remember.save(values)

    def _restore(self, values: dict) -> None:
        """Set the controls to remembered ``values``; a value a control no longer accepts is skipped."""
        for name in REMEMBERED:
            if name not in values:
                continue
            value = values[name]
            try:
                if name == "model" and value not in self._model_choices():
                    from pathlib import Path

                    if not Path(str(value)).is_file():
                        continue
                    self.add_model_file(str(value))
                getattr(self, name).value = value
            except (ValueError, TypeError, KeyError):
                continue

    def restore_defaults(self, _=None) -> None:
        """What *Restore defaults* does: every control back to its default, remembered as such."""
        self._restoring = True
        try:
            self._restore(self._defaults)
        finally:
            self._restoring = False
        self._remember()
        self._update()
