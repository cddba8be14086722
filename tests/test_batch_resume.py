"""Batch tool, reruns: settings recorded in outputs, stale partial files, resuming a killed file."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from diinn_napari import batch, engine
from diinn_napari.batch.stale import HOST


def stack(path, rng, planes=3, yx=(10, 12)):
    data = (rng.random((planes, *yx)) * 4000).astype(np.uint16)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"})
    return data


def args(src, out, model, *extra, scale="2"):
    return [str(src), "--scale", scale, "--out", str(out), "--model", str(model), *extra]


def test_rerun_with_the_same_settings_skips(tmp_path, rng, gray_weights, capsys):
    src = tmp_path / "a.tif"
    stack(src, rng)
    out = tmp_path / "out"
    assert batch.main(args(src, out, gray_weights)) == 0
    stamp = (out / "a.tif").stat().st_mtime_ns
    capsys.readouterr()
    assert batch.main(args(src, out, gray_weights)) == 0
    assert "0 done, 1 skipped, 0 failed" in capsys.readouterr().out
    assert (out / "a.tif").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("change", [("--scale", "3"), ("--model", "other"), ("--intensity", "dtype"),
                                    ("--consistency", "0"), ("--precision", "bf16")])
def test_rerun_with_other_settings_fails_clearly_and_keeps_the_old_output(tmp_path, rng, gray_weights, other_gray_weights, capsys, change):
    src = tmp_path / "a.tif"
    stack(src, rng)
    out = tmp_path / "out"
    assert batch.main(args(src, out, gray_weights)) == 0
    before = (out / "a.tif").read_bytes()
    capsys.readouterr()
    flag, value = change
    rerun = args(src, out, gray_weights)
    if flag == "--scale":
        rerun = args(src, out, gray_weights, scale=value)
    elif flag == "--model":
        rerun = args(src, out, other_gray_weights)
    else:
        rerun += [flag, value]
    assert batch.main(rerun) == 1
    text = capsys.readouterr().out
    assert "0 done, 0 skipped, 1 failed" in text
    assert "other settings" in text and "--overwrite" in text
    assert (out / "a.tif").read_bytes() == before
    assert batch.main(rerun + ["--overwrite"]) == 0
    assert (out / "a.tif").read_bytes() != before


def test_an_output_without_a_settings_record_is_not_taken_as_done(tmp_path, rng, gray_weights, capsys):
    src = tmp_path / "a.tif"
    stack(src, rng)
    (tmp_path / "out").mkdir()
    tifffile.imwrite(tmp_path / "out" / "a.tif", np.zeros((3, 20, 24), np.uint16), photometric="minisblack")  # made by something else
    assert batch.main(args(src, tmp_path / "out", gray_weights)) == 1
    assert "no record of the settings" in capsys.readouterr().out


def test_png_outputs_record_their_settings_too(tmp_path, rng, gray_weights, capsys):
    src = tmp_path / "p.png"
    Image.fromarray((rng.random((10, 12)) * 255).astype(np.uint8)).save(src)
    out = tmp_path / "out"
    assert batch.main(args(src, out, gray_weights)) == 0
    record = json.loads(Image.open(out / "p.png").text["diinn-napari"])
    assert record["output_yx"] == [20, 24]
    assert batch.main(args(src, out, gray_weights, scale="3")) == 1
    assert batch.main(args(src, out, gray_weights)) == 0


# A batch in a child process whose engine stalls after `stop_after` planes: the test kills it there.
STALLING_BATCH = """
import sys, time
import diinn_napari.engine as engine
real = engine.Engine.planes
stop_after = int(sys.argv[1])

def stalling(self, *args, **kwargs):
    for n, item in enumerate(real(self, *args, **kwargs), 1):
        yield item
        if n == stop_after:  # the batch has written plane n when it asks for the next one
            print("STALLED", flush=True)
            time.sleep(600)

engine.Engine.planes = stalling
from diinn_napari.batch import main
sys.exit(main(sys.argv[2:]))
"""


def kill_mid_file(batch_args: list[str], stop_after: int) -> None:
    child = subprocess.Popen([sys.executable, "-c", STALLING_BATCH, str(stop_after), *batch_args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "STALLED", child.stderr.read()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL


def count_computed_planes(monkeypatch) -> list:
    computed = []
    real = engine.Engine.planes

    def counting(self, *a, **k):
        for item in real(self, *a, **k):
            computed.append(item[0])
            yield item

    monkeypatch.setattr(engine.Engine, "planes", counting)
    return computed


def test_a_file_killed_mid_stack_resumes_from_its_planes_and_matches_an_uninterrupted_run(tmp_path, rng, gray_weights, monkeypatch, capsys):
    src = tmp_path / "in" / "stack.tif"
    src.parent.mkdir()
    stack(src, rng, planes=8, yx=(12, 10))
    out, reference = tmp_path / "out", tmp_path / "reference"
    kill_mid_file(args(src, out, gray_weights), stop_after=5)
    partials = [p.name for p in out.iterdir() if not p.name.endswith(".lock")]  # a killed run's lock: released
    assert not (out / "stack.tif").exists() and len(partials) == 1 and partials[0].startswith(".stack.tif.")

    computed = count_computed_planes(monkeypatch)
    assert batch.main(args(src, out, gray_weights)) == 0
    text = capsys.readouterr().out
    assert len(computed) == 3  # planes 6..8 only
    assert "resumed at plane 6 of 8" in text
    assert sorted(p.name for p in out.iterdir()) == ["stack.tif"]  # the partial file is gone

    computed.clear()
    assert batch.main(args(src, reference, gray_weights)) == 0
    assert len(computed) == 8
    assert (out / "stack.tif").read_bytes() == (reference / "stack.tif").read_bytes()


def test_a_partial_file_made_with_other_settings_is_not_resumed(tmp_path, rng, gray_weights, monkeypatch, capsys):
    src = tmp_path / "in" / "stack.tif"
    src.parent.mkdir()
    stack(src, rng, planes=4)
    out = tmp_path / "out"
    kill_mid_file(args(src, out, gray_weights), stop_after=2)
    computed = count_computed_planes(monkeypatch)
    assert batch.main(args(src, out, gray_weights, scale="3")) == 0
    assert len(computed) == 4 and "resumed" not in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["stack.tif"]
    assert tifffile.imread(out / "stack.tif").shape == (4, 30, 36)


def test_stale_partial_files_of_dead_processes_are_removed_and_live_ones_kept(tmp_path, rng, gray_weights):
    src = tmp_path / "in" / "a.tif"
    src.parent.mkdir()
    stack(src, rng)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        old_style_dead = out / f".a.partial-{dead_pid}.tif"  # what earlier versions left after kill -9
        old_style_alive = out / f".b.partial-{alive.pid}.tif"
        for path in (old_style_dead, old_style_alive):
            path.write_bytes(b"II*\x00 half a tiff")
        dead_store = out / f".a.zarr.{HOST}-{dead_pid}.tmp.zarr"  # a store format's temporary is a folder
        (dead_store / "0").mkdir(parents=True)
        assert batch.main(args(src, out, gray_weights)) == 0
        left = sorted(p.name for p in out.iterdir())
        assert left == sorted(["a.tif", old_style_alive.name])
    finally:
        alive.kill()
        alive.wait()
