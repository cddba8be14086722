"""Store mode (results larger than memory) for RGB / RGBA layers: the colour as NGFF's c axis (xvfb-run -a pytest)."""

import warnings

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("zarr")

from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from test_widget import cancel_at, errors, run, setup  # noqa: F401 (errors, setup: fixtures)
from test_widget_ooc import infos, run_to_store, written_blocks  # noqa: F401 (infos: a fixture)

from diinn_napari._run import RunState
from diinn_napari.io.omezarr import BlockStore

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def ome_image(path):
    """The store's first image as ome-zarr-py reads it: its levels (numpy) and its metadata."""
    node = list(Reader(parse_url(str(path)))())[0]
    return [np.asarray(level) for level in node.data], node.metadata


def photo(viewer, rng, shape, name="photo"):
    data = rng.integers(0, 255, shape, dtype=np.uint8)
    return viewer.add_image(data, name=name, rgb=True, scale=(0.5, 0.4), translate=(3.0, -2.0))


def in_memory_then_store(qtbot, widget, path):
    """Run the current controls in memory, then into the store at ``path``: (the in-memory result, the store's layer)."""
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED and not widget.result.multiscale
    memory = np.asarray(widget.result.data)
    widget.to_zarr.value = True
    widget.zarr_path.value = str(path)
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED
    return memory, widget.result


def test_an_rgb_result_is_stored_with_a_c_axis_and_shown_as_an_rgb_multiscale_layer(setup, rgb_weights, qtbot,
                                                                                   tmp_path):
    viewer, widget = setup
    widget.add_model_file(rgb_weights)
    layer = photo(viewer, np.random.default_rng(1), (300, 260, 3))  # x2: 600 x 520, 4 blocks, 2 levels
    widget.layer.value = layer
    path = tmp_path / "photo.ome.zarr"
    memory, result = in_memory_then_store(qtbot, widget, path)
    assert memory.shape == (600, 520, 3)
    assert result.rgb and result.multiscale and result.metadata["diinn"]["store"] == str(path)
    assert [tuple(level.shape) for level in result.data] == [(600, 520, 3), (300, 260, 3)]
    np.testing.assert_array_equal(np.asarray(result.data[0]), memory)
    np.testing.assert_array_equal(np.asarray(result.data[1][10:20, 30:40]), np.asarray(result.data[1])[10:20, 30:40])

    levels, meta = ome_image(path)
    assert [a["name"] for a in meta["axes"]] == ["c", "y", "x"] and meta["axes"][0]["type"] == "channel"
    assert [level.shape for level in levels] == [(3, 600, 520), (3, 300, 260)]
    np.testing.assert_array_equal(np.moveaxis(levels[0], 0, -1), memory)
    assert meta["channel_names"] == ["red", "green", "blue"]
    assert [list(map(float, ramp[-1])) for ramp in meta["colormap"]] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    in_memory = viewer.layers["photo x2 DIINN"]  # the same placement as the in-memory layer
    np.testing.assert_allclose(result.scale, in_memory.scale)
    np.testing.assert_allclose(result.translate, in_memory.translate)
    # napari-ome-zarr opens it as three coloured channel layers (what an NGFF viewer makes of a c axis)
    channels = viewer.open(str(path), plugin="napari-ome-zarr")
    assert [layer.name for layer in channels] == [f"photo.ome.zarr: {c}" for c in ("red", "green", "blue")]
    assert [layer.colormap.name for layer in channels] == ["red", "green", "blue"]
    assert all(layer.multiscale for layer in channels) and channels[-1].blending == "additive"
    for k, layer in enumerate(channels):
        np.testing.assert_array_equal(np.asarray(layer.data[0]), memory[..., k])


