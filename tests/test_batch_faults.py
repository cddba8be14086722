"""Fault injection for the batch tool: it never returns a wrong result as done (issue 18).

One section per guarantee (docs/batch.md, "What holds when things go wrong"):
1 durable outputs, 2 content identity, 3 one writer per output, 4 damaged
inputs, 5 weights, 6 signals, 7 messages, then the loops: kill -9 at random
planes, concurrent takeover, a full disk (tmpfs, root only) and a fuzzer
over malformed TIFF headers. To add a fault: make it happen in a child
process (``child``/``stalled``) or by monkeypatching, then compare the
output with an uninterrupted run (``reference``) or assert the message.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import ctrl_c_reaches_it
from diinn_napari import batch, io
from diinn_napari.batch import stale

# ---- helpers ------------------------------------------------------------------------------------


def stack(path: Path, seed: int = 0, planes: int = 4, yx=(12, 10), **kwargs) -> np.ndarray:
    data = (np.random.default_rng(seed).random((planes, *yx)) * 4000).astype(np.uint16)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX", **kwargs.pop("metadata", {})}, **kwargs)
    return data


def args(src, out, model, *extra, scale="2") -> list[str]:
    srcs = [str(s) for s in src] if isinstance(src, (list, tuple)) else [str(src)]
    return [*srcs, "--scale", scale, "--out", str(out), "--model", str(model), *extra]


def reference(tmp_path: Path, src: Path, model: str, *extra, scale="2") -> bytes:
    """The output of an uninterrupted run of ``src`` (in a folder of its own)."""
    out = tmp_path / f"reference-{src.stem}-{len(list(tmp_path.iterdir()))}"
    assert batch.main(args(src, out, model, *extra, scale=scale)) == 0
    return (out / src.name).read_bytes()


def hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".")) if out.exists() else []


# A batch in a child process whose engine waits `delay` s after each plane and, after plane `stop_after`, prints
# STALLED and sleeps (the test then signals it). Forked pool workers inherit the patch.
CHILD = """
import sys, time
import diinn_napari.engine as engine
real = engine.Engine.planes
stop_after, delay = int(sys.argv[1]), float(sys.argv[2])

def slow(self, *args, **kwargs):
    for n, item in enumerate(real(self, *args, **kwargs), 1):
        yield item
        print("PLANE", n, flush=True)
        time.sleep(delay)
        if n == stop_after:
            print("STALLED", flush=True)
            time.sleep(600)

