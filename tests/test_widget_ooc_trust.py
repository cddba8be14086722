"""Store mode (results larger than memory) with the trust map: a second store beside the result (xvfb-run -a pytest)."""

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("zarr")

from test_widget import cancel_at, errors, run, setup  # noqa: F401 (errors, setup: fixtures)
from test_widget_ooc import infos, run_to_store, written_blocks  # noqa: F401 (infos: a fixture)
from test_widget_ooc_rgb import ome_image, photo

from diinn_napari._run import RunState
from diinn_napari.io.omezarr import BlockStore

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def cells(viewer, rng, shape, name="cells"):
    data = rng.integers(0, 4000, shape, dtype=np.uint16)
    return viewer.add_image(data, name=name, scale=(1.0, 0.5, 0.4), translate=(0.0, 3.0, -2.0))


def test_the_trust_map_goes_to_a_store_beside_the_result_and_equals_the_in_memory_map(setup, qtbot, tmp_path, infos):
    viewer, widget = setup
    layer = cells(viewer, np.random.default_rng(4), (2, 40, 48))
    widget.layer.value = layer
    widget.trust_map.value = True
    run(qtbot, widget)
    memory = np.asarray(widget.result.data)
    memory_trust = np.asarray(viewer.layers["cells x2 DIINN trust"].data)
    assert memory_trust.shape == (2, 80, 96) and memory_trust.any()
    viewer.layers.remove("cells x2 DIINN trust")

    path = tmp_path / "result.ome.zarr"
    widget.to_zarr.value = True
    widget.zarr_path.value = str(path)
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED
    trust_path = tmp_path / "result.trust.ome.zarr"
    trust = viewer.layers["cells x2 DIINN trust"]
    assert trust.multiscale and trust.metadata["diinn"]["store"] == str(trust_path)
    assert trust.contrast_limits[1] > 0
    np.testing.assert_array_equal(ome_image(path)[0][0], memory)
    levels, meta = ome_image(trust_path)
    assert levels[0].dtype == np.float32 and [a["name"] for a in meta["axes"]] == ["z", "y", "x"]
    np.testing.assert_allclose(levels[0], memory_trust, rtol=1e-5, atol=1e-6 * float(memory_trust.max()))
    np.testing.assert_allclose(trust.scale, widget.result.scale)
    assert not (trust_path / BlockStore.LEDGER).exists()  # finished with the result
    assert any(f"its trust map to {trust_path}" in m for m in infos())


def test_a_cancelled_store_with_its_trust_map_resumes_both_to_the_uninterrupted_result(setup, qtbot, tmp_path):
    viewer, widget = setup
    widget.layer.value = cells(viewer, np.random.default_rng(5), (2, 160, 160))  # x4: 8 blocks
    widget.factor_y.value = 4.0
    widget.trust_map.value = True
    run_to_store(qtbot, widget, tmp_path / "clean.ome.zarr")

    path = tmp_path / "resumed.ome.zarr"
    widget.zarr_path.value = str(path)
    cancel_at(qtbot, widget, when=lambda u: u.stored is not None and u.stored.blocks_done >= 3)
    assert widget.state is RunState.CANCELLED
    kept = written_blocks(path)
    assert 3 <= kept < 8 and written_blocks(tmp_path / "resumed.trust.ome.zarr") >= kept
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED
    for name in ("{}.ome.zarr", "{}.trust.ome.zarr"):
        for a, b in zip(ome_image(tmp_path / name.format("resumed"))[0], ome_image(tmp_path / name.format("clean"))[0],
                        strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_store_made_without_the_trust_map_is_not_taken_for_one_with_it(setup, qtbot, tmp_path, errors):
    viewer, widget = setup
    widget.layer.value = cells(viewer, np.random.default_rng(6), (1, 40, 48))
    widget.to_zarr.value = True
    path = tmp_path / "r.ome.zarr"
    widget.zarr_path.value = str(path)
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED
    widget.trust_map.value = True
    run(qtbot, widget)
    assert widget.state is RunState.FAILED
    assert any(f"{path} holds a result made with other settings (trust map: None there, True now)" in e
               for e in errors())


def test_an_rgb_result_in_a_store_has_a_one_value_per_pixel_trust_map(setup, rgb_weights, qtbot, tmp_path):
    viewer, widget = setup
    widget.add_model_file(rgb_weights)
    widget.layer.value = photo(viewer, np.random.default_rng(7), (40, 48, 3))
    widget.trust_map.value = True
    widget.to_zarr.value = True
    widget.zarr_path.value = str(tmp_path / "photo.ome.zarr")
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED and widget.result.rgb
    levels, meta = ome_image(tmp_path / "photo.trust.ome.zarr")
    assert levels[0].shape == (80, 96) and [a["name"] for a in meta["axes"]] == ["y", "x"]
    assert levels[0].any()
