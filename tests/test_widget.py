"""The napari widget in a real viewer (run under Xvfb: `xvfb-run -a pytest`)."""

import subprocess
import sys

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from diinn_napari import _widget  # noqa: E402
from diinn_napari._widget import DIINNWidget  # noqa: E402
from diinn_napari.weights import save_weights  # noqa: E402

from conftest import tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("w")
    return str(save_weights(tiny_model(), folder / "gray.safetensors")), str(save_weights(tiny_model(3), folder / "rgb.safetensors"))


@pytest.fixture
def setup(make_napari_viewer, weights):
    viewer = make_napari_viewer()
    widget = DIINNWidget(viewer)
    viewer.window.add_dock_widget(widget, name="DIINN")
    widget.add_model_file(weights[0])
    return viewer, widget


def run(qtbot, widget, timeout=60000):
    worker = widget.start(widget.plan(), start_thread=False)
    with qtbot.waitSignal(worker.finished, timeout=timeout):
        worker.start()
    return worker


def spot_image(shape, at, dtype=np.uint16):
    image = np.full(shape, 100, dtype)
    image[at] = 4000
    return image


def test_importing_the_plugin_does_not_import_torch():
    code = "import sys, diinn_napari, diinn_napari._widget, diinn_napari._sample_data; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_output_overlays_the_source_exactly(setup, qtbot):
    viewer, widget = setup
    layer = viewer.add_image(spot_image((20, 24), (7, 15)), scale=(0.5, 0.4), translate=(10.0, -3.0), name="cells",
                             contrast_limits=(0, 3000))
    points = viewer.add_points([[10 + 7 * 0.5, -3 + 15 * 0.4]], name="landmark")
    widget.layer.value = layer
    widget.factor_y.value = 2.5
    run(qtbot, widget)
    out = viewer.layers["cells x2.5 DIINN"]
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
    assert widget.plan()["out"] == (15, 60)
    widget.size_mode.value = "pixel size"
    widget.pixel_size.value = 0.2
    assert widget.plan()["out"] == (25, 50)
    widget.size_mode.value = "output shape"
    widget.output_y.value, widget.output_x.value = 33, 44
    assert widget.plan()["out"] == (33, 44)
    assert "33 x 44 uint8" in widget.info.value and "MiB" in widget.info.value and "cpu" in widget.info.value


def test_rgb_layer_picks_the_rgb_model(setup, weights, qtbot):
    viewer, widget = setup
    widget.layer.value = viewer.add_image(np.zeros((12, 10, 3), np.uint8), rgb=True)
    widget.model.value = "auto"
    assert widget.plan()["model"] == "rgb"
    widget.add_model_file(weights[1])
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
    widget.tile_size.value = 8  # 1024 tiles: far more than run before the cancel arrives
    worker = widget.start(widget.plan(), start_thread=False)
    assert widget.run_button.text == "Cancel"
    worker.yielded.connect(lambda _: widget._run_or_cancel())
    with qtbot.waitSignal(worker.finished, timeout=60000):
        worker.start()
    assert len(viewer.layers) == 1 and widget.run_button.text == "Run"


def test_a_bad_choice_shows_an_error_notification(setup, weights, qtbot, monkeypatch):
    viewer, widget = setup
    errors = []
    monkeypatch.setattr(_widget, "show_error", errors.append)
    widget.layer.value = viewer.add_image(np.zeros((8, 8), np.uint8))
    widget.add_model_file(weights[1])  # an RGB model for a gray layer
    run(qtbot, widget)
    assert len(errors) == 1 and "3-channel" in errors[0]
    widget.size_mode.value = "output shape"
    widget.output_y.value = 4  # smaller than the input
    widget._run_or_cancel()
    assert "only upscales" in errors[-1]
    assert len(viewer.layers) == 1


def test_sample_data_opens_offline(make_napari_viewer):
    viewer = make_napari_viewer()
    for key in ("cell", "thermal", "satellite"):
        viewer.open_sample("diinn-napari", key)
    assert len(viewer.layers) == 3 and viewer.layers[-1].rgb


def test_manifest_validates_with_imports():
    done = subprocess.run(["npe2", "validate", "diinn-napari", "--imports"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
