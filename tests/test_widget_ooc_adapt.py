"""Store mode with "adapt to each plane first": each plane adapted to once, then its blocks written with that copy
(xvfb-run -a pytest)."""

import numpy as np
import pytest

napari = pytest.importorskip("napari")
zarr = pytest.importorskip("zarr")

from test_widget import cancel_at, run, setup  # noqa: F401 (setup: a fixture)
from test_widget_ooc import run_to_store, written_blocks
from test_widget_ooc_rgb import ome_image

from diinn_napari._run import Phase, RunState
from diinn_napari.io.omezarr import BlockStore

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def waves(shape, phase=0.0):
    y, x = np.mgrid[0:shape[0], 0:shape[1]] / 4.0
    img = np.sin(x + phase) * np.cos(0.7 * y) + 0.5 * np.sin(0.2 * x * y / 4)
    return ((img - img.min()) / (img.max() - img.min()) * 50000).astype(np.uint16)


def adapting(widget, layer, steps=2):
    widget.layer.value = layer
    widget.self_adapt.value = True
    widget.self_adapt_steps.value = steps


def test_adapted_planes_written_to_a_store_equal_the_in_memory_result(setup, qtbot, tmp_path):
    viewer, widget = setup
    layer = viewer.add_image(np.stack([waves((40, 48)), waves((40, 48), 1.0)]), name="waves")
    adapting(widget, layer)
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED
    memory = np.asarray(widget.result.data)

    path = tmp_path / "adapted.ome.zarr"
    widget.to_zarr.value = True
    widget.zarr_path.value = str(path)
    assert f"written to OME-Zarr {path}" in widget.info.value and "each plane adapted to first" in widget.info.value
    phases = []
    widget.controller.updated.connect(lambda update: phases.append((update.phase, update.units_done)))
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED and widget.result.multiscale
    assert {units for phase, units in phases if phase is Phase.ADAPTING_PLANE} == {0, 1}  # each plane, in turn
    np.testing.assert_array_equal(ome_image(path)[0][0], memory)
    record = zarr.open_group(str(path), mode="r").attrs["diinn-napari"]
    assert record["self_adapt"] == {"steps": 2, "seed": 0, "each": "plane"}


def test_a_cancelled_adapted_store_resumes_adapting_only_the_unfinished_plane(setup, qtbot, tmp_path):
    viewer, widget = setup
    stack = np.stack([waves((300, 280)), waves((300, 280), 1.0)])  # x2: 600 x 560, 4 blocks a plane
    adapting(widget, viewer.add_image(stack, name="waves"))
    clean = run_to_store(qtbot, widget, tmp_path / "clean.ome.zarr")

    path = tmp_path / "resumed.ome.zarr"
    widget.zarr_path.value = str(path)
    cancel_at(qtbot, widget, when=lambda u: u.stored is not None and u.stored.blocks_done >= 5)  # in plane 1
    assert widget.state is RunState.CANCELLED
    assert 5 <= written_blocks(path) < 8
    phases = []
    widget.controller.updated.connect(lambda update: phases.append((update.phase, update.units_done)))
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED
    assert {units for phase, units in phases if phase is Phase.ADAPTING_PLANE} == {1}  # plane 0 was not adapted again
    assert not (path / BlockStore.LEDGER).exists()
    for a, b in zip(ome_image(path)[0], ome_image(clean)[0], strict=True):
        np.testing.assert_array_equal(a, b)  # plane 1 adapted to again, the same copy: the same bits


def test_adapted_planes_with_the_trust_map_fill_both_stores_as_in_memory(setup, qtbot, tmp_path):
    viewer, widget = setup
    adapting(widget, viewer.add_image(np.stack([waves((40, 48)), waves((40, 48), 2.0)]), name="waves"))
    widget.trust_map.value = True
    run(qtbot, widget)
    memory = np.asarray(widget.result.data)
    memory_trust = np.asarray(viewer.layers["waves x2 DIINN trust"].data)
    widget.to_zarr.value = True
    widget.zarr_path.value = str(tmp_path / "both.ome.zarr")
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED
    np.testing.assert_array_equal(ome_image(tmp_path / "both.ome.zarr")[0][0], memory)
    trust = ome_image(tmp_path / "both.trust.ome.zarr")[0][0]
    assert memory_trust.any()
    np.testing.assert_allclose(trust, memory_trust, rtol=1e-5, atol=1e-6 * float(memory_trust.max()))
