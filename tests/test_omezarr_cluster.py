"""One OME-Zarr image on a dask.distributed cluster: its blocks written by the workers into one store, equal to a
single-process run bit for bit (every pyramid level), resumable after the client is killed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from diinn_napari import RunSettings, batch
from diinn_napari.io import ImageInfo
from diinn_napari.io.omezarr import BlockStore, owned_level_chunks, pyramid_shapes

from test_omezarr import make_ngff, rechunk_level0
from test_omezarr_resume import levels_of, partial_stores

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def source(tmp_path, rng):
    """A 160 x 160 OME-Zarr image (one Z plane) chunked 64 x 64. Its x4 output, 640 x 640, has two levels and
    100 blocks of 64 x 64 (the input's chunks); a level-1 chunk (64 x 64: the block's 32 x 32 region there is
    below MIN_LEVEL_CHUNK) holds the regions of 2 x 2 blocks, so the blocks go to the workers in 25 groups of 4."""
    data = rng.integers(0, 4000, (1, 160, 160), dtype=np.uint16)
    return rechunk_level0(make_ngff(tmp_path / "stack.ome.zarr", data, axes="zyx"), (1, 64, 64))


def settings(out: Path, weights: str) -> batch.Settings:
    return batch.Settings(out, RunSettings(scale=4, model=weights, threads=1), show_progress=False)


def chunk_files(store: BlockStore, numbers) -> set:
    """Every (level, chunk) the blocks ``numbers`` write into."""
    windows, per_plane = store.block_windows(), len(store.block_windows())
    found = set()
    for n in numbers:
        plane, (y0, y1, x0, x1) = n // per_plane, windows[n % per_plane]
        for k, array in enumerate(store.writer.arrays):
            cy, cx = int(array.chunks[-2]), int(array.chunks[-1])
            for y in range((y0 >> k) // cy, (((y1 - 1) >> k) // cy) + 1):
                for x in range((x0 >> k) // cx, (((x1 - 1) >> k) // cx) + 1):
                    found.add((plane, k, y, x))
    return found


@pytest.mark.parametrize("shape, chunks", [((2, 640, 640), (32, 32)), ((1, 2000, 1300), (96, 80)),
                                           ((1, 4100, 300), (512, 512))])
def test_block_groups_share_no_chunk_of_any_level(tmp_path, shape, chunks):
    info = ImageInfo(tmp_path / "a.ome.zarr", "ome-zarr", "ZYX", shape, np.dtype(np.uint16))
    store = BlockStore.create(info.path, info, b"work\n", chunks=chunks)
    groups = store.block_groups()
    assert sorted(n for g in groups for n in g) == list(range(store.blocks_total))
    assert len(groups) > 1
    claimed = {}
    for i, group in enumerate(groups):
        for key in chunk_files(store, group):
            assert claimed.setdefault(key, i) == i, f"chunk {key} is written by groups {claimed[key]} and {i}"
    # the lower levels' chunks are the block's region there, but never below MIN_LEVEL_CHUNK (64) a side
    levels = pyramid_shapes(shape[-2:])
    assert [tuple(int(c) for c in a.chunks[-2:]) for a in store.writer.arrays] == owned_level_chunks(store.block, levels)


def test_marker_files_of_shared_writers_are_read_with_the_ledger(tmp_path, rng):
    info = ImageInfo(tmp_path / "a.ome.zarr", "ome-zarr", "YX", (64, 64), np.dtype(np.uint16))
    store = BlockStore.create(info.path, info, b"work\n", chunks=(16, 16))
    block = rng.integers(0, 4000, (16, 16), dtype=np.uint16)
    store.write_block((), (0, 16, 0, 16), block)  # the ledger (one writer)
    shared = BlockStore.open(info.path, info, b"work\n", shared=True)
    shared.write_block((), (16, 32, 16, 32), block)  # a marker file (one of many writers)
    (info.path / BlockStore.MARKS / "tmp-7-123").write_bytes(b"")  # a marker being made when its writer died
    again = BlockStore.open(info.path, info, b"work\n")
    assert again.done == {0, 5}
    selection = again.only([0, 1, 5])
    assert selection.missing == 1 and selection.is_done((), (0, 16, 0, 16)) and selection.is_done((), (0, 16, 32, 48))
    assert not selection.is_done((), (0, 16, 16, 32))


def test_one_image_on_a_local_cluster_equals_a_single_process_run_bit_for_bit(tmp_path, rng, gray_weights):
    src = source(tmp_path, rng)
    single = batch.run_batch([src], settings(tmp_path / "single", gray_weights))
    assert [r.status for r in single] == ["done"]
    expected = levels_of(tmp_path / "single" / "stack.ome.zarr")
    assert [lv.shape for lv in expected] == [(1, 640, 640), (1, 320, 320)]

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client, distributed.get_task_stream(client) as stream:
            results = batch.run_batch([src], settings(tmp_path / "cluster", gray_weights),
                                      scheduler=cluster.scheduler_address)
    assert [r.status for r in results] == ["done"], results[0].message
    groups = [t for t in stream.data if t["key"].startswith("write_block_group")]
    assert len(groups) == 25  # one task per block group, not one per file
    assert len({t["worker"] for t in groups}) == 2  # both workers wrote blocks
    out = tmp_path / "cluster" / "stack.ome.zarr"
    assert not partial_stores(tmp_path / "cluster") and not (out / BlockStore.MARKS).exists()
    found = levels_of(out)
    assert len(found) == len(expected)
    for a, b in zip(found, expected):
        np.testing.assert_array_equal(a, b)  # every level, bit for bit
    record = zarr.open_group(str(out), mode="r").attrs["diinn-napari"]
    assert record["pixels"] == zarr.open_group(str(tmp_path / "single" / "stack.ome.zarr"), mode="r").attrs[
        "diinn-napari"]["pixels"]


def _marks(out: Path) -> int:
    stores = partial_stores(out)
    try:
        return len([n for n in os.listdir(stores[0] / BlockStore.MARKS) if n.isdigit()]) if stores else 0
    except OSError:
        return 0


def test_cli_scheduler_splits_one_image_and_resumes_after_the_client_is_killed(tmp_path, rng, gray_weights):
    src = source(tmp_path, rng)
    single = batch.run_batch([src], settings(tmp_path / "single", gray_weights))
    assert [r.status for r in single] == ["done"]
    expected = levels_of(tmp_path / "single" / "stack.ome.zarr")
    out = tmp_path / "up"
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
                                 dashboard_address=None) as cluster:
        cmd = [sys.executable, "-m", "diinn_napari.batch", str(src), "--scale", "4", "--out", str(out),
               "--model", str(gray_weights), "--threads", "1", "--scheduler", cluster.scheduler_address]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 300
        while _marks(out) < 12 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the batch ended before it could be killed: " + proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)  # the client: the store keeps every block a worker recorded
        proc.communicate(timeout=60)
        with distributed.Client(cluster) as client:  # the killed client's tasks end (cancelled or finished)
            while client.processing() and any(client.processing().values()) and time.time() < deadline:
                time.sleep(0.1)
        assert not (out / "stack.ome.zarr").exists()
        kept = _marks(out)
        assert 12 <= kept < 100

        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resumed at block" in again.stdout
    assert not partial_stores(out)
    found = levels_of(out / "stack.ome.zarr")
    assert len(found) == len(expected)
    for a, b in zip(found, expected):
        np.testing.assert_array_equal(a, b)
