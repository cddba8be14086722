"""The widget's part 3 as a user meets it: defaults first, the source stays, remembered settings, reproduce,
follow the view, self-ensemble, progress. Opened from the menu, driven by its buttons (run under Xvfb)."""

import subprocess

import numpy as np
import pytest
import tifffile

napari = pytest.importorskip("napari")

from diinn_napari._reproduce import command_argv  # noqa: E402
from diinn_napari._run import RunState  # noqa: E402
from diinn_napari._widget import RESULT_MARK  # noqa: E402
from test_widget import (TIMEOUT, cancel_at, errors, open_from_menu, press, run, run_copied_python,  # noqa: E402,F401
                         wait_for_preview)


@pytest.fixture
def opened(make_napari_viewer, gray_weights):
    viewer = make_napari_viewer()
    widget = open_from_menu(viewer)
    widget.add_model_file(gray_weights)
    return viewer, widget


def test_defaults_first_and_the_rest_in_a_closed_advanced_group(opened, qtbot):
    viewer, widget = opened
    viewer.window._qt_window.show()
    viewer.add_image(np.zeros((8, 8), np.uint8), name="a")
    for control in (widget.layer, widget.size_mode, widget.factor_y, widget.model, widget.preview_button,
                    widget.run_button):
        assert control.native.isVisible(), control
    assert not widget.advanced_group.isExpanded()
    experts = (widget.tile_size, widget.intensity, widget.out_dtype, widget.precision, widget.consistency,
               widget.trust_map, widget.ensemble, widget.device, widget.plane_only, widget.restore_button)
    for control in experts:
        assert widget.advanced_group.isAncestorOf(control.native), control
        assert control.native.visibleRegion().isEmpty(), control  # nothing of it on screen
    assert widget.precision.tooltip and widget.consistency.tooltip and widget.ensemble.tooltip
    widget.advanced_group.toggleButton().click()  # the user opens it
    qtbot.waitUntil(lambda: not widget.consistency.native.visibleRegion().isEmpty(), timeout=5000)
    assert widget.advanced_group.isExpanded()


def test_the_source_stays_the_source_and_a_result_is_marked(opened, qtbot):
    viewer, widget = opened
    source = viewer.add_image(np.random.default_rng(1).integers(0, 255, (12, 10)).astype(np.uint8), name="src")
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED
    assert viewer.layers.selection.active.name == "src x2 DIINN"  # napari selected the result...
    assert widget.layer.value.name == "src"  # ...and the widget kept its source
    assert "output 24 x 20" in widget.info.value
    labels = [widget.layer.native.itemText(i) for i in range(widget.layer.native.count())]
    assert [label for label in labels if not label.startswith("---")] == ["src", "src x2 DIINN" + RESULT_MARK]
    widget.layer.value = viewer.layers["src x2 DIINN"]
    assert "is itself a DIINN result (of 'src')" in widget.info.value
    assert "output 48 x 40" in widget.info.value
    del source


def test_settings_are_remembered_across_sessions_and_restore_defaults(make_napari_viewer, gray_weights,
                                                                     remembered_settings):
    viewer = make_napari_viewer()
    widget = open_from_menu(viewer)
    widget.add_model_file(gray_weights)
    widget.factor_y.value = 3.5
    widget.consistency.value = 4
    widget.ensemble.value = True
    widget.size_mode.value = "pixel size"
    assert remembered_settings.is_file()
    viewer.close()
    again = open_from_menu(make_napari_viewer())  # napari restarted
    assert (again.factor_y.value, again.consistency.value, again.ensemble.value, again.size_mode.value) == (
        3.5, 4, True, "pixel size")
    assert again.model.value == gray_weights
    press(again.restore_button)
    assert (again.factor_y.value, again.consistency.value, again.ensemble.value, again.size_mode.value) == (
        2.0, 2, False, "factor")
    assert again.model.value == "auto"
    third = open_from_menu(make_napari_viewer())
    assert third.factor_y.value == 2.0 and not third.ensemble.value


def test_a_broken_settings_file_is_ignored(make_napari_viewer, remembered_settings):
    remembered_settings.write_text("{not json")
    widget = open_from_menu(make_napari_viewer())
    assert widget.factor_y.value == 2.0


