"""The widget's results larger than memory: an OME-Zarr store filled block by block, resumable (xvfb-run -a pytest)."""

import warnings
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("zarr")

from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from test_widget import cancel_at, errors, open_from_menu, run, setup  # noqa: F401 (errors, setup: fixtures)

from diinn_napari._run import RunState
from diinn_napari.io.omezarr import BlockStore

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def infos():
    """The info notifications shown from now on (their messages)."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    first = len(notification_manager.records)
    return lambda: [str(n.message) for n in notification_manager.records[first:]
                    if n.severity == NotificationSeverity.INFO]


def stack(viewer, rng, shape, name="cells"):
    data = rng.integers(0, 4000, shape, dtype=np.uint16)
    return viewer.add_image(data, name=name, scale=(1.0, 0.5, 0.4), translate=(0.0, 3.0, -2.0))


def ome_levels(path):
    """The store's levels as ome-zarr-py reads them."""
    return [np.asarray(level) for level in list(Reader(parse_url(str(path)))())[0].data]


def written_blocks(path) -> int:
    ledger = path / BlockStore.LEDGER
    return ledger.stat().st_size // BlockStore._RECORD.size if ledger.exists() else 0


def run_to_store(qtbot, widget, path: Path) -> Path:
    """Press Run with *write to OME-Zarr* on and the store at ``path``; the run must finish. Returns ``path``."""
    widget.to_zarr.value = True
    widget.zarr_path.value = str(path)
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED
    return path


def test_store_mode_controls_are_in_advanced_with_a_quarter_of_ram_by_default(make_napari_viewer, gray_weights):
    from diinn_napari._store import default_memory_budget

    viewer = make_napari_viewer()
    widget = open_from_menu(viewer)
    assert widget.memory_budget.value == default_memory_budget() // 2**20 > 0
    assert not widget.to_zarr.value and widget.zarr_path.line_edit.value == ""
    for control in (widget.memory_budget, widget.to_zarr, widget.zarr_path):
        assert widget.advanced_group.isAncestorOf(control.native), control  # in the closed Advanced group


def test_forced_store_is_read_by_ome_zarr_py_and_equals_the_in_memory_result(setup, rng, qtbot, tmp_path, infos):
    viewer, widget = setup
    layer = stack(viewer, rng, (2, 40, 48))
    widget.layer.value = layer
    run(qtbot, widget)
    memory = np.asarray(widget.result.data)
    assert widget.state is RunState.FINISHED and memory.shape == (2, 80, 96)

    path = tmp_path / "result.ome.zarr"
    widget.to_zarr.value = True
    widget.zarr_path.value = str(path)
    assert f"written to OME-Zarr {path} (asked)" in widget.info.value
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED
    result = widget.result
    assert result.multiscale and result.metadata["diinn"]["store"] == str(path)
    assert not result.metadata["diinn"]["partial"] and "partial" not in result.name
    np.testing.assert_array_equal(ome_levels(path)[0], memory)
    np.testing.assert_array_equal(np.asarray(result.data[0]), memory)
    in_memory = viewer.layers[f"{layer.name} x2 DIINN"]  # the same placement as the in-memory layer
    np.testing.assert_allclose(result.scale, in_memory.scale)
    np.testing.assert_allclose(result.translate, in_memory.translate)
    assert not (path / BlockStore.LEDGER).exists() and not (path / BlockStore.HEADER).exists()  # finished
    assert any(str(path) in message for message in infos())


def test_a_budget_below_the_result_writes_a_temporary_store_it_names(setup, rng, qtbot, tmp_path, monkeypatch, infos):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    viewer, widget = setup
    layer = stack(viewer, rng, (2, 160, 160))
    widget.layer.value = layer
    widget.factor_y.value = 4.0
    assert widget.plan().store is None  # 2 x 640 x 640 uint16 = 1.6 MiB, far below a quarter of the RAM
    widget.memory_budget.value = 1
    plan = widget.plan()
    assert plan.store is not None and plan.store_named and plan.store.startswith(str(tmp_path / "diinn-napari"))
    assert "above the memory budget of 1 MiB" in widget.info.value and plan.store in widget.info.value
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED and widget.result.multiscale
    levels = ome_levels(plan.store)
    assert [level.shape for level in levels] == [(2, 640, 640), (2, 320, 320)]
    assert any(plan.store in message for message in infos())


def test_cancel_keeps_the_blocks_and_a_rerun_resumes_to_the_uninterrupted_result(setup, rng, qtbot, tmp_path, infos):
    viewer, widget = setup
    layer = stack(viewer, rng, (2, 160, 160))  # x4: 2 planes of 640 x 640, 4 blocks each
    widget.layer.value = layer
    widget.factor_y.value = 4.0
    clean = run_to_store(qtbot, widget, tmp_path / "clean.ome.zarr")

    path = tmp_path / "resumed.ome.zarr"
    widget.zarr_path.value = str(path)
    viewer.dims.set_point(0, 0.0)  # the first plane on screen: its blocks come first
    on_screen = []

    def look(update):  # mid-run, before the Cancel: the layer (added over an empty store) shows the blocks done
        if update.stored is not None and update.stored.blocks_done >= 3 and not on_screen:
            with warnings.catch_warnings():  # napari has no public accessor of the displayed slice
                warnings.simplefilter("ignore", FutureWarning)
                on_screen.append(np.asarray(widget.result._slice.image.raw).copy())

    widget.controller.updated.connect(look)
    cancel_at(qtbot, widget, when=lambda u: u.stored is not None and u.stored.blocks_done >= 3)
    widget.controller.updated.disconnect(look)
    assert widget.state is RunState.CANCELLED
    kept = written_blocks(path)
    assert 3 <= kept < 8
    assert on_screen and on_screen[0].any()
    partial = widget.result
    assert partial.name.endswith(f"(partial: {partial.metadata['diinn']['blocks_done']} of 8 blocks)")
    assert any(f"kept the {partial.metadata['diinn']['blocks_done']} finished blocks in {path}" in m for m in infos())

    seen = infos()
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED
    assert any(f"resumed: {kept} of 8 blocks were done" in m for m in infos()[len(seen):])
    assert not (path / BlockStore.LEDGER).exists()
    for a, b in zip(ome_levels(path), ome_levels(clean), strict=True):
        np.testing.assert_array_equal(a, b)  # every level, bit for bit
    np.testing.assert_array_equal(np.asarray(widget.result.data[0]), ome_levels(clean)[0])


