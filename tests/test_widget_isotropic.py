"""The widget's "isotropic voxels" mode in a real viewer (run under Xvfb: `xvfb-run -a pytest`)."""

import threading
import time

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from diinn_napari._planner import ISOTROPIC  # noqa: E402
from diinn_napari._run import Phase, RunState  # noqa: E402
from diinn_napari.adapt import adapt  # noqa: E402
from diinn_napari.isotropic import isotropic  # noqa: E402
from diinn_napari.isotropic_plan import default_axial_sigma  # noqa: E402

from test_widget import TIMEOUT, cancel_at, errors, held_worker, open_widget, press, run, shown  # noqa: E402, F401


def blobs(shape=(9, 24, 24), seed=0, peak=3000) -> np.ndarray:
    """An anisotropic uint16 phantom: Gaussian blobs (wide enough to show in every XZ/YZ plane)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    vol = np.full(shape, 0.05)
    for _ in range(5):
        c = rng.random(3) * np.array(shape)
        vol += np.exp(-(((z - c[0]) / 1.2) ** 2 + ((y - c[1]) / 2.5) ** 2 + ((x - c[2]) / 2.5) ** 2) / 2)
    return (vol / vol.max() * peak).astype(np.uint16)


@pytest.fixture
def iso(make_napari_viewer, gray_weights):
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    widget.add_model_file(gray_weights)
    widget.size_mode.value = ISOTROPIC
    return viewer, widget


def test_output_overlays_the_source_plane_by_plane(iso, qtbot):
    viewer, widget = iso
    vol = blobs()
    layer = viewer.add_image(vol, name="stack", scale=(3.0, 1.0, 1.0), translate=(5.0, 2.0, -1.0),
                             contrast_limits=(0, 3000))
    widget.layer.value = layer
    widget.z_consistency.value = 1  # with back-projection the output planes on input planes equal them
    assert "25 x 24 x 24 uint16" in widget.info.value and "MiB" in widget.info.value
    assert "Z step 3 -> 1 (9 -> 25 planes)" in widget.info.value
    assert not widget.preview_button.enabled and not shown(widget.plane_only) and shown(widget.z_target)
    run(qtbot, widget)
    out = viewer.layers["stack isotropic z1 DIINN"]
    assert out.data.shape == (25, 24, 24) and out.data.dtype == np.uint16
    np.testing.assert_allclose(out.scale, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(out.translate, (5.0, 2.0, -1.0))
    assert out.contrast_limits == [0, 3000]
    for j in range(9):  # input plane j sits in the world where output plane 3j is, and holds the same pixels
        world = layer.data_to_world((j, 7, 11))
        np.testing.assert_allclose(out.world_to_data(world), (3 * j, 7, 11), atol=1e-9)
        np.testing.assert_allclose(out.data[3 * j].astype(float), vol[j].astype(float), atol=2)
    meta = out.metadata["diinn"]
    assert meta["size_mode"] == "isotropic voxels" and meta["source"] == "stack"
    assert meta["spacing_in"] == [3.0, 1.0, 1.0] and meta["z_step_in"] == 3.0 and meta["z_step_out"] == 1.0
    assert meta["target_z_step"] is None and meta["z_planes"] == [9, 25] and meta["consistency"] == 1
    assert meta["adapt_steps"] == 0 and meta["partial"] is False
    assert meta["rows_done"] == meta["rows_total"] == 24
    # the model's reconstruction, not a copy of the input: the library gives the same voxels
    np.testing.assert_array_equal(out.data, isotropic(vol, (3.0, 1.0, 1.0), model=widget.model.value, device="cpu",
                                                      consistency=1))


def test_target_z_step_and_leading_axes(iso, qtbot):
    viewer, widget = iso
    tz = np.stack([blobs((5, 12, 14), seed=s) for s in range(2)])  # T, Z, Y, X
    layer = viewer.add_image(tz, name="tz", scale=(7.0, 2.0, 0.5, 0.5), translate=(1.0, -4.0, 0.0, 0.0))
    widget.layer.value = layer
    widget.z_target.value = 0.75
    plan = widget.plan()
    assert plan.shape == (2, 11, 12, 14)  # floor(4 * 2 / 0.75) + 1
    widget.out_dtype.value = "float32"
    run(qtbot, widget)
    out = viewer.layers[-1]
    assert out.data.shape == (2, 11, 12, 14) and out.data.dtype == np.float32
    np.testing.assert_allclose(out.scale, (7.0, 0.75, 0.5, 0.5))
    np.testing.assert_allclose(out.translate, (1.0, -4.0, 0.0, 0.0))
    assert out.metadata["diinn"]["target_z_step"] == 0.75 and out.metadata["diinn"]["z_step_out"] == 0.75
    assert np.all(out.data.reshape(2, -1).max(axis=1) > 0)
    # the last output plane (k = 10, at Z 7.5) lies inside the stack (last input plane at Z 8)
    assert out.data_to_world((0, 10, 0, 0))[1] <= layer.data_to_world((0, 4, 0, 0))[1]


def test_cancel_keeps_the_finished_volumes_in_a_layer_marked_partial(iso, qtbot):
    viewer, widget = iso
    stack = np.stack([blobs((4, 16, 16), seed=s) for s in range(3)])  # 3 volumes: 3 blocks of 16 rows
    widget.layer.value = viewer.add_image(stack, name="t", scale=(1.0, 2.0, 1.0, 1.0))
    widget.tile_size.value = 2  # many network calls per volume
    cancel_at(qtbot, widget, when=lambda update: update.units_done >= 16)  # when the first volume is done
    out = viewer.layers[-1]
    meta = out.metadata["diinn"]
    k = meta["rows_done"]
    assert meta["partial"] is True and meta["stopped"] == "cancelled" and k == 16
    assert out.name == f"t isotropic z1 DIINN (partial: {k} of 48 Y rows)"
    volumes = k // 16
    assert np.all(out.data[:volumes].reshape(volumes, -1).max(axis=1) > 0) and not out.data[volumes:].any()
    assert widget.run_button.text == "Run" and widget.state is RunState.CANCELLED and widget.result.name == out.name


def test_a_cancel_after_the_last_block_keeps_the_whole_result(iso, qtbot):
    """The run may end with `aborted` or (cancel inside the last step) with neither `returned` nor `aborted`."""
    viewer, widget = iso
    stack = np.stack([blobs((4, 16, 16), seed=s) for s in range(2)])
    widget.layer.value = viewer.add_image(stack, name="t", scale=(1.0, 2.0, 1.0, 1.0))
    cancel_at(qtbot, widget, when=lambda update: update.units_done >= 32)  # when the last block has arrived
    out = viewer.layers[-1]
    meta = out.metadata["diinn"]
    assert meta["partial"] is False and "stopped" not in meta and meta["rows_done"] == 32
    assert out.name == "t isotropic z1 DIINN" and np.all(out.data.reshape(2, -1).max(axis=1) > 0)
    assert widget.run_button.text == "Run" and widget.state is RunState.FINISHED


def test_adapt_to_this_stack_then_reconstruct(iso, gray_weights, qtbot):
    viewer, widget = iso
    vol = blobs((6, 20, 20))
    widget.layer.value = viewer.add_image(vol, name="s", scale=(2.0, 1.0, 1.0))
    widget.adapt.value = True
    assert shown(widget.adapt_steps)
    widget.adapt_steps.value = 3
    assert "after 3 adaptation steps" in widget.info.value
    phases = []
    widget.controller.updated.connect(lambda update: phases.append(update.phase))
    run(qtbot, widget)
    out = viewer.layers["s isotropic z1 DIINN"]
    assert list(dict.fromkeys(phases)) == [Phase.ADAPTING, Phase.UPSCALING]  # adaptation first, then the reconstruction
    meta = out.metadata["diinn"]
    assert meta["adapt_steps"] == 3 and meta["axial_sigma"] == pytest.approx(default_axial_sigma(2.0))
    assert meta["partial"] is False and out.data.shape == (11, 20, 20)
    # the adapted model made it: the same adaptation in the library gives the same voxels, zero-shot does not
    adapted = adapt(vol, (2.0, 1.0, 1.0), model=gray_weights, steps=3, device="cpu")
    expected = isotropic(vol, (2.0, 1.0, 1.0), model=adapted, device="cpu")
    assert np.abs(out.data.astype(int) - expected.astype(int)).max() <= 1
    assert not np.array_equal(out.data, isotropic(vol, (2.0, 1.0, 1.0), model=gray_weights, device="cpu"))


def test_cancel_during_adaptation_stops_it(iso, qtbot):
    viewer, widget = iso
    widget.layer.value = viewer.add_image(blobs((6, 20, 20)), name="s", scale=(2.0, 1.0, 1.0))
    widget.adapt.value = True
    widget.adapt_steps.value = 100000  # hours: only the cancel ends it
    cancel_at(qtbot, widget, when=lambda update: update.done >= 1)
    qtbot.waitUntil(lambda: not any(t.name == "diinn-adapt" for t in threading.enumerate()), timeout=TIMEOUT)
    assert len(viewer.layers) == 1 and widget.run_button.text == "Run" and widget.state is RunState.CANCELLED


def test_a_cancel_the_adaptation_sees_before_the_worker_is_a_cancel_not_a_failure(iso, qtbot, errors):
    # The adaptation thread can see the Cancel and end before the worker's next update: the work then
    # raises Cancelled instead of being stopped at a yield. Made certain here: the worker asks for its
    # next update only once the press has been made and the adaptation thread has ended.
    viewer, widget = iso
    widget.layer.value = viewer.add_image(blobs((6, 20, 20)), name="s", scale=(2.0, 1.0, 1.0))
    widget.adapt.value = True
    widget.adapt_steps.value = 100000

    def adaptation_ended():  # in the worker's thread, where qtbot cannot wait
        deadline = time.monotonic() + TIMEOUT / 1000
        while any(t.name == "diinn-adapt" for t in threading.enumerate()):
            if time.monotonic() > deadline:
                raise TimeoutError("the adaptation did not stop at the Cancel")
            time.sleep(0.01)

    cancel_at(qtbot, widget, when=lambda update: update.done >= 1, then=adaptation_ended)
    assert widget.state is RunState.CANCELLED and errors() == []
    assert len(viewer.layers) == 1 and widget.run_button.text == "Run"


@pytest.mark.parametrize("case", ["2d", "isotropic", "rgb", "target"])
def test_layers_it_cannot_take_get_a_clear_notification(iso, qtbot, errors, case):
    viewer, widget = iso
    if case == "2d":
        layer = viewer.add_image(np.zeros((16, 16), np.uint16), name="plane")
        expected = ["'plane' is 2D", "Z stack"]
    elif case == "isotropic":
        layer = viewer.add_image(np.zeros((4, 16, 16), np.uint16), name="cube")  # scale (1, 1, 1)
        expected = ["no Z anisotropy", ".scale = ", "target Z step"]
    elif case == "rgb":
        layer = viewer.add_image(np.zeros((4, 16, 16, 3), np.uint8), rgb=True, name="colour")
        expected = ["RGB", "single-channel"]
    else:
        layer = viewer.add_image(np.zeros((4, 16, 16), np.uint16), name="s", scale=(2.0, 1.0, 1.0))
        widget.z_target.value = 3.0  # coarser than the stack's own Z step
        expected = ["larger than the input Z step"]
    widget.layer.value = layer
    for text in expected:
        assert text in widget.info.value, widget.info.value
    press(widget.run_button)
    assert len(errors()) == 1 and all(text in errors()[0] for text in expected), errors()
    assert widget.state is RunState.IDLE and len(viewer.layers) == 1
    assert not widget.preview_button.enabled  # the preview is plane-wise: its button is off, and a call says why
    assert widget.preview() is False and "use Run" in errors()[-1]


@pytest.mark.parametrize("mode", ["factor", ISOTROPIC])
def test_a_cancel_handled_while_the_first_layer_is_added_still_marks_it_partial(iso, qtbot, monkeypatch, mode):
    # napari may run Qt's event loop while it adds a layer; the worker's last signals (aborted, finished)
    # are then handled inside add_image, before the widget holds the new layer
    viewer, widget = iso
    widget.size_mode.value = mode
    stack = np.stack([blobs((4, 16, 16), seed=s) for s in range(3)])
    widget.layer.value = viewer.add_image(stack, name="t", scale=(1.0, 2.0, 1.0, 1.0))
    widget.tile_size.value = 4
    real = type(viewer).add_image
    calls = []

    def add_image(self, *args, **kwargs):
        if not calls:  # the first output: the user cancels now, and Qt delivers the end of the run meanwhile
            press(widget.run_button)  # Cancel
            pressed.set()
            qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(viewer), "add_image", add_image)
    ended = []
    widget.controller.ended.connect(lambda state: ended.append((state, widget.result.name)))
    with held_worker(widget, when=lambda update: update.result is not None) as pressed:  # no end before the press
        run(qtbot, widget)
    out = viewer.layers[-1]
    meta = out.metadata["diinn"]
    unit = "rows" if mode == ISOTROPIC else "planes"
    assert meta["partial"] is True and meta["stopped"] == "cancelled", meta
    assert f"(partial: {meta[f'{unit}_done']} of " in out.name and meta[f"{unit}_done"] >= 1
    assert len(calls) == 1 and widget.result.name == out.name  # one output layer, not one per signal
    assert widget.state is RunState.CANCELLED and ended == [(RunState.CANCELLED, out.name)]  # announced once marked
