"""The widget's "adapt to each plane first" (Advanced): self-supervised adaptation in the worker, with progress
and Cancel, in a real viewer opened as napari's menu does (run under Xvfb: `xvfb-run -a pytest`)."""

import subprocess
import threading

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from diinn_napari import RunSettings, upscale  # noqa: E402
from diinn_napari._reproduce import command_argv  # noqa: E402
from diinn_napari._run import Phase, RunState  # noqa: E402
from diinn_napari.train.self_adapt import adapt_plane  # noqa: E402
from test_widget import TIMEOUT, cancel_at, errors, open_from_menu, press, run, shown  # noqa: E402,F401


def picture(shape=(40, 48), phase=0.0):
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]] / 4.0
    img = np.sin(x + phase) * np.cos(0.7 * y) + 0.5 * np.sin(0.2 * x * y / 4)
    return ((img - img.min()) / (img.max() - img.min()) * 50000).astype(np.uint16)


@pytest.fixture
def opened(make_napari_viewer, gray_weights):
    viewer = make_napari_viewer()
    widget = open_from_menu(viewer)
    widget.add_model_file(gray_weights)
    widget.advanced_group.toggleButton().click()  # the user opens Advanced
    return viewer, widget


def tick(widget, steps):
    assert widget.advanced_group.isAncestorOf(widget.self_adapt.native) and not shown(widget.self_adapt_steps)
    widget.self_adapt.native.click()
    assert widget.self_adapt.value and shown(widget.self_adapt_steps)
    widget.self_adapt_steps.value = steps


def test_each_plane_is_adapted_to_then_upscaled_and_the_copied_command_does_the_same(opened, qtbot, tmp_path,
                                                                                    gray_weights):
    import tifffile
    from qtpy.QtWidgets import QApplication

    viewer, widget = opened
    path = tmp_path / "phase.tif"
    stack = np.stack([picture(), picture(phase=1.0)])
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZYX"})
    (layer,) = viewer.open(str(path))
    widget.layer.value = layer
    tick(widget, 3)
    assert "each plane adapted to first (3 steps" in widget.info.value
    updates, texts = [], []
    widget.controller.updated.connect(lambda update: (updates.append(update),
                                                      texts.append(widget.controller.progress_text)))
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED
    # each plane adapted to (while 0, then 1 plane was done), each upscaled after its adaptation
    adapting = {u.units_done for u in updates if u.phase is Phase.ADAPTING_PLANE}
    assert adapting == {0, 1} and updates[0].phase is Phase.ADAPTING_PLANE
    assert max(u.done for u in updates if u.phase is Phase.ADAPTING_PLANE) <= 3
    assert any(t.startswith("DIINN adapting to the plane, plane 1 of 2, steps") for t in texts)
    result = viewer.layers["phase x2 DIINN"]
    assert result.metadata["diinn"]["self_adapt_steps"] == 3 and result.data.shape == (2, 80, 96)
    settings = RunSettings(scale=2, model=gray_weights, device="cpu")
    for z in range(2):  # the library's adaptation of the same plane makes the same pixels
        adapted = adapt_plane(stack[z], (2.0, 2.0), settings, 3)
        expected = upscale(stack[z], settings=settings.replace(model=adapted.model))
        assert np.abs(result.data[z].astype(int) - expected.astype(int)).max() <= 1

    press(widget.copy_command)  # the batch line says --self-adapt 3 and writes the same pixels
    command = QApplication.clipboard().text()
    assert "--self-adapt 3" in command
    done = subprocess.run(command_argv(command), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    written = tifffile.imread(tmp_path / "diinn" / "phase.tif")
    assert written.shape == result.data.shape and np.abs(written.astype(int) - result.data.astype(int)).max() <= 1

    press(widget.copy_python)  # and the script adapts each plane as the run did
    script = QApplication.clipboard().text()
    assert "adapt_plane(plane, (2.0, 2.0), settings, 3, rgb=False)" in script
    namespace = {}
    exec(compile(script, "copied.py", "exec"), namespace)
    assert np.abs(namespace["result"].astype(int) - result.data.astype(int)).max() <= 1


def test_cancel_during_the_adaptation_stops_it_and_keeps_nothing(opened, qtbot):
    viewer, widget = opened
    widget.layer.value = viewer.add_image(np.stack([picture(), picture(phase=1.0)]), name="s")
    tick(widget, 100000)  # hours: only the cancel ends it
    cancel_at(qtbot, widget, when=lambda update: update.phase is Phase.ADAPTING_PLANE and update.done >= 1)
    qtbot.waitUntil(lambda: not any(t.name == "diinn-adapt" for t in threading.enumerate()), timeout=TIMEOUT)
    assert len(viewer.layers) == 1 and widget.run_button.text == "Run" and widget.state is RunState.CANCELLED


def test_it_is_refused_above_x2_and_not_offered_for_isotropic_voxels(opened, qtbot, errors):
    viewer, widget = opened
    widget.layer.value = viewer.add_image(picture(), name="p")
    tick(widget, 5)
    widget.factor_y.value = 3.0
    assert "measured to help up to x2" in widget.info.value and "untick it" in widget.info.value
    press(widget.run_button)
    assert not widget.busy and any("measured to help up to x2" in e for e in errors())
    assert len(viewer.layers) == 1
    widget.size_mode.value = "isotropic voxels"
    assert not shown(widget.self_adapt) and not shown(widget.self_adapt_steps)