def test_a_rerun_with_other_settings_into_the_same_store_is_refused_naming_the_difference(setup, rng, qtbot, tmp_path,
                                                                                      errors, infos):
    viewer, widget = setup
    layer = stack(viewer, rng, (2, 160, 160))
    widget.layer.value = layer
    widget.factor_y.value = 4.0
    widget.to_zarr.value = True
    path = tmp_path / "r.ome.zarr"
    widget.zarr_path.value = str(path)
    cancel_at(qtbot, widget, when=lambda u: u.stored is not None and u.stored.blocks_done >= 2)
    kept = written_blocks(path)
    assert kept >= 2

    consistency = widget.consistency.value
    widget.consistency.value = consistency + 1
    run(qtbot, widget)
    assert widget.state is RunState.FAILED
    assert any(f"{path} holds a partial result made with other settings (data consistency steps: {consistency} "
               f"there, {consistency + 1} now)" in e for e in errors())
    assert written_blocks(path) == kept  # untouched

    widget.consistency.value = consistency  # the same settings again: resumed, finished
    run(qtbot, widget)
    assert widget.state is RunState.FINISHED
    seen = infos()
    run(qtbot, widget)  # and once more: the finished store is shown as it is
    assert widget.state is RunState.FINISHED and widget.result.metadata["diinn"]["blocks_done"] == 8
    assert any("it was already complete: shown as it is" in m for m in infos()[len(seen):])
    widget.consistency.value = consistency + 1  # a finished store of other work is refused too
    run(qtbot, widget)
    assert widget.state is RunState.FAILED
    assert any(f"{path} holds a result made with other settings (data consistency steps" in e for e in errors())


def test_every_mode_goes_to_a_store_above_the_budget_and_the_temporary_store_is_named_after_the_settings():
    from diinn_napari._planner import ISOTROPIC, Request, Source, plan_run

    stack = Source("cells", shape=(4, 40, 50), dtype=np.dtype("uint16"), scale=(2.0, 0.5, 0.5))
    for request in (Request(size_mode=ISOTROPIC, memory_budget=1000), Request(trust_map=True, memory_budget=1000),
                    Request(self_adapt_steps=5, memory_budget=1000), Request(size_mode=ISOTROPIC, to_zarr=True)):
        plan = plan_run(stack, request)
        assert plan.store is not None and " " not in Path(plan.store).name, request
    gray = Source("cells", shape=(40, 50), dtype=np.dtype("uint16"))
    assert plan_run(gray, Request(memory_budget=80 * 100 * 2)).store is None  # at the budget: in memory
    over = plan_run(gray, Request(memory_budget=80 * 100 * 2 - 1))
    again = plan_run(gray, Request(memory_budget=80 * 100 * 2 - 1))
    other = plan_run(gray, Request(memory_budget=80 * 100 * 2 - 1, consistency=0))
    assert over.store == again.store != other.store  # the temporary store is named after the settings


def test_the_store_layer_is_refreshed_as_blocks_arrive_spaced_in_time_and_at_the_last_block(setup, rng, tmp_path,
                                                                                          monkeypatch):
    from types import SimpleNamespace

    from diinn_napari import _layers
    from diinn_napari._run import Stored
    from diinn_napari._store import open_store

    viewer, widget = setup
    layer = stack(viewer, rng, (2, 160, 160))  # x4: 8 blocks
    widget.layer.value = layer
    widget.factor_y.value = 4.0
    widget.to_zarr.value = True
    widget.zarr_path.value = str(tmp_path / "s.ome.zarr")
    plan = widget.plan()
    path = str(open_store(plan, layer.data).path)
    now = [100.0]
    monkeypatch.setattr(_layers, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    shown = _layers.ResultLayers(viewer, layer, plan, None)
    refreshes = []
    monkeypatch.setattr(shown, "refresh", lambda: refreshes.append(now[0]))

    def arrive(blocks, at):
        now[0] = 100.0 + at
        shown.show_store(Stored(path, blocks, 8), 0)

    arrive(0, 0.0)  # the layer is added over the store: nothing to refresh yet
    assert shown.image is not None and refreshes == []
    arrive(1, 0.01)  # the first block: at once
    arrive(2, 0.05)  # too soon after it: counted, shown later
    assert shown.image.metadata["diinn"]["blocks_done"] == 2 and len(refreshes) == 1
    arrive(2, 0.05 + _layers.STORE_REFRESH_MIN_S)  # no new block, but one not shown yet: now
    arrive(2, 0.30)  # nothing new: no refresh
    arrive(3, 0.35)  # within the interval again
    arrive(8, 0.36)  # the last block: at once
    assert refreshes == [100.01, 100.05 + _layers.STORE_REFRESH_MIN_S, 100.36]