def test_copy_as_command_makes_the_same_pixels_bit_for_bit(opened, qtbot, tmp_path):
    """A file opened in napari, run with the self-ensemble at an odd size; the copied batch line, run as a
    command, writes exactly the layer's data."""
    from qtpy.QtWidgets import QApplication

    viewer, widget = opened
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, np.random.default_rng(4).integers(100, 3000, (2, 11, 9)).astype(np.uint16),
                     metadata={"axes": "ZYX"})
    (layer,) = viewer.open(str(path))
    widget.layer.value = layer
    widget.size_mode.value = "output shape"
    widget.output_y.value, widget.output_x.value = 25, 19
    widget.ensemble.value = True
    widget.tile_size.value = 6
    run(qtbot, widget)
    result = viewer.layers["cells x2.27,2.11 DIINN"]
    assert result.metadata["diinn"]["ensemble"] is True
    press(widget.copy_command)
    command = QApplication.clipboard().text()
    assert command == widget.copied and "--ensemble" in command and "--tile-size 6" in command
    done = subprocess.run(command_argv(command), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    written = tifffile.imread(tmp_path / "diinn" / "cells.tif")
    assert written.dtype == result.data.dtype and written.shape == result.data.shape
    np.testing.assert_array_equal(written, result.data)

    script, again = run_copied_python(widget, tmp_path)  # and the script, run as a file
    assert "upscale(" in script and "ensemble=True" in script
    np.testing.assert_array_equal(again, result.data)


def test_copy_for_any_diinn_layer_and_a_clear_error_without_one(opened, qtbot, errors):
    from qtpy.QtWidgets import QApplication

    viewer, widget = opened
    press(widget.copy_python)
    assert any("no DIINN result" in e for e in errors())
    viewer.add_image(np.random.default_rng(2).integers(0, 255, (9, 8)).astype(np.uint8), name="mem")
    run(qtbot, widget)
    press(widget.copy_command)
    assert any("did not come from a file" in e for e in errors())
    viewer.add_image(np.zeros((5, 5), np.uint8), name="other")  # another layer selected now
    viewer.layers.selection.active = viewer.layers["mem x2 DIINN"]
    press(widget.copy_python)
    assert "viewer.layers['mem'].data" in QApplication.clipboard().text()


def test_follow_the_view_previews_again_after_the_camera_stops(opened, qtbot):
    viewer, widget = opened
    viewer.window._qt_window.show()
    layer = viewer.add_image(np.random.default_rng(5).integers(0, 255, (64, 64)).astype(np.uint8), name="a")
    widget.layer.value = layer
    widget.follow.native.click()  # on: a first preview at once
    preview = wait_for_preview(qtbot, viewer, "a DIINN preview")
    first = preview.metadata["diinn"]["made"]
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.zoom = camera.zoom * 3
    camera.center = (0, 20, 20)
    qtbot.waitUntil(lambda: "a DIINN preview" in viewer.layers
                    and viewer.layers["a DIINN preview"].metadata["diinn"]["made"] > first, timeout=TIMEOUT)
    y0, y1, x0, x1 = viewer.layers["a DIINN preview"].metadata["diinn"]["preview_window"]
    height, width = viewer.canvas.size
    assert y1 - y0 <= max(64, height) and x1 - x0 <= max(64, width)
    assert (y1 - y0, x1 - x0) != (128, 128)  # zoomed in: a part of the plane, not all of it
    widget.follow.native.click()  # off: the camera moves, nothing new
    qtbot.waitUntil(lambda: not widget.previews.busy, timeout=TIMEOUT)
    made = viewer.layers["a DIINN preview"].metadata["diinn"]["made"]
    camera.zoom = camera.zoom / 2
    qtbot.wait(900)
    assert viewer.layers["a DIINN preview"].metadata["diinn"]["made"] == made


def test_a_newer_preview_stops_the_older_worker(opened, qtbot):
    viewer, widget = opened
    widget.layer.value = viewer.add_image(np.random.default_rng(5).integers(0, 255, (300, 300)).astype(np.uint8),
                                          name="big")
    press(widget.preview_button)
    widget.factor_y.value = 2.5
    press(widget.preview_button)
    assert widget.previews.stopped == 1
    wait_for_preview(qtbot, viewer, "big DIINN preview", ratio=2.5)
    qtbot.waitUntil(lambda: not widget.previews.busy, timeout=TIMEOUT)


def test_progress_shows_planes_of_planes_and_the_time_left(opened, qtbot):
    viewer, widget = opened
    widget.layer.value = viewer.add_image(np.random.default_rng(6).integers(0, 255, (3, 16, 16)).astype(np.uint8),
                                          name="z")
    widget.tile_size.value = 4  # 16 tiles a plane
    seen = []
    widget.controller.updated.connect(lambda update: seen.append(widget.controller.progress_text))
    cancel_at(qtbot, widget, when=lambda update: update.units_done == 1 and update.done == 20)
    assert any("plane 1 of 3 (0 done), tiles" in text for text in seen)
    texts = [t for t in seen if "plane 2 of 3 (1 done)" in t]
    assert texts and all("left" in t for t in texts)
