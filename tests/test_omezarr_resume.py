"""OME-Zarr outputs are atomic and resumable block by block: the batch command killed midway, rerun, equals a clean run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from conftest import ctrl_c_reaches_it
from diinn_napari.io.omezarr import BlockStore

from test_omezarr import make_ngff, rechunk_level0

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def batch_command(src, out, weights, *extra):
    return [sys.executable, "-m", "diinn_napari.batch", str(src), "--scale", "4", "--out", str(out),
            "--model", str(weights), "--threads", "1", *extra]


def source(tmp_path, rng):
    """A 3-plane OME-Zarr stack chunked 16 x 16: its 192 x 192 output (x4, chunked like the input) is 3 x 144 blocks."""
    data = rng.integers(0, 4000, (3, 48, 48), dtype=np.uint16)
    # chunked 16 x 16 so the output (chunked like the input) has many blocks
    return rechunk_level0(make_ngff(tmp_path / "stack.ome.zarr", data, axes="zyx"), (1, 16, 16))


def partial_stores(out: Path):
    return [p for p in out.glob(".*.partial") if p.is_dir()] if out.is_dir() else []


def ledger_blocks(out: Path) -> int:
    stores = partial_stores(out)
    if not stores or not (stores[0] / BlockStore.LEDGER).exists():
        return 0
    return (stores[0] / BlockStore.LEDGER).stat().st_size // BlockStore._RECORD.size


def levels_of(path: Path):
    return [np.asarray(level) for level in list(Reader(parse_url(str(path)))())[0].data]


def interrupt_after(cmd, out: Path, blocks: int, sig) -> int:
    """Start the batch, send ``sig`` once ``blocks`` blocks are flushed; its exit code."""
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=ctrl_c_reaches_it)
    deadline = time.time() + 600
    while ledger_blocks(out) < blocks and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the batch ended before it could be interrupted: " + proc.stderr.read().decode()
    proc.send_signal(sig)
    proc.communicate(timeout=300)
    return proc.returncode


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_or_interrupted_batch_resumes_block_by_block_and_equals_a_clean_run(tmp_path, rng, gray_weights, sig):
    src = source(tmp_path, rng)
    clean_out, out = tmp_path / "clean", tmp_path / "out"
    done = subprocess.run(batch_command(src, clean_out, gray_weights), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    clean = levels_of(clean_out / "stack.ome.zarr")
    assert clean[0].shape == (3, 192, 192)

    code = interrupt_after(batch_command(src, out, gray_weights), out, 40, sig)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 130)
    assert not (out / "stack.ome.zarr").exists()  # nothing at the output's name until it is complete
    kept = ledger_blocks(out)
    assert 40 <= kept < 3 * 144

    again = subprocess.run(batch_command(src, out, gray_weights), capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resumed at block" in again.stdout
    assert not partial_stores(out)  # renamed into place, ledger gone
    assert not (out / "stack.ome.zarr" / BlockStore.LEDGER).exists()
    resumed = levels_of(out / "stack.ome.zarr")
    assert len(resumed) == len(clean)
    for a, b in zip(resumed, clean):
        np.testing.assert_array_equal(a, b)  # bit for bit, every level
    record = json.loads(json.dumps(zarr.open_group(str(out / "stack.ome.zarr"), mode="r").attrs["diinn-napari"]))
    clean_record = zarr.open_group(str(clean_out / "stack.ome.zarr"), mode="r").attrs["diinn-napari"]
    assert record["pixels"] == clean_record["pixels"]

    # a third run skips it: same settings, the pixel checksum verified in row bands
    skip = subprocess.run(batch_command(src, out, gray_weights), capture_output=True, text=True)
    assert skip.returncode == 0 and "skipped" in skip.stdout


def test_rerun_with_other_settings_discards_the_partial_store_naming_the_difference(tmp_path, rng, gray_weights,
                                                                                   other_gray_weights):
    src = source(tmp_path, rng)
    out = tmp_path / "out"
    interrupt_after(batch_command(src, out, gray_weights), out, 10, signal.SIGKILL)
    assert ledger_blocks(out) >= 10
    other = subprocess.run(batch_command(src, out, other_gray_weights), capture_output=True, text=True)
    assert other.returncode == 0, other.stdout + other.stderr
    assert "partial store of other work was discarded (model:" in other.stdout
    assert "resumed" not in other.stdout
    # a finished output made with other settings is refused, the difference named
    refused = subprocess.run(batch_command(src, out, gray_weights), capture_output=True, text=True)
    assert refused.returncode == 1
    assert "made with other settings (model:" in refused.stdout


def test_block_store_resumes_in_process_ignores_a_torn_ledger_record_and_refuses_other_work(tmp_path, rng, model):
    from diinn_napari import Engine, RunSettings
    from diinn_napari.engine import Cancelled
    from diinn_napari.io import ImageInfo

    image = rng.integers(0, 4000, (2, 30, 34), dtype=np.uint16)
    settings = RunSettings(scale=2.5, model=model, tile_size=8)
    shape = (2,) + settings.output_yx(image.shape[-2:])
    info = ImageInfo(tmp_path / "a.ome.zarr", "ome-zarr", "ZYX", shape, np.dtype(np.uint16))
    clean = BlockStore.create(tmp_path / "clean.ome.zarr", info, b"work\n", chunks=(16, 16))
    list(Engine(settings).steps(image, out=clean))
    assert len(clean.done) == clean.blocks_total == 2 * 5 * 6  # 75 x 85 in blocks of 16

    store = BlockStore.create(info.path, info, b"work\n", chunks=(16, 16))
    with pytest.raises(Cancelled):  # stopped midway, as a cancel does
        for step in Engine(settings).steps(image, out=store, cancel=lambda: len(store.done) >= 20):
            pass
    assert len(store.done) == 20
    with open(info.path / BlockStore.LEDGER, "ab") as fh:
        fh.write(b"\x01\x02\x03")  # a torn last record
    assert BlockStore.open(info.path, info, b"other work\n") is None
    again = BlockStore.open(info.path, info, b"work\n")
    assert len(again.done) == 20
    steps = list(Engine(settings).steps(image, out=again))
    assert steps[-1].done == steps[-1].total and len(again.done) == again.blocks_total
    again.finish({"made": "here"})
    assert not (info.path / BlockStore.LEDGER).exists()
    np.testing.assert_array_equal(zarr.open_group(str(info.path))["0"][...], clean.array[...])
