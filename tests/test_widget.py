"""The napari widget in a real viewer (run under Xvfb: `xvfb-run -a pytest`)."""

import contextlib
import subprocess
import sys
import threading
from importlib import resources

import numpy as np
import pytest
import yaml

napari = pytest.importorskip("napari")

from diinn_napari import upscale  # noqa: E402
from diinn_napari._planner import Request, Source, plan_run  # noqa: E402
from diinn_napari._run import RunState  # noqa: E402
from diinn_napari._widget import DIINNWidget  # noqa: E402


MANIFEST = yaml.safe_load((resources.files("diinn_napari") / "napari.yaml").read_text())
PLUGIN = MANIFEST["name"]
WIDGET = MANIFEST["contributions"]["widgets"][0]["display_name"]
WIDGET_COMMAND = MANIFEST["contributions"]["widgets"][0]["command"]
# Generous: the test machine has 2 cores shared with a training job.
TIMEOUT = 120_000


def open_from_menu(viewer) -> DIINNWidget:
    """What clicking *Plugins > DIINN super-resolution* runs: the menu's command."""
    from napari._app_model import get_app_model

    get_app_model().commands.execute_command(WIDGET_COMMAND).result()
    docked = [w for w in viewer.window.dock_widgets.values() if isinstance(w, DIINNWidget)]
    assert len(docked) == 1
    return docked[0]


def shown(control) -> bool:
    """Whether the widget shows this control (``.visible`` is False while the dock itself is not on screen)."""
    return not control.native.isHidden()


