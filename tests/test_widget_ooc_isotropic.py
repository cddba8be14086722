"""Store mode for isotropic voxels: the Z-resampled volume written band by band of Y rows, resumable
(xvfb-run -a pytest)."""

import numpy as np
import pytest

napari = pytest.importorskip("napari")
zarr = pytest.importorskip("zarr")

from test_widget import cancel_at, run
from test_widget_isotropic import blobs, iso  # noqa: F401 (iso: a fixture)
from test_widget_ooc import infos, run_to_store, written_blocks  # noqa: F401 (infos: a fixture)
from test_widget_ooc_rgb import ome_image

from diinn_napari._run import Phase, RunState
from diinn_napari.io.omezarr import BlockStore

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def bands_of_16_rows(monkeypatch):
    """Bands of 16 Y rows for a 25 x 70 x 40 result (so a small volume has several to cancel between)."""
    import diinn_napari._store as store

    monkeypatch.setattr(store, "BAND_VOXELS", 25 * 40 * 16)


def stack(viewer):
    return viewer.add_image(blobs((9, 70, 40)), name="stack", scale=(3.0, 1.0, 1.0), translate=(5.0, 2.0, -1.0))


def test_an_isotropic_result_in_a_store_equals_the_in_memory_volume_and_sits_where_it_does(iso, qtbot, tmp_path,
                                                                                       bands_of_16_rows):
    viewer, widget = iso
    widget.layer.value = stack(viewer)
    widget.z_consistency.value = 1
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED
    memory = np.asarray(widget.result.data)
    assert memory.shape == (25, 70, 40)

    path = tmp_path / "iso.ome.zarr"
    widget.to_zarr.value = True
    widget.zarr_path.value = str(path)
    assert f"written to OME-Zarr {path} (asked)" in widget.info.value
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED
    result = widget.result
    assert result.multiscale and not result.metadata["diinn"]["partial"]
    levels, meta = ome_image(path)
    assert [a["name"] for a in meta["axes"]] == ["z", "y", "x"]
    np.testing.assert_array_equal(levels[0], memory)
    assert zarr.open_group(str(path), mode="r")["0"].chunks == (1, 16, 40)
    in_memory = viewer.layers["stack isotropic z1 DIINN"]
    np.testing.assert_allclose(result.scale, in_memory.scale)
    np.testing.assert_allclose(result.translate, in_memory.translate)
    record = zarr.open_group(str(path), mode="r").attrs["diinn-napari"]
    assert record["isotropic"]["z_step_out"] == 1.0 and record["isotropic"]["planes"] == [9, 25]


def test_a_cancelled_isotropic_store_resumes_at_its_first_missing_band(iso, qtbot, tmp_path, bands_of_16_rows, infos):
    viewer, widget = iso
    widget.layer.value = stack(viewer)
    clean = run_to_store(qtbot, widget, tmp_path / "clean.ome.zarr")

    path = tmp_path / "resumed.ome.zarr"
    widget.zarr_path.value = str(path)
    cancel_at(qtbot, widget, when=lambda u: u.stored is not None and u.stored.blocks_done >= 50)  # 2 of 5 bands
    assert widget.state is RunState.CANCELLED
    kept = written_blocks(path)
    assert kept % 25 == 0 and 50 <= kept < 125  # whole bands: every output plane of them
    partial = widget.result
    assert partial.name.endswith(f"(partial: {kept} of 125 blocks)")
    seen = infos()
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED
    assert any(f"resumed: {kept} of 125 blocks were done" in m for m in infos()[len(seen):])
    assert not (path / BlockStore.LEDGER).exists()
    for a, b in zip(ome_image(path)[0], ome_image(clean)[0], strict=True):
        np.testing.assert_array_equal(a, b)


def test_isotropic_voxels_adapted_to_the_stack_into_a_store_resumes_to_the_same_volume(iso, qtbot, tmp_path,
                                                                                    bands_of_16_rows):
    viewer, widget = iso
    widget.layer.value = stack(viewer)
    widget.adapt.value = True
    widget.adapt_steps.value = 2
    run(qtbot, widget)
    memory = np.asarray(widget.result.data)
    widget.to_zarr.value = True
    path = tmp_path / "adapted.ome.zarr"
    widget.zarr_path.value = str(path)
    cancel_at(qtbot, widget, when=lambda u: u.stored is not None and u.stored.blocks_done >= 25)
    assert widget.state is RunState.CANCELLED
    phases = []
    widget.controller.updated.connect(lambda update: phases.append(update.phase))
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED and Phase.ADAPTING in phases  # adapted to again, the same copy
    np.testing.assert_array_equal(ome_image(path)[0][0], memory)