def test_an_rgb_store_cancelled_keeps_its_blocks_and_a_rerun_resumes_to_the_uninterrupted_result(
        setup, rgb_weights, qtbot, tmp_path, infos):
    viewer, widget = setup
    widget.add_model_file(rgb_weights)
    layer = photo(viewer, np.random.default_rng(2), (2, 160, 160, 3))  # x4: 2 planes of 640 x 640, 4 blocks each
    widget.layer.value = layer
    widget.factor_y.value = 4.0
    clean = run_to_store(qtbot, widget, tmp_path / "clean.ome.zarr")

    path = tmp_path / "resumed.ome.zarr"
    widget.zarr_path.value = str(path)
    viewer.dims.set_point(0, 0.0)  # the first plane on screen: its blocks come first
    on_screen = []

    def look(update):  # mid-run, before the Cancel: the rgb layer over the store shows the blocks done
        if update.stored is not None and update.stored.blocks_done >= 3 and not on_screen:
            with warnings.catch_warnings():  # napari has no public accessor of the displayed slice
                warnings.simplefilter("ignore", FutureWarning)
                on_screen.append(np.asarray(widget.result._slice.image.raw).copy())

    widget.controller.updated.connect(look)
    cancel_at(qtbot, widget, when=lambda u: u.stored is not None and u.stored.blocks_done >= 3)
    widget.controller.updated.disconnect(look)
    assert widget.state is RunState.CANCELLED
    assert on_screen and on_screen[0].shape[-1] == 3 and on_screen[0].any()
    kept = written_blocks(path)
    assert 3 <= kept < 8
    partial = widget.result
    assert partial.rgb and partial.name.endswith(f"(partial: {partial.metadata['diinn']['blocks_done']} of 8 blocks)")
    seen = infos()
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED
    assert any(f"resumed: {kept} of 8 blocks were done" in m for m in infos()[len(seen):])
    assert not (path / BlockStore.LEDGER).exists()
    resumed, meta = ome_image(path)
    assert [a["name"] for a in meta["axes"]] == ["c", "z", "y", "x"]
    for a, b in zip(resumed, ome_image(clean)[0], strict=True):
        np.testing.assert_array_equal(a, b)  # every level, bit for bit
    assert resumed[0].shape == (3, 2, 640, 640)
    np.testing.assert_array_equal(np.asarray(widget.result.data[0]), np.moveaxis(resumed[0], 0, -1))


def test_an_rgba_result_keeps_its_alpha_in_the_store(setup, rgb_weights, qtbot, tmp_path):
    viewer, widget = setup
    widget.add_model_file(rgb_weights)
    rgba = np.random.default_rng(3).integers(0, 255, (40, 48, 4)).astype(np.uint8)
    rgba[..., 3] = 255
    rgba[:20, :, 3] = 0
    widget.layer.value = viewer.add_image(rgba, name="tile", rgb=True)
    path = tmp_path / "tile.ome.zarr"
    memory, result = in_memory_then_store(qtbot, widget, path)
    assert result.rgb and result.data[0].shape == (80, 96, 4)
    levels, meta = ome_image(path)
    assert levels[0].shape == (4, 80, 96) and meta["channel_names"] == ["red", "green", "blue", "alpha"]
    np.testing.assert_array_equal(np.moveaxis(levels[0], 0, -1), memory)
    assert np.all(levels[0][3, :38] == 0) and np.all(levels[0][3, 42:] == 255)


def test_an_rgb_store_result_saved_from_napari_as_ome_zarr_keeps_its_colour_and_place(setup, rgb_weights, qtbot,
                                                                                        tmp_path):
    viewer, widget = setup
    widget.add_model_file(rgb_weights)
    widget.layer.value = photo(viewer, np.random.default_rng(8), (40, 48, 3))
    widget.to_zarr.value = True
    widget.zarr_path.value = str(tmp_path / "photo.ome.zarr")
    run(qtbot, widget)
    result = widget.result
    viewer.layers.selection.select_only(result)
    assert list(viewer.layers.selection) == [result]
    saved = tmp_path / "saved.ome.zarr"
    viewer.layers.save(str(saved), selected=True, plugin="diinn-napari")  # File > Save Selected Layers
    levels, meta = ome_image(saved)
    assert [a["name"] for a in meta["axes"]] == ["c", "y", "x"] and meta["channel_names"] == ["red", "green", "blue"]
    np.testing.assert_array_equal(levels[0], ome_image(tmp_path / "photo.ome.zarr")[0][0])
    import zarr

    transforms = zarr.open_group(str(saved), mode="r").attrs["ome"]["multiscales"][0]["datasets"][0][
        "coordinateTransformations"]
    np.testing.assert_allclose(transforms[0]["scale"], [1.0, *result.scale])
    np.testing.assert_allclose(transforms[1]["translation"], [0.0, *result.translate])


def test_an_rgb_layer_above_the_budget_goes_to_a_store():
    from diinn_napari._planner import Request, Source, plan_run

    rgb = Source("photo", shape=(40, 50, 3), dtype=np.dtype("uint8"), rgb=True)
    above = plan_run(rgb, Request(memory_budget=1000))
    assert above.store is not None and "above the memory budget" in above.memory_note
    assert plan_run(rgb, Request(to_zarr=True)).store is not None