def run_copied_python(widget, folder) -> tuple[str, np.ndarray]:
    """Press *Copy as Python* and run the clipboard's script as a file in ``folder``: (script, its ``result``)."""
    from qtpy.QtWidgets import QApplication

    from diinn_napari._reproduce import command_argv

    press(widget.copy_python)
    script = QApplication.clipboard().text()
    (folder / "again.py").write_text(script + "\nimport numpy as np\nnp.save('again.npy', result)\n")
    done = subprocess.run(command_argv(f"python {folder / 'again.py'}"), capture_output=True, text=True,
                          timeout=600, cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    return script, np.load(folder / "again.npy")


def open_widget(viewer):
    """What *Plugins > DIINN super-resolution* does: napari builds the widget from the manifest."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert isinstance(widget, DIINNWidget)
    return widget


@pytest.fixture
def setup(make_napari_viewer, gray_weights):
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    widget.add_model_file(gray_weights)
    return viewer, widget


@pytest.fixture
def errors():
    """The error notifications shown from now on (their messages)."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    first = len(notification_manager.records)
    return lambda: [str(n.message) for n in notification_manager.records[first:]
                    if n.severity == NotificationSeverity.ERROR]


def press(button) -> None:
    """Click a widget's button as a user does."""
    button.native.click()


def run(qtbot, widget, timeout=TIMEOUT):
    """Press Run and wait until the run has ended (its last signal handled)."""
    assert widget.run_button.text == "Run"
    press(widget.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


@contextlib.contextmanager
def held_worker(widget, when, timeout=TIMEOUT, holding=None, then=None):
    """Inside: the widget's run waits after each update for which ``when`` holds, until the yielded event is set.

    The worker runs on while the main thread handles its signals, so on a busy machine a
    Cancel can arrive after the run has ended; the controller's public worker factory lets a
    test wrap the worker's updates and hold them until the press. ``holding`` (an event) is
    set while the worker waits, past its quit check; ``then()`` runs once it is released.
    """
    release = threading.Event()
    default = widget.controller.worker_factory

    def held(updates):
        def hold():
            while True:
                try:
                    update = next(updates)
                except StopIteration as end:
                    return end.value
                yield update
                if when(update):
                    if holding is not None:
                        holding.set()
                    if not release.wait(timeout / 1000):
                        raise TimeoutError("the test never released the worker")
                    if then is not None:
                        then()
        return default(hold())

    widget.controller.worker_factory = held
    try:
        yield release
    finally:
        widget.controller.worker_factory = default


def cancel_at(qtbot, widget, when=lambda update: True, timeout=TIMEOUT, then=None):
    """Press Run, then Cancel at the first update for which ``when`` holds (the worker held there until then).

    With ``then``, the press waits until the worker is held past its quit check, and the worker
    runs ``then()`` once released, before it asks for its next update.
    """
    holding = None if then is None else threading.Event()
    with held_worker(widget, when, timeout, holding, then) as pressed:
        def on_update(update):
            if (when(update) and not pressed.is_set() and widget.state is RunState.RUNNING
                    and (holding is None or holding.wait(timeout / 1000))):
                assert widget.run_button.text == "Cancel"
                press(widget.run_button)
                pressed.set()

        widget.controller.updated.connect(on_update)
        try:
            run(qtbot, widget, timeout=timeout)
        finally:
            widget.controller.updated.disconnect(on_update)
    assert pressed.is_set()


def wait_for_preview(qtbot, viewer, name, ratio=None):
    def shown():
        return name in viewer.layers and (ratio is None or viewer.layers[name].metadata["diinn"]["size_ratio"][0] == ratio)
    qtbot.waitUntil(shown, timeout=TIMEOUT)
    return viewer.layers[name]


def spot_image(shape, at, dtype=np.uint16):
    image = np.full(shape, 100, dtype)
    image[at] = 4000
    return image


def test_importing_the_plugin_does_not_import_torch():
    code = "import sys, diinn_napari, diinn_napari._widget, diinn_napari._sample_data; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


# ---- the planner: plain values in, a plan out (no viewer, no Qt) ---------------------------------------
def test_the_planner_needs_neither_qt_nor_napari_nor_torch():
    code = ("import sys, diinn_napari._planner; "
            "print([m for m in ('torch', 'napari', 'qtpy', 'magicgui') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_the_planner_sizes_each_mode_from_the_layer_geometry():
    source = Source("a", (3, 10, 20), np.uint8, scale=(2.0, 0.5, 0.5))
    assert plan_run(source, Request(factor=(1.5, 3.0))).out_yx == (15, 60)
    assert plan_run(source, Request(size_mode="pixel size", pixel_size=0.2)).out_yx == (25, 50)
    plan = plan_run(source, Request(size_mode="output shape", output_shape=(33, 44), plane_only=True, plane=(5,)))
    assert plan.shape == (1, 33, 44) and plan.plane == (2,) and plan.units_total == 1  # the plane index is clipped
    assert plan.run.output_shape == (33, 44) and plan.run.model == "gray" and plan.label == "x3.3,2.2"
    assert plan.record["size_mode"] == "output shape" and plan.record["output_dtype"] == "uint8"
    with pytest.raises(ValueError, match="only upscales"):
        plan_run(source, Request(size_mode="output shape", output_shape=(4, 44)))


def test_the_isotropic_planner_asks_the_shared_rule_and_adds_the_layers_remedy():
    from diinn_napari._planner import ISOTROPIC
    from diinn_napari.isotropic_plan import plan_isotropic

    plan = plan_run(Source("s", (2, 9, 24, 20), np.uint16, scale=(1.0, 3.0, 1.0, 1.0)),
                    Request(size_mode=ISOTROPIC, adapt_steps=5, z_consistency=1))
    assert plan.isotropic == plan_isotropic((2, 9, 24, 20), 3.0, (1.0, 1.0))
    assert plan.shape == (2, 25, 24, 20) and plan.unit == "rows" and plan.units_total == 48
    assert plan.adapt_steps == 5 and plan.axial_sigma == plan.isotropic.axial_sigma and plan.run.consistency == 1
    assert plan.describe("cpu").endswith("Z step 3 -> 1 (9 -> 25 planes), after 5 adaptation steps")
    with pytest.raises(ValueError, match=r"'cube'.*no Z anisotropy.*\.scale = "):
        plan_run(Source("cube", (4, 16, 16), np.uint16), Request(size_mode=ISOTROPIC))


# ---- the widget in a viewer -----------------------------------------------------------------------------
def test_output_overlays_the_source_exactly(setup, qtbot):
    viewer, widget = setup
    layer = viewer.add_image(spot_image((20, 24), (7, 15)), scale=(0.5, 0.4), translate=(10.0, -3.0), name="cells",
                             contrast_limits=(0, 3000))
    points = viewer.add_points([[10 + 7 * 0.5, -3 + 15 * 0.4]], name="landmark")
    widget.layer.value = layer
    widget.factor_y.value = 2.5
    ended = []
    widget.controller.ended.connect(lambda state: ended.append((state, widget.result.metadata["diinn"]["partial"])))
    run(qtbot, widget)
    out = viewer.layers["cells x2.5 DIINN"]
    assert ended == [(RunState.FINISHED, False)]  # the layer is whole when the end is announced
    assert widget.state is RunState.FINISHED and widget.result.name == out.name
    assert widget.run_button.text == "Run", widget.run_button.text
    assert out.data.shape == (50, 60) and out.data.dtype == np.uint16
    np.testing.assert_allclose(out.scale, (0.2, 0.16))
    np.testing.assert_allclose(out.translate, (10 + 0.5 * (0.2 - 0.5), -3 + 0.5 * (0.16 - 0.4)))
    assert out.contrast_limits == [0, 3000]
    assert out.metadata["diinn"]["source"] == "cells"
    # the landmark lands on the brightest output pixel
    y, x = np.unravel_index(np.argmax(out.data), out.data.shape)
    in_out = out.world_to_data(points.data[0])
    assert abs(in_out[0] - y) <= 1 and abs(in_out[1] - x) <= 1


def test_z_stack_keeps_z_scale_and_each_plane_is_upscaled(setup, qtbot):
    viewer, widget = setup
    stack = np.stack([spot_image((16, 16), (3 + i, 4)) for i in range(3)])
    layer = viewer.add_image(stack, scale=(2.0, 0.5, 0.5), name="z")
    widget.layer.value = layer
    widget.factor_y.value = 2
    run(qtbot, widget)
    out = viewer.layers[-1]
    assert out.data.shape == (3, 32, 32)
    np.testing.assert_allclose(out.scale, (2.0, 0.25, 0.25))
    assert out.translate[0] == 0


def test_anisotropic_factor_and_pixel_size_modes(setup):
    viewer, widget = setup
    widget.layer.value = viewer.add_image(np.zeros((10, 20), np.uint8), scale=(0.5, 0.5))
    widget.same_factor.value = False
    widget.factor_y.value, widget.factor_x.value = 1.5, 3.0
    assert widget.plan().out_yx == (15, 60)
    widget.size_mode.value = "pixel size"
    widget.pixel_size.value = 0.2
    assert widget.plan().out_yx == (25, 50)
    widget.size_mode.value = "output shape"
    widget.output_y.value, widget.output_x.value = 33, 44
    assert widget.plan().out_yx == (33, 44)
    assert "33 x 44 uint8" in widget.info.value and "MiB" in widget.info.value and "cpu" in widget.info.value


def test_rgb_layer_picks_the_rgb_model(setup, rgb_weights, qtbot):
    viewer, widget = setup
    widget.layer.value = viewer.add_image(np.zeros((12, 10, 3), np.uint8), rgb=True)
    widget.model.value = "auto"
    assert widget.plan().run.model == "rgb"
    widget.add_model_file(rgb_weights)
    run(qtbot, widget)
    assert viewer.layers[-1].data.shape == (24, 20, 3) and viewer.layers[-1].rgb


def test_dask_and_multiscale_layers_use_level_zero_plane_by_plane(setup, qtbot):
    da = pytest.importorskip("dask.array")
    viewer, widget = setup
    base = da.from_array(np.random.default_rng(0).integers(0, 255, (2, 16, 16), dtype=np.uint8), chunks=(1, 16, 16))
    layer = viewer.add_image([base, base[:, ::2, ::2]], multiscale=True, name="pyramid")
    widget.layer.value = layer
    run(qtbot, widget)
    assert viewer.layers[-1].data.shape == (2, 32, 32)


def test_only_the_plane_on_screen(setup, qtbot):
    viewer, widget = setup
    layer = viewer.add_image(np.zeros((2, 3, 8, 8), np.uint16), scale=(5, 2, 1, 1), name="tz")
    viewer.dims.current_step = (1, 2, 0, 0)
    widget.layer.value = layer
    widget.plane_only.value = True
    run(qtbot, widget)
    out = viewer.layers[-1]
    assert out.data.shape == (1, 1, 16, 16)
    np.testing.assert_allclose(out.translate[:2], (5.0, 4.0))


def test_cancel_stops_between_tiles(setup, qtbot):
    viewer, widget = setup
    widget.layer.value = viewer.add_image(np.zeros((4, 128, 128), np.uint8))
    widget.tile_size.value = 8  # 1024 tiles: 256 a plane
    cancel_at(qtbot, widget)  # at the first tile
    assert len(viewer.layers) == 1 and widget.run_button.text == "Run"
    assert widget.state is RunState.CANCELLED and widget.result is None


def test_a_bad_choice_shows_an_error_notification(setup, rgb_weights, qtbot, errors):
    viewer, widget = setup
    widget.layer.value = viewer.add_image(np.zeros((8, 8), np.uint8))
    widget.add_model_file(rgb_weights)  # an RGB model for a gray layer
    run(qtbot, widget)
    assert len(errors()) == 1 and "3-channel" in errors()[0]
    assert widget.state is RunState.FAILED and widget.run_button.text == "Run"
    widget.size_mode.value = "output shape"
    widget.output_y.value = 4  # smaller than the input
    assert "only upscales" in widget.info.value
    press(widget.run_button)
    assert "only upscales" in errors()[-1] and not widget.busy
    assert len(viewer.layers) == 1


def test_sample_data_opens_offline(make_napari_viewer):
    viewer = make_napari_viewer()
    for key in ("cell", "thermal", "satellite"):
        viewer.open_sample("diinn-napari", key)
    assert len(viewer.layers) == 3 and viewer.layers[-1].rgb


def test_manifest_validates_with_imports():
    done = subprocess.run(["npe2", "validate", "diinn-napari", "--imports"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- the user's path: menus, samples, an image already open ------------------------------------------
def test_the_menus_open_the_widget_with_the_viewer(make_napari_viewer):
    from napari._app_model import get_app_model

    viewer = make_napari_viewer()
    app = get_app_model()
    for menu in ("napari/layers/transform", "napari/plugins"):
        commands = [getattr(item, "command", None) for item in app.menus.get_menu(menu)]
        assert WIDGET_COMMAND in [c.id for c in commands if c is not None], menu
    app.commands.execute_command(WIDGET_COMMAND).result()  # what clicking either menu item runs
    docked = [w for w in viewer.window.dock_widgets.values() if isinstance(w, DIINNWidget)]
    assert len(docked) == 1
    viewer.open_sample(PLUGIN, "cell")
    assert docked[0].layer.value is viewer.layers[0]
    assert "output" in docked[0].info.value


def test_opening_on_a_viewer_with_an_image_preselects_it_and_follows_the_selection(make_napari_viewer):
    viewer = make_napari_viewer()
    first = viewer.add_image(np.zeros((8, 8), np.uint8), name="first")
    widget = open_widget(viewer)
    assert widget.layer.value is first and "no image layer" not in widget.info.value
    second = viewer.add_image(np.zeros((6, 6), np.uint8), name="second")
    assert widget.layer.value is second  # napari selects a newly added layer
    viewer.layers.selection.active = first
    assert widget.layer.value is first
    viewer.add_points([[1, 1]])  # a non-image selection leaves the choice alone
    assert widget.layer.value is first


def test_samples_open_through_the_manifest_and_run(make_napari_viewer, gray_weights, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "thermal")
    widget = open_widget(viewer)
    widget.add_model_file(gray_weights)
    layer = viewer.layers[0]
    assert widget.layer.value is layer
    widget.factor_y.value = 1.25
    run(qtbot, widget)
    out = viewer.layers[-1]
    assert out.data.shape == (320, 320) and out.units == layer.units and layer.data.shape == (256, 256)
    np.testing.assert_allclose(out.scale, np.asarray(layer.scale) / 1.25)


# ---- results while it runs ------------------------------------------------------------------------------
def test_the_layer_appears_after_the_first_plane_and_the_viewer_stays_responsive(setup, qtbot):
    from qtpy.QtCore import QTimer

    viewer, widget = setup
    stack = np.random.default_rng(1).integers(0, 4000, (4, 16, 16)).astype(np.uint16)
    widget.layer.value = viewer.add_image(stack, name="z")
    widget.tile_size.value = 8
    ticks, seen = [], []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(5)
    done = [0]  # planes finished by the latest update so far: an update handled re-entrantly (while the layer
    # is drawn) may be emitted after a newer one, so the count of a single update can lag behind

    def record(update):
        done[0] = max(done[0], update.units_done)
        seen.append((done[0], "z x2 DIINN" in viewer.layers))

    widget.controller.updated.connect(record)
    run(qtbot, widget)
    timer.stop()
    assert (0, True) not in seen  # no layer before the first plane is done
    assert any(shown and planes < 4 for planes, shown in seen), seen  # shown while planes were still to come
    assert len(ticks) > 0  # the Qt event loop ran during the work
    out = viewer.layers["z x2 DIINN"]
    assert out.metadata["diinn"]["partial"] is False and out.metadata["diinn"]["planes_done"] == 4
    assert np.all(out.data.reshape(4, -1).max(axis=1) > 0)


def test_cancel_keeps_finished_planes_in_a_layer_marked_partial(setup, qtbot):
    viewer, widget = setup
    stack = np.random.default_rng(2).integers(100, 4000, (5, 16, 16)).astype(np.uint16)
    widget.layer.value = viewer.add_image(stack, name="z")
    widget.tile_size.value = 4  # 16 tiles a plane
    states = []
    widget.controller.state_changed.connect(states.append)
    cancel_at(qtbot, widget, when=lambda update: update.units_done == 2)
    assert states == [RunState.RUNNING, RunState.CANCELLING, RunState.CANCELLED]
    out = viewer.layers[-1]
    meta = out.metadata["diinn"]
    k = meta["planes_done"]
    assert k == 2 and meta["partial"] is True and meta["stopped"] == "cancelled"
    assert out.name == f"z x2 DIINN (partial: {k} of 5 planes)"
    assert np.all(out.data[:k].reshape(k, -1).max(axis=1) > 0) and not out.data[k:].any()


def test_updates_handled_out_of_order_leave_the_layer_whole(setup, qtbot):
    # nested event loops (napari drawing a layer) can deliver a later update before an earlier one ends
    viewer, widget = setup
    widget.layer.value = viewer.add_image(np.random.default_rng(8).integers(1, 4000, (3, 12, 12)).astype(np.uint16),
                                          name="z")
    default = widget.controller.worker_factory

    def reversed_updates(updates):
        def replay():
            seen = []
            while True:
                try:
                    seen.append(next(updates))
                except StopIteration as end:
                    yield from reversed(seen)  # the last plane first, the first tile last
                    return end.value
        return default(replay())

    widget.controller.worker_factory = reversed_updates
    counts = []
    widget.controller.updated.connect(lambda update: counts.append(update.units_done))
    run(qtbot, widget)
    out = viewer.layers["z x2 DIINN"]
    assert sorted(counts) == [1, 2, 3]  # one update a plane, delivered backwards (the last plane first)
    assert widget.state is RunState.FINISHED and out.metadata["diinn"]["planes_done"] == 3
    assert out.metadata["diinn"]["partial"] is False and np.all(out.data.reshape(3, -1).max(axis=1) > 0)


def test_settings_are_recorded_when_the_run_starts(setup, qtbot):
    viewer, widget = setup
    widget.layer.value = viewer.add_image(np.random.default_rng(3).integers(0, 9, (3, 12, 12)).astype(np.uint16))
    widget.controller.updated.connect(lambda _: setattr(widget.intensity, "value", "dtype"))
    run(qtbot, widget)
    assert widget.intensity.value == "dtype" and viewer.layers[-1].metadata["diinn"]["intensity"] == "auto"


def test_rgba_layers_keep_their_alpha(setup, rgb_weights, qtbot):
    viewer, widget = setup
    rgba = np.random.default_rng(4).integers(0, 255, (10, 12, 4)).astype(np.uint8)
    rgba[..., 3] = 255
    rgba[:5, :, 3] = 0
    layer = viewer.add_image(rgba, name="tile", rgb=True)
    assert layer.rgb
    widget.layer.value = layer
    widget.add_model_file(rgb_weights)
    run(qtbot, widget)
    out = viewer.layers["tile x2 DIINN"]
    assert out.rgb and out.data.shape == (20, 24, 4)
    assert np.all(out.data[:9, :, 3] == 0) and np.all(out.data[11:, :, 3] == 255)


# ---- preview of what is on screen --------------------------------------------------------------------
def test_preview_shows_exactly_the_run_result_of_the_visible_region(setup, qtbot):
    viewer, widget = setup
    image = np.random.default_rng(5).integers(0, 4000, (2, 40, 50)).astype(np.uint16)
    layer = viewer.add_image(image, name="cells", scale=(3.0, 0.5, 0.4), translate=(0, 10.0, -3.0))
    viewer.dims.current_step = (1, 0, 0)
    widget.layer.value = layer
    widget.factor_y.value = 2.5
    layer.corner_pixels = np.array([[1, 10, 12], [1, 25, 30]])  # what napari sets when the canvas draws
    plan = widget.plan()
    y0, y1, x0, x1 = window = widget.preview_window(plan)
    assert (y0, x0) == (25, 30) and 0 < y1 - y0 <= 100 * 1 and y1 <= 100 and x1 <= 125
    press(widget.preview_button)
    preview = wait_for_preview(qtbot, viewer, "cells DIINN preview")
    assert f"{y1 - y0} x {x1 - x0} px" in widget.info.value
    assert preview.metadata["diinn"]["preview_window"] == list(window)
    run(qtbot, widget)
    assert "cells DIINN preview" not in viewer.layers  # the real result replaces it
    full = viewer.layers["cells x2.5 DIINN"]
    np.testing.assert_array_equal(preview.data[0], full.data[1, y0:y1, x0:x1])
    # same place in the world: the preview's first pixel sits on the full result's pixel (1, y0, x0)
    np.testing.assert_allclose(preview.data_to_world((0, 0, 0)), full.data_to_world((1, y0, x0)))


def test_a_new_preview_replaces_the_old_one(setup, qtbot):
    viewer, widget = setup
    widget.layer.value = viewer.add_image(np.random.default_rng(6).integers(0, 255, (20, 20)).astype(np.uint8), name="a")
    for factor in (2.0, 3.0):
        widget.factor_y.value = factor
        press(widget.preview_button)
        wait_for_preview(qtbot, viewer, "a DIINN preview", ratio=factor)
    previews = [layer for layer in viewer.layers if layer.name.endswith("DIINN preview")]
    assert len(previews) == 1 and previews[0].metadata["diinn"]["size_ratio"] == [3.0, 3.0]
    assert "a DIINN preview" not in [layer.name for layer in widget.layer.choices if layer is not None]


def test_a_newer_preview_supersedes_one_still_running(setup, qtbot):
    viewer, widget = setup
    widget.layer.value = viewer.add_image(np.random.default_rng(9).integers(0, 255, (20, 20)).astype(np.uint8), name="a")
    for factor in (2.0, 3.0):  # the second press comes before the first preview is back
        widget.factor_y.value = factor
        press(widget.preview_button)
    qtbot.waitUntil(lambda: not widget.previews.busy, timeout=TIMEOUT)
    previews = [layer for layer in viewer.layers if layer.name.endswith("DIINN preview")]
    assert len(previews) == 1 and previews[0].metadata["diinn"]["size_ratio"] == [3.0, 3.0]


def test_consistency_and_trust_map_controls(setup, qtbot):
    viewer, widget = setup
    layer = viewer.add_image(np.random.default_rng(7).integers(0, 4000, (2, 12, 14)).astype(np.uint16), name="c",
                             scale=(1.0, 0.5, 0.5))
    widget.layer.value = layer
    widget.consistency.value = 3
    widget.trust_map.value = True
    run(qtbot, widget)
    out, trust = viewer.layers["c x2 DIINN"], viewer.layers["c x2 DIINN trust"]
    assert out.metadata["diinn"]["consistency"] == 3 and out.metadata["diinn"]["outlier_clamp"] == [-1.0, 2.0]
    assert trust.data.shape == out.data.shape and trust.data.dtype == np.float32 and trust.data.max() > 0
    np.testing.assert_allclose(trust.scale, out.scale)
    np.testing.assert_allclose(trust.translate, out.translate)


def test_bf16_precision_runs_and_is_recorded(setup, qtbot):
    viewer, widget = setup
    image = (np.add.outer(np.arange(20), np.arange(24)) * 100).astype(np.uint16)
    widget.layer.value = viewer.add_image(image, name="ramp")
    widget.precision.value = "bf16"
    run(qtbot, widget)
    out = viewer.layers["ramp x2 DIINN"]
    assert out.metadata["diinn"]["precision"] == "bf16"
    exact = upscale(image, 2, model=widget.plan().run.model)
    assert np.abs(out.data.astype(np.float64) - exact).max() <= 0.02 * (image.max() - image.min())


def test_float64_layers_keep_their_dtype(setup, qtbot):
    # one dtype rule for the library, the batch tool and the widget
    viewer, widget = setup
    widget.layer.value = viewer.add_image(np.linspace(-2.0, 3.0, 16 * 16).reshape(16, 16), name="f")
    run(qtbot, widget)
    assert viewer.layers["f x2 DIINN"].data.dtype == np.float64
