import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from skimage.io import imsave

from diinn_napari import finetune
from diinn_napari.weights import load_weights, read_metadata, save_weights

from conftest import tiny_model


def smooth_image(rng, shape, scale=255.0):
    """Smooth random structure: learnable, unlike white noise."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]] / 7.0
    phase = rng.random(4) * 6
    img = np.sin(x + phase[0]) * np.cos(0.7 * y + phase[1]) + 0.5 * np.sin(0.3 * x * y / 5 + phase[2])
    return (img - img.min()) / (img.max() - img.min()) * scale


@pytest.fixture
def tiles(tmp_path, rng):
    folder = tmp_path / "tiles"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        imsave(folder / f"rgb{i}.png", np.repeat(smooth_image(rng, (70, 80))[..., None], 3, 2).astype(np.uint8))
    tifffile.imwrite(folder / "sub" / "stack.tif", np.stack([smooth_image(rng, (72, 72), 60000) for _ in range(3)]).astype(np.uint16))
    tifffile.imwrite(folder / "float.tif", smooth_image(rng, (66, 90), 1.0).astype(np.float32))
    (folder / "notes.txt").write_text("not an image")
    (folder / "corrupt.tif").write_bytes(b"II*\x00garbage")
    imsave(folder / "tiny.png", np.zeros((10, 10), np.uint8), check_contrast=False)
    return folder


@pytest.fixture
def start_weights(tmp_path):
    return save_weights(tiny_model(), tmp_path / "start.safetensors")


def run(tiles, weights, out, *extra):
    args = finetune.build_parser().parse_args(
        ["--data", str(tiles), "--weights", str(weights), "--out", str(out), "--patch", "16", "--batch", "4",
         "--queries", "256", "--scales", "1-3", "--val-every", "5", "--lr", "2e-3", "--threads", "1", *extra]
    )
    return finetune.train(args)


def test_a_few_steps_lower_the_loss_and_write_loadable_weights(tiles, start_weights, tmp_path):
    out = tmp_path / "tuned.safetensors"
    history = run(tiles, start_weights, out, "--steps", "40")
    losses = history["losses"]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    model = load_weights(out)
    meta = read_metadata(out)
    assert meta["steps"] > 0 and meta["base_weights"] == str(start_weights)
    assert set(meta["metrics"]) >= {"x2", "x3", "mean_gain"}
    assert model.config == tiny_model().config
    assert (tmp_path / "tuned.last.safetensors").exists() and (tmp_path / "tuned.state.pt").exists()


def test_unreadable_and_small_files_are_skipped_with_a_count(tiles, start_weights, tmp_path, caplog):
    caplog.set_level("INFO")
    run(tiles, start_weights, tmp_path / "t.safetensors", "--steps", "1", "--val-fraction", "0")
    text = caplog.text
    assert "corrupt.tif" in text and "tiny.png" in text and "2 files skipped" in text


def test_resume_continues_exactly(tiles, start_weights, tmp_path, monkeypatch):
    straight = tmp_path / "straight.safetensors"
    run(tiles, start_weights, straight, "--steps", "10", "--seed", "3")

    resumed = tmp_path / "resumed.safetensors"
    original = finetune.PairSampler.sample
    calls = {"n": 0}

    def interrupted(self, gen):
        calls["n"] += 1
        if calls["n"] > 4 * 6:  # Ctrl-C while drawing step 7's batch
            raise KeyboardInterrupt
        return original(self, gen)

    monkeypatch.setattr(finetune.PairSampler, "sample", interrupted)
    assert run(tiles, start_weights, resumed, "--steps", "10", "--seed", "3")["exit_code"] == 130
    monkeypatch.setattr(finetune.PairSampler, "sample", original)
    assert run(tiles, start_weights, resumed, "--steps", "10", "--seed", "3", "--resume")["step"] == 10

    a = torch.load(tmp_path / "straight.state.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed.state.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_from_scratch_needs_no_weights(tiles, tmp_path):
    args = finetune.build_parser().parse_args(
        ["--data", str(tiles), "--weights", "none", "--channels", "3", "--out", str(tmp_path / "s.safetensors"),
         "--steps", "1", "--patch", "16", "--batch", "1", "--queries", "64", "--val-fraction", "0"]
    )
    assert finetune.train(args)["exit_code"] == 0
    assert read_metadata(tmp_path / "s.safetensors")["config"]["in_channels"] == 3


@pytest.mark.parametrize("make, message", [(lambda p: p / "missing", "not found"), (lambda p: p, "no images")])
def test_missing_or_empty_folder_is_a_clear_error(tmp_path, start_weights, make, message):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match=message):
        run(make(folder), start_weights, tmp_path / "x.safetensors", "--steps", "1")


def test_folder_without_usable_images_is_a_clear_error(tmp_path, start_weights):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.tif").write_bytes(b"nonsense")
    with pytest.raises(SystemExit, match="no usable training image"):
        run(folder, start_weights, tmp_path / "x.safetensors", "--steps", "1")


def test_two_process_ddp_on_cpu(tiles, start_weights, tmp_path):
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "diinn_napari.finetune",
           "--data", str(tiles), "--weights", str(start_weights), "--out", str(out), "--steps", "3", "--patch", "16",
           "--batch", "2", "--queries", "64", "--device", "cpu", "--val-every", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = read_metadata(out)
    assert meta["world_size"] == 2 and meta["steps"] == 3
    state = torch.load(tmp_path / "ddp.state.pt", weights_only=True)
    assert len(state["generator"]) == 2


def test_every_folder_and_every_held_out_pattern_is_validated(tmp_path):
    groups = [[tmp_path / f"a{i}.png" for i in range(10)], [tmp_path / f"b{i}.tif" for i in range(3)]]
    train, val = finetune.split_files(groups, 0.1, seed=0, hold_out=["a7*"])
    assert tmp_path / "a7.png" in val
    assert any(p.name.startswith("b") for p in val) and any(p.name.startswith("b") for p in train)
    assert not set(train) & set(val) and len(train) + len(val) == 13
    assert finetune.split_files(groups, 0.1, seed=0, hold_out=["a7*"]) == (train, val)  # deterministic