engine.Engine.planes = slow
from diinn_napari.batch import main
sys.exit(main(sys.argv[3:]))
"""


def child(batch_args: list[str], stop_after: int = 0, delay: float = 0.0, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(stop_after), str(delay), *batch_args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def wait_for(proc: subprocess.Popen, word: str) -> None:
    for line in proc.stdout:
        if line.split()[:1] == [word]:
            return
    raise AssertionError(f"the child ended before {word}: {proc.stderr.read()}")


def kill9_after(batch_args: list[str], plane: int) -> None:
    proc = child(batch_args, stop_after=plane)
    try:
        wait_for(proc, "STALLED")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def cli(*argv, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diinn_napari.batch", *argv], capture_output=True, timeout=timeout)


# ---- 1 durable outputs --------------------------------------------------------------------------


def test_output_is_flushed_renamed_then_its_folder_flushed_before_the_partial_goes(tmp_path, gray_weights, monkeypatch):
    src, out = tmp_path / "a.tif", tmp_path / "out"
    stack(src)
    events = []
    real_fsync, real_replace, real_unlink = os.fsync, os.replace, os.unlink

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(a, b, **kw):
        events.append(("replace", str(a), str(b)))
        return real_replace(a, b, **kw)

    def unlink(p, **kw):
        events.append(("unlink", str(p)))
        return real_unlink(p, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    assert batch.main(args(src, out, gray_weights)) == 0
    final = str(out / "a.tif")
    rename = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == final)
    tmp = events[rename][1]
    assert ".tmp" in tmp
    assert ("fsync", tmp) in events[:rename]  # the file's data is on disk before its name is
    folder = [i for i, e in enumerate(events) if e == ("fsync", str(out))]
    assert folder and folder[-1] > rename  # the rename itself is on disk...
    gone = next(i for i, e in enumerate(events) if e[0] == "unlink" and e[1].endswith(".partial"))
    assert folder[-1] < gone  # ...before the partial file, which could rebuild it, is deleted


def test_atomic_write_of_weights_flushes_file_then_folder(tmp_path, monkeypatch):
    from conftest import tiny_model
    from diinn_napari.weights import save_weights

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a), str(b))), real_replace(a, b))[1])
    target = tmp_path / "w.safetensors"
    save_weights(tiny_model(), target)
    rename = next(i for i, e in enumerate(events) if e[0] == "replace")
    assert ("fsync", events[rename][1]) in events[:rename] and ("fsync", str(tmp_path)) in events[rename + 1:]


@pytest.mark.parametrize("tear", ["cut in half", "second half zeroed"])
def test_a_torn_output_is_recomputed_not_skipped(tmp_path, gray_weights, capsys, tear):
    src, out = tmp_path / "a.tif", tmp_path / "out"
    stack(src, planes=6)
    good = reference(tmp_path, src, gray_weights)
    assert batch.main(args(src, out, gray_weights)) == 0
    data = bytearray((out / "a.tif").read_bytes())
    half = len(data) // 2
    if tear == "cut in half":
        del data[half:]
    else:
        data[half:] = bytes(len(data) - half)
    (out / "a.tif").write_bytes(bytes(data))
    capsys.readouterr()
    assert batch.main(args(src, out, gray_weights)) == 0
    text = capsys.readouterr()
    assert "1 done, 0 skipped" in text.out and "recomputed" in text.out
    assert "recomputing" in text.err
    assert (out / "a.tif").read_bytes() == good
    capsys.readouterr()
    assert batch.main(args(src, out, gray_weights)) == 0  # now whole: skipped, pixels verified
    assert "0 done, 1 skipped" in capsys.readouterr().out


def test_the_record_holds_the_pixel_checksum_of_what_the_file_holds(tmp_path, gray_weights):
    src, out = tmp_path / "a.tif", tmp_path / "out"
    stack(src)
    assert batch.main(args(src, out, gray_weights)) == 0
    record = io.read_record(out / "a.tif")
    planes = tifffile.imread(out / "a.tif")
    from diinn_napari.batch.record import pixel_digest
    assert record["pixels"] == pixel_digest(planes) and record["pixels"]["planes"] == 4


# ---- 2 content identity -------------------------------------------------------------------------


def test_another_file_of_the_same_name_and_size_is_not_taken_as_done(tmp_path, gray_weights, capsys):
    first, second, out = tmp_path / "1" / "a.tif", tmp_path / "2" / "a.tif", tmp_path / "out"
    first.parent.mkdir(), second.parent.mkdir()
    stack(first, seed=1)
    stack(second, seed=2)
    assert first.stat().st_size == second.stat().st_size
    assert batch.main(args(first, out, gray_weights)) == 0
    capsys.readouterr()
    assert batch.main(args(second, out, gray_weights)) == 1
    text = capsys.readouterr().out
    assert "other settings" in text and "input file" in text and "content sha256" in text


def test_a_file_edited_in_place_is_not_taken_as_done(tmp_path, gray_weights, capsys):
    src, out = tmp_path / "a.tif", tmp_path / "out"
    stack(src)
    assert batch.main(args(src, out, gray_weights)) == 0
    size = src.stat().st_size
    data = tifffile.imread(src)
    data[1] += 7
    with tifffile.TiffFile(src) as tif:
        offset = tif.pages[1].dataoffsets[0]
    with open(src, "r+b") as fh:  # the bytes of plane 2, rewritten in place: same name, size, layout
        fh.seek(offset)
        fh.write(data[1].astype("<u2").tobytes())
    assert src.stat().st_size == size
    capsys.readouterr()
    assert batch.main(args(src, out, gray_weights)) == 1
    assert "content sha256" in capsys.readouterr().out


def test_a_killed_file_is_not_resumed_from_another_file_of_the_same_name(tmp_path, gray_weights, capsys):
    first, second, out = tmp_path / "1" / "a.tif", tmp_path / "2" / "a.tif", tmp_path / "out"
    first.parent.mkdir(), second.parent.mkdir()
    stack(first, seed=1, planes=6)
    stack(second, seed=2, planes=6)
    kill9_after(args(first, out, gray_weights), plane=3)
    assert any(name.endswith(".partial") for name in hidden(out))
    assert batch.main(args(second, out, gray_weights)) == 0
    assert "partial file of other work" in capsys.readouterr().out
    assert (out / "a.tif").read_bytes() == reference(tmp_path, second, gray_weights)  # no plane of the first file


# ---- 3 one writer per output --------------------------------------------------------------------


def test_two_batches_into_one_output_never_both_report_done(tmp_path, gray_weights):
    src, out = tmp_path / "a.tif", tmp_path / "out"
    stack(src, planes=4)
    slow = child(args(src, out, gray_weights, scale="2"), delay=3.0)  # 12 s: the other starts meanwhile
    wait_for(slow, "PLANE")  # it holds the output now
    other = cli(*args(src, out, gray_weights, scale="3"))
    slow_out, slow_err = slow.communicate(timeout=120)
    assert slow.returncode == 0, slow_err
    assert other.returncode == 1
    assert b"being written by another process" in other.stderr
    assert b"other settings" in other.stdout
    assert io.read_record(out / "a.tif")["output_yx"] == [24, 20]  # the one reported done is the one on disk
    assert hidden(out) == []


def test_two_processes_taking_over_one_stale_partial_both_succeed(tmp_path, gray_weights):
    src, out = tmp_path / "a.tif", tmp_path / "out"
    stack(src, planes=6)
    good = reference(tmp_path, src, gray_weights)
    for _ in range(2):
        kill9_after(args(src, out, gray_weights), plane=2)
        procs = [child(args(src, out, gray_weights)) for _ in range(2)]
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], results
        texts = "".join(r[0] for r in results)
        assert "1 done, 0 skipped" in texts and "0 done, 1 skipped" in texts
        assert (out / "a.tif").read_bytes() == good and hidden(out) == []
        (out / "a.tif").unlink()


def test_output_lock_excludes_a_second_holder_and_is_released_by_death(tmp_path):
    out = tmp_path / "x.tif"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from pathlib import Path
from diinn_napari.batch.stale import OutputLock
with OutputLock(Path({str(out)!r})):
    print("HELD", flush=True)
    time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "HELD"
    fd = os.open(stale.lock_path(out), os.O_RDWR)
    try:
        assert not stale._try_lock(fd)
    finally:
        os.close(fd)
    holder.kill()
    holder.wait(timeout=30)
    messages = []
    with stale.OutputLock(out, on_wait=messages.append):
        assert messages == []  # the OS released the dead holder's lock: nothing stale to detect
    assert not stale.lock_path(out).exists()


# ---- 4 damaged inputs ---------------------------------------------------------------------------


def _truncated_imagej(path):
    stack(path, planes=4)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _ome_with_size_z(n):
    def make(path):
        data = (np.arange(4 * 12 * 10) % 4000).astype(np.uint16).reshape(4, 12, 10)
        tifffile.imwrite(path, data, ome=True, metadata={"axes": "ZYX"})
        path.write_bytes(path.read_bytes().replace(b'SizeZ="4"', f'SizeZ="{n}"'.encode()))
    return make


def _zero_planes(path):
    with pytest.warns(UserWarning):
        tifffile.imwrite(path, np.zeros((0, 12, 10), np.uint16), imagej=True)


def _with_compression(code):
    def make(path):
        tifffile.imwrite(path, np.ones((12, 10), np.uint16))
        with tifffile.TiffFile(path) as tif:
            tag = tif.pages[0].tags["Compression"]
            offset, order = tag.valueoffset, tif.byteorder
        with open(path, "r+b") as fh:
            fh.seek(offset)
            fh.write(struct.pack(order + "H", code))
    return make


def _cut_plain(path):
    tifffile.imwrite(path, (np.arange(6 * 12 * 10) % 999).astype(np.uint16).reshape(6, 12, 10))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])


DAMAGED = {
    "truncated ImageJ stack": (_truncated_imagej, "3 plane(s) are missing"),
    "OME SizeZ above its pages": (_ome_with_size_z(9), "5 of them are not in the file"),
    "zero planes": (_zero_planes, "holds no planes"),
    "codec needing imagecodecs": (_with_compression(5), "needs the imagecodecs package"),
    "unknown codec": (_with_compression(65000), "compression EER_V0 (65000)"),
    "cut multi-page TIFF": (_cut_plain, "truncated or damaged"),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_a_damaged_input_fails_naming_what_is_missing_and_leaves_no_partial(tmp_path, gray_weights, case):
    make, expected = DAMAGED[case]
    if case == "codec needing imagecodecs":
        pytest.importorskip("tifffile")
        try:
            import imagecodecs  # noqa: F401
            pytest.skip("imagecodecs is installed: LZW decodes")
        except ImportError:
            pass
    src, out = tmp_path / "bad.tif", tmp_path / "out"
    make(src)
    run = cli(*args(src, out, gray_weights))
    assert run.returncode == 1, run.stderr
    text = run.stdout.decode()
    assert "failed" in text and expected in text and b"Traceback" not in run.stderr
    assert hidden(out) == [] and not (out / "bad.tif").exists()


def test_an_ome_plane_count_below_the_pages_is_followed_and_said(tmp_path, gray_weights, capsys):
    src, out = tmp_path / "a.ome.tif", tmp_path / "out"
    _ome_with_size_z(2)(src)
    assert batch.main(args(src, out, gray_weights)) == 0
    text = capsys.readouterr().out
    assert "describes 2 planes but the file has 4 pages" in text
    assert tifffile.imread(out / "a.ome.tif").shape == (2, 24, 20)


@pytest.mark.parametrize("spacing", [0.0, -1.0, float("nan")])
def test_invalid_physical_sizes_are_dropped_with_a_warning_never_copied(tmp_path, gray_weights, capsys, spacing):
    src, out = tmp_path / "a.tif", tmp_path / "out"
    stack(src, metadata={"spacing": spacing, "unit": "um"}, resolution=(2.0, 2.0))
    assert batch.main(args(src, out, gray_weights)) == 0
    assert "invalid Z spacing" in capsys.readouterr().out
    info = io.read_info(out / "a.tif")
    assert info.z_spacing is None and info.pixel_size == pytest.approx((0.25, 0.25))
    with tifffile.TiffFile(out / "a.tif") as tif:
        assert "spacing" not in tif.imagej_metadata


def test_an_invalid_ome_pixel_size_is_dropped(tmp_path):
    src = tmp_path / "a.ome.tif"
    tifffile.imwrite(src, np.ones((2, 12, 10), np.uint16), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": -1.0, "PhysicalSizeY": -1.0})
    info = io.read_info(src)
    assert info.pixel_size is None and any("invalid pixel size" in w for w in info.warnings)


# ---- 5 weights ----------------------------------------------------------------------------------


def _weights_with(tmp_path, gray_weights, change) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(gray_weights, framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(tensors, meta)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path


def test_non_finite_weights_are_refused_at_load_naming_the_tensor(tmp_path, gray_weights):
    from diinn_napari.weights import WeightsError, load_weights

    def poison(tensors, meta):
        name = sorted(tensors)[3]
        tensors[name].view(-1)[0] = float("nan")
        poison.name = name

    path = _weights_with(tmp_path, gray_weights, poison)
    with pytest.raises(WeightsError, match=f"tensor '{poison.name}'"):
        load_weights(path)
    src = tmp_path / "a.tif"
    stack(src)
    run = cli(*args(src, tmp_path / "out", path))  # up front: exit 2, nothing created
    assert run.returncode == 2 and poison.name.encode() in run.stderr and not (tmp_path / "out").exists()


def test_an_absurd_config_is_refused_with_the_file_named(tmp_path, gray_weights):
    from diinn_napari.weights import WeightsError, load_weights

    def widen(tensors, meta):
        config = json.loads(meta["config"])
        config["decoder_width"] = 10**9
        meta["config"] = json.dumps(config)

    path = _weights_with(tmp_path, gray_weights, widen)
    with pytest.raises(WeightsError, match=r"bad\.safetensors: config decoder_width = 1000000000 is out of bounds"):
        load_weights(path)


def test_a_non_finite_output_plane_fails_the_file_instead_of_becoming_zeros(tmp_path, gray_weights, monkeypatch, capsys):
    import diinn_napari.engine as engine

    real = engine._render

    def broken(*a, **k):
        sr, correction = real(*a, **k)
        return sr * float("nan"), correction

    monkeypatch.setattr(engine, "_render", broken)
    src, out = tmp_path / "a.tif", tmp_path / "out"
    stack(src)
    assert batch.main(args(src, out, gray_weights)) == 1
    assert "NaN or infinite" in capsys.readouterr().out and not (out / "a.tif").exists()


# ---- 6 signals ----------------------------------------------------------------------------------


def _group_gone(pgid: int, timeout: float = 10) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _files(tmp_path, n):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(n):
        stack(folder / f"f{i}.tif", seed=i, planes=3)
    return folder


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_workers_batch_stops_within_seconds_without_orphans_and_resumes(tmp_path, gray_weights, how):
    folder, out = _files(tmp_path, 6), tmp_path / "out"
    proc = child(args(folder, out, gray_weights, "--workers", "2"), delay=1.0, start_new_session=True,
                 preexec_fn=ctrl_c_reaches_it)
    wait_for(proc, "PLANE")
    sent = time.time()
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends: the whole group
    else:
        os.kill(proc.pid, signal.SIGTERM)  # what timeout and job schedulers send: the main process only
    proc.communicate(timeout=60)
    assert time.time() - sent < 15
    assert proc.returncode == (130 if how == "ctrl-c" else 143)
    assert _group_gone(proc.pid), "worker processes outlived the batch"
    done = [p for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else []
    assert len(done) < 6  # the queued files were not started
    assert batch.main(args(folder, out, gray_weights)) == 0  # everything left is resumable
    for i in range(6):
        src = folder / f"f{i}.tif"
        assert (out / src.name).read_bytes() == reference(tmp_path, src, gray_weights)
    assert hidden(out) == []


# ---- 7 messages ---------------------------------------------------------------------------------


def test_out_that_is_a_file_is_refused_up_front(tmp_path, gray_weights):
    src, out = tmp_path / "a.tif", tmp_path / "out"
    stack(src)
    out.write_text("not a folder")
    run = cli(*args(src, out, gray_weights))
    assert run.returncode == 2 and b"is a file, not a folder" in run.stderr


def test_a_corrupt_model_is_refused_up_front(tmp_path):
    src, model = tmp_path / "a.tif", tmp_path / "m.safetensors"
    stack(src)
    model.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    run = cli(*args(src, tmp_path / "out", model))
    assert run.returncode == 2 and b"--model" in run.stderr and b"m.safetensors" in run.stderr


def test_a_file_name_that_is_not_utf8_is_printed_safely(tmp_path, gray_weights):
    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.tif")
    stack(folder / name)
    run = cli(*args(folder, tmp_path / "out", gray_weights))
    assert run.returncode == 0, run.stderr
    assert b"caf\\xe9.tif" in run.stdout and b"Traceback" not in run.stderr
    assert (tmp_path / "out" / name).exists()


def test_a_linked_input_is_named_after_the_link(tmp_path, gray_weights, capsys):
    target = tmp_path / "annex" / "SHA256E-s1234--0123abcd.tif"
    target.parent.mkdir()
    stack(target)
    link = tmp_path / "cell.tif"
    link.symlink_to(target)
    out = tmp_path / "out"
    assert batch.main(args(link, out, gray_weights)) == 0
    assert "cell.tif" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["cell.tif"]
    assert io.read_record(out / "cell.tif")["input"]["name"] == "cell.tif"


def test_no_option_is_named_that_the_command_line_lacks(tmp_path, gray_weights, capsys):
    src = tmp_path / "a.tif"
    stack(src)
    assert batch.main(args(src, tmp_path / "out", gray_weights, scale="9000")) == 1
    text = capsys.readouterr().out
    assert "above the limit" in text and "--scale" in text and "max_output_pixels" not in text


def test_a_full_disk_names_the_folder_and_the_space_needed(tmp_path, gray_weights):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        src = tmp_path / "a.tif"
        stack(src, planes=2, yx=(32, 32))  # x4: 2 planes of 128 x 128 uint16 = 64 KiB output, 64 KiB partial
        (disk / "filler").write_bytes(bytes(100 * 1024))
        out = disk / "out"
        run = cli(*args(src, out, gray_weights, scale="4"))
        text = run.stdout.decode()
        assert run.returncode == 1 and "no space left in" in text and str(out) in text and "needs about" in text
        assert b"Traceback" not in run.stderr and not (out / "a.tif").exists()
        assert not any(".tmp" in name for name in hidden(out))
        (disk / "filler").unlink()
        assert cli(*args(src, out, gray_weights, scale="4")).returncode == 0  # resumed once there is room
        assert (out / "a.tif").read_bytes() == reference(tmp_path, src, gray_weights, scale="4")
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# ---- 8 loops: kill -9 at random planes, fuzzed headers -----------------------------------------


def test_kill9_at_random_planes_each_trial_equals_an_uninterrupted_run(tmp_path, gray_weights):
    rng = np.random.default_rng(18)
    src = tmp_path / "a.tif"
    stack(src, planes=6)
    good = reference(tmp_path, src, gray_weights)
    for trial in range(5):
        out = tmp_path / f"trial{trial}"
        done = 0
        for plane in sorted(rng.choice(np.arange(1, 6), size=int(rng.integers(1, 3)), replace=False)):
            # killed once or twice, after plane `plane` of 6 (a resumed run counts its planes from its start)
            kill9_after(args(src, out, gray_weights), plane=int(plane) - done)
            done = int(plane)
        assert batch.main(args(src, out, gray_weights)) == 0
        assert (out / "a.tif").read_bytes() == good, f"trial {trial}"
        assert hidden(out) == []


def _fuzzed(seed: int, base: bytes) -> bytes:
    rng = np.random.default_rng(seed)
    data = bytearray(base)
    head = min(len(data), 400)  # the header and the first directory, where sizes, offsets and counts are
    for _ in range(int(rng.integers(1, 8))):
        at = int(rng.integers(0, head))
        data[at] = int(rng.integers(0, 256)) if rng.random() < 0.6 else rng.choice([0, 0xFF, 0x7F, 0x80])
    if rng.random() < 0.2:
        del data[int(rng.integers(head, len(data))):]
    return bytes(data)


def test_malformed_tiff_headers_never_raise_anything_but_a_clear_error_in_bounded_memory(tmp_path):
    import tracemalloc

    base_path = tmp_path / "base.tif"
    stack(base_path, planes=3)
    base = base_path.read_bytes()
    tracemalloc.start()
    try:
        for seed in range(150):
            path = tmp_path / "f.tif"
            path.write_bytes(_fuzzed(seed, base))
            try:
                info = io.read_info(path)
                if info.n_planes * np.prod(info.plane_shape) * info.dtype.itemsize > 1 << 22:
                    continue  # a header claiming a huge image: refused by the size limit before any read
                with io.open_planes(info) as reader:
                    for index in np.ndindex(*info.leading):
                        reader[index]
            except ValueError as err:
                assert "f.tif" in str(err), f"seed {seed}: the message does not name the file: {err}"
            except Exception as err:  # anything else is a bug: the batch would say it as a raw exception
                raise AssertionError(f"seed {seed}: {type(err).__name__}: {err}") from err
            assert tracemalloc.get_traced_memory()[1] < 64 << 20, f"seed {seed}: more than 64 MiB"
    finally:
        tracemalloc.stop()


def test_malformed_tiffs_through_the_command_line_fail_cleanly(tmp_path, gray_weights):
    base_path = tmp_path / "base.tif"
    stack(base_path, planes=3)
    base = base_path.read_bytes()
    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(12):
        (folder / f"f{seed:02d}.tif").write_bytes(_fuzzed(1000 + seed, base))
    (folder / "cut.tif").write_bytes(base[:300])  # at least one that is surely broken
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    run = cli(*args(folder, tmp_path / "out", gray_weights), timeout=600)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert run.returncode == 1 and b"Traceback" not in run.stderr, run.stderr[-2000:]
    lines = run.stdout.decode().splitlines()
    assert any(line.startswith("cut.tif") and "failed" in line for line in lines)
    assert max(peak, before) < 2 << 20  # KiB: under 2 GiB (torch itself is a few hundred MiB)
