"""The batch and main command lines as a user runs them: argument checks, help texts, progress output."""

import io
import re
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from diinn_napari import RunSettings, batch


def cli(*argv, module="diinn_napari.batch"):
    return subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=300)


@pytest.fixture
def image(tmp_path, rng):
    src = tmp_path / "a.tif"
    tifffile.imwrite(src, (rng.random((2, 10, 12)) * 4000).astype(np.uint16), metadata={"axes": "ZYX"})
    return src


@pytest.mark.parametrize("scale", ["0.5", "0", "1,0.5", "-2", "nan", "2,3,4", "x"])
def test_a_scale_below_one_is_rejected_up_front_and_creates_nothing(tmp_path, image, gray_weights, scale):
    out = tmp_path / "out"
    done = cli(str(image), f"--scale={scale}", "--out", str(out), "--model", str(gray_weights))
    assert done.returncode == 2
    assert "--scale" in done.stderr and ">= 1" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize("bad", [["--model", "missing.safetensors"], ["--pixel-size", "0"], ["--tile-size", "-3"],
                                 ["--workers", "0"], ["--device", "tpu"]])
def test_a_run_that_cannot_start_is_refused_before_creating_anything(tmp_path, image, gray_weights, bad):
    out = tmp_path / "out"
    argv = [str(image), "--scale", "2", "--out", str(out)]
    argv += bad if bad[0] == "--model" else [*bad, "--model", str(gray_weights)]
    if bad[0] == "--pixel-size":
        argv.remove("--scale"), argv.remove("2")
    done = cli(*argv)
    assert done.returncode == 2, done.stdout + done.stderr
    assert bad[0] in done.stderr
    assert not out.exists()


def test_a_run_where_every_file_fails_leaves_no_output_folder(tmp_path, gray_weights, capsys):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 not really a tiff")
    assert batch.main([str(broken), "--scale", "2", "--out", str(tmp_path / "out"), "--model", str(gray_weights)]) == 1
    assert "cannot read this TIFF" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_main_job_rejects_a_scale_below_one_before_doing_anything(tmp_path):
    done = cli("--scale", "0.5", "--out", str(tmp_path / "demo"), module="diinn_napari")
    assert done.returncode == 2 and "--scale" in done.stderr
    assert not (tmp_path / "demo").exists()


def option_blocks(help_text: str) -> dict[str, str]:
    """argparse help -> {'--flag': 'its whole entry'} for every option (not positionals)."""
    blocks, current = {}, None
    for line in help_text.splitlines():
        match = re.match(r"^  (-\S+)", line)
        if match:
            current = match.group(1).split(",")[0]
            blocks[current] = line
        elif current and line.startswith("      "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return blocks


@pytest.mark.parametrize("module", ["diinn_napari.batch", "diinn_napari"])
def test_every_option_has_a_help_text_that_shows_its_default(module):
    done = cli("--help", module=module)
    assert done.returncode == 0
    blocks = option_blocks(done.stdout)
    assert len(blocks) >= (10 if module == "diinn_napari.batch" else 3)
    for flag, text in blocks.items():
        if flag == "-h":
            continue
        words = re.sub(r"^\s*-\S+( [A-Z_,.{}\[\]\-|a-z0-9]+)?", "", text).strip()
        assert len(words) > 15, f"{flag} has no help text: {text!r}"
        assert "default" in text.lower(), f"{flag} does not show its default: {text!r}"


def test_a_redirected_log_has_no_progress_bar_escape_codes(tmp_path, image, gray_weights):
    done = cli(str(image), "--scale", "2", "--out", str(tmp_path / "out"), "--model", str(gray_weights))
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\x1b[" not in done.stderr
    assert "\r" not in done.stdout and "\x1b[" not in done.stdout


def test_one_progress_bar_for_the_whole_batch(tmp_path, rng, gray_weights, monkeypatch):
    import tqdm

    for name in ("a", "b"):
        tifffile.imwrite(tmp_path / f"{name}.tif", (rng.random((3, 8, 8)) * 255).astype(np.uint8), photometric="minisblack")
    bars = []
    real = tqdm.tqdm

    class Counting(real):
        def __init__(self, *a, **k):
            bars.append(k.get("total"))
            super().__init__(*a, **k)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(tqdm, "tqdm", Counting)
    monkeypatch.setattr(sys, "stderr", Terminal())
    settings = batch.Settings(tmp_path / "out", RunSettings(scale=2, model=str(gray_weights)))
    results = batch.run_batch(sorted(tmp_path.glob("*.tif")), settings)
    assert [r.status for r in results] == ["done", "done"]
    assert bars == [6]  # one bar, counting the planes of both files
    assert "6/6" in sys.stderr.getvalue()


def test_a_run_where_the_model_fails_every_file_leaves_no_output_folder(tmp_path, rng, gray_weights, capsys):
    src = tmp_path / "rgb.tif"
    tifffile.imwrite(src, (rng.random((10, 12, 3)) * 255).astype(np.uint8), photometric="rgb")
    # a 1-channel model for an RGB file: the engine refuses it at the first plane
    assert batch.main([str(src), "--scale", "2", "--out", str(tmp_path / "out"), "--model", str(gray_weights)]) == 1
    assert "1-channel" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_ensemble_with_isotropic_is_refused_before_creating_anything(tmp_path, image, gray_weights):
    out = tmp_path / "out"
    done = cli(str(image), "--isotropic", "--z-step", "2", "--ensemble", "--out", str(out), "--model", str(gray_weights))
    assert done.returncode == 2
    assert "--ensemble" in done.stderr and "--isotropic" in done.stderr
    assert not out.exists()


def test_a_stack_of_gray_samples_is_reported_failed_with_what_to_do_and_the_batch_goes_on(tmp_path, rng, gray_weights):
    # a 3-page stack of 4 minisblack samples per pixel: bands, not RGBA; the batch refuses it and upscales the rest
    bands, good, out = tmp_path / "in" / "bands.tif", tmp_path / "in" / "good.tif", tmp_path / "out"
    bands.parent.mkdir()
    data = (rng.random((3, 10, 12, 4)) * 4000).astype(np.uint16)
    tifffile.imwrite(bands, data, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(good, (rng.random((2, 10, 12)) * 4000).astype(np.uint16), metadata={"axes": "ZYX"})
    before = bands.read_bytes()
    done = cli(str(bands.parent), "--scale", "2", "--out", str(out), "--model", str(gray_weights))
    assert done.returncode == 1, done.stdout + done.stderr
    said = done.stdout + done.stderr
    assert "bands.tif" in said and "4 gray samples per pixel" in said and "save the bands as a channel axis" in said
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["good.tif"]
    assert bands.read_bytes() == before
