"""Fine-tuning is never silently worse: step-0 validation, keep-the-best, the report, the preset's parts."""

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

from diinn_napari.train import config, loop, optim, step, validation
from diinn_napari.train.data import PlaneSet, validation_crops
from diinn_napari.weights import load_weights, read_metadata, save_weights

from conftest import tiny_model


def smooth(rng, shape, top=60000.0):
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]] / 6.0
    a, b, c = rng.random(3) * 6
    img = np.sin(x + a) * np.cos(0.8 * y + b) + 0.4 * np.sin(0.25 * x * y / 6 + c)
    return (img - img.min()) / (img.max() - img.min()) * top


@pytest.fixture
def folder(tmp_path, rng):
    """A tiny folder: six 16-bit smooth images (two of them held aside by the default split)."""
    path = tmp_path / "tiles"
    path.mkdir()
    for i in range(6):
        tifffile.imwrite(path / f"img{i}.tif", smooth(rng, (64, 72)).astype(np.uint16))
    return path


@pytest.fixture
def start(tmp_path):
    return save_weights(tiny_model(), tmp_path / "start.safetensors")


@pytest.fixture
def poor_start(tmp_path):
    """A start that training surely improves: the tiny model with its output layer's weights inflated (noisy output)."""
    model = tiny_model()
    with torch.no_grad():
        model.decoder.out.weight.mul_(30)
    return save_weights(model, tmp_path / "poor.safetensors")


def args_for(folder, weights, out, *extra):
    return ["--data", str(folder), "--weights", str(weights), "--out", str(out), "--patch", "16", "--batch", "4",
            "--queries", "256", "--scales", "1-4", "--threads", "1", "--val-patches", "6", "--val-crop", "48",
            "--val-fraction", "0.34", *extra]


def test_a_finetune_that_would_get_worse_keeps_the_start_and_says_so(folder, start, tmp_path):
    """The command, as a user runs it: a far too high rate ruins the model; nothing is written, exit status 3."""
    out = tmp_path / "tuned.safetensors"
    cmd = [sys.executable, "-m", "diinn_napari.finetune",
           *args_for(folder, start, out, "--lr", "0.5", "--warmup", "0", "--steps", "6", "--val-every", "3")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == loop.NOT_BETTER, done.stderr[-3000:]
    err = done.stderr
    assert "step 0 (the start)" in err and "did not beat the start" in err and "nothing written" in err
    assert "start gain" in err and "result gain" in err  # the per-scale report
    assert not out.exists()
    # the start's scores are the first line of the validation log
    first = json.loads(out.with_suffix(".log.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and {"x2", "x4", "mean_gain"} <= set(first)


def test_the_start_is_validated_at_step_0_and_the_report_says_start_and_result(folder, poor_start, tmp_path, caplog):
    caplog.set_level("INFO")
    out = tmp_path / "good.safetensors"
    args = config.build_parser().parse_args(args_for(folder, poor_start, out, "--lr", "3e-3", "--steps", "30", "--val-every", "10"))
    result = loop.train(args)
    assert result["exit_code"] == 0, caplog.text[-2000:]
    assert result["start"] is not None and result["best"]["mean_gain"] > result["start"]["mean_gain"]
    meta = read_metadata(out)
    assert meta["start_metrics"] == result["start"] and meta["metrics"] == result["best"]
    logged = [json.loads(line) for line in out.with_suffix(".log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [0, 10, 20, 30]
    assert logged[0]["mean_gain"] == pytest.approx(result["start"]["mean_gain"])
    text = caplog.text
    assert "step 0 (the start)" in text and "start gain" in text and "result gain" in text and "result bias" in text


def test_a_time_limited_stop_keeps_the_best_validated_weights_not_the_last(folder, start, tmp_path, monkeypatch):
    # scripted validation: the start +1.0 dB, step 4 +1.5 (the best), step 8 +1.2; the time runs out at step 9
    gains = iter([1.0, 1.5, 1.2, 1.1])

    def scripted(model, crops, scales, device, crop=192):
        g = next(gains)
        per = {f"x{s:g}": {"psnr": 30 + g, "bicubic": 30.0, "bias_percent": 0.01} for s in scales}
        return {**per, "mean_gain": g}

    monkeypatch.setattr(loop, "validate", scripted)
    monkeypatch.setattr(optim.StepClock, "out_of_time", lambda self: len(self.step_seconds) >= 9)
    out = tmp_path / "timed.safetensors"
    args = config.build_parser().parse_args(args_for(folder, start, out, "--time-limit", "5", "--val-every", "4"))
    result = loop.train(args)
    assert result["exit_code"] == 0 and result["step"] == 9
    assert read_metadata(out)["steps"] == 4 and read_metadata(out)["metrics"]["mean_gain"] == 1.5
    assert read_metadata(tmp_path / "timed.last.safetensors")["steps"] == 9


def test_better_than_needs_a_higher_mean_and_no_scale_lost():
    def m(*gains):
        per = {f"x{i + 2}": {"psnr": 30 + g, "bicubic": 30.0, "bias_percent": 0} for i, g in enumerate(gains)}
        return {**per, "mean_gain": float(np.mean(gains))}

    assert validation.better_than(m(1.0, 1.0), None)
    assert validation.better_than(m(1.1, 1.0), m(1.0, 1.0))
    assert not validation.better_than(m(1.0, 1.0), m(1.0, 1.0))  # equal is not better
    assert not validation.better_than(m(1.5, 0.95), m(1.0, 1.0))  # x3 lost 0.05 dB > the tolerance
    assert validation.better_than(m(1.5, 0.99), m(1.0, 1.0))
    assert not validation.better_than(m(1.01, 1.01), m(1.0, 1.0), margin=0.02)  # a rise within the margin is no evidence
    assert validation.better_than(m(1.03, 1.03), m(1.0, 1.0), margin=0.02)


@pytest.mark.parametrize("min_gain, written", [(None, False), ("0", True)])
def test_a_rise_within_the_margin_keeps_the_start(folder, start, tmp_path, monkeypatch, min_gain, written):
    # scripted validation: the start +1.00 dB, then +1.010 and +1.015: below the default 0.02 dB margin
    gains = iter([1.0, 1.01, 1.015])

    def scripted(model, crops, scales, device, crop=192):
        g = next(gains)
        return {**{f"x{s:g}": {"psnr": 30 + g, "bicubic": 30.0, "bias_percent": 0.0} for s in scales}, "mean_gain": g}

    monkeypatch.setattr(loop, "validate", scripted)
    out = tmp_path / "margin.safetensors"
    extra = ["--min-gain", min_gain] if min_gain else []
    result = loop.train(config.build_parser().parse_args(args_for(folder, start, out, "--steps", "8", "--val-every", "4", *extra)))
    assert result["exit_code"] == (0 if written else loop.NOT_BETTER) and out.exists() == written


def test_validation_crops_reach_their_count_fixed_by_the_seed_and_warn_when_thin():
    planes = [torch.rand(1, 200, 180, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    sets = PlaneSet(planes, ["a", "b", "c"], [], [0, 1, 2])
    one = validation_crops(sets, 12, 64, seed=5)
    again = validation_crops(sets, 12, 64, seed=5)
    assert len(one.crops) == 12 and all(c.shape == (1, 64, 64) for c in one.crops)
    assert all(torch.equal(a, b) for a, b in zip(one.crops, again.crops)) and one.files == 3 and not one.warnings
    other = validation_crops(sets, 12, 64, seed=6)
    assert not all(torch.equal(a, b) for a, b in zip(one.crops, other.crops))
    # one small file: the crops overlap and a single file is too few to trust
    thin = validation_crops(PlaneSet([planes[0][:, :80, :80]], ["a"], [], [0]), 12, 64, seed=5)
    assert len(thin.crops) == 12 and len(thin.warnings) == 2
    assert "only 1 held-aside file" in thin.warnings[0] and "overlap" in thin.warnings[1]
    empty = validation_crops(PlaneSet([], [], [], []), 12, 64, seed=5)
    assert not empty.crops and "cannot be checked" in empty.warnings[0]


def test_too_little_held_aside_data_is_warned_about(folder, start, tmp_path, caplog):
    args = config.build_parser().parse_args(args_for(folder, start, tmp_path / "w.safetensors", "--steps", "1",
                                                     "--val-fraction", "0.1", "--val-patches", "40"))
    loop.train(args)
    assert "only 1 held-aside file" in caplog.text and "overlap" in caplog.text


def test_the_time_limited_horizon_follows_the_measured_step_time():
    clock = optim.StepClock(limit_s=100.0, steps=10_000, val_every=10, probe=3)
    assert clock.horizon(0) == 10_000  # not measured yet
    for _ in range(3):
        clock.step_done(0.5)
    clock.validation_done(5.0)
    clock.started -= 20.0  # 20 s gone
    # 100 - 20 - 5 (a final validation) = 75 s left at 0.5 s per step plus 5 s per 10 steps: 75 steps more
    assert 3 + 74 <= clock.horizon(3) <= 3 + 75  # (a few microseconds more have passed)
    assert optim.StepClock(None, 500, 10).horizon(7) == 500


def test_cosine_rate_warms_up_and_ends_at_its_floor():
    assert optim.cosine_rate(1e-4, 0, 100, warmup=10) == pytest.approx(1e-5)
    assert optim.cosine_rate(1e-4, 50, 100) == pytest.approx(5e-5)
    assert optim.cosine_rate(1e-4, 100, 100, floor=0.1) == pytest.approx(1e-5)
    assert optim.cosine_rate(1e-4, 500, 100) == pytest.approx(0, abs=1e-15)


@pytest.mark.parametrize("trainable", ["decoder", "encoder-slow"])
def test_what_to_train(trainable):
    model = tiny_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = optim.make_optimizer(model, 1e-2, trainable, encoder_factor=0.1)
    optim.set_rate(optimizer, 1e-2)
    lr = torch.rand(2, 1, 12, 12)
    hrs = [torch.rand(1, 24, 24), torch.rand(1, 30, 30)]
    loss = step.PointLoss(model, 64)(lr, hrs, torch.Generator().manual_seed(0))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    encoder = [k for k in before if k.startswith("encoder.")]
    decoder = [k for k in before if not k.startswith("encoder.") and before[k].is_floating_point()]
    assert encoder and decoder and any(not torch.equal(before[k], after[k]) for k in decoder)
    if trainable == "decoder":
        assert all(torch.equal(before[k], after[k]) for k in encoder)
    else:
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-2, 1e-3])
        assert any(not torch.equal(before[k], after[k]) for k in encoder)


def test_decoder_only_fine_tuning_runs_and_records_it(folder, start, tmp_path):
    out = tmp_path / "dec.safetensors"
    args = config.build_parser().parse_args(args_for(folder, start, out, "--train", "decoder", "--steps", "2", "--val-every", "2"))
    result = loop.train(args)
    assert result["exit_code"] in (0, loop.NOT_BETTER)
    last = load_weights(tmp_path / "dec.last.safetensors").state_dict()
    first = load_weights(start).state_dict()
    # float16 storage: the frozen encoder comes back as it went in
    assert all(torch.allclose(first[k], last[k], atol=1e-3) for k in first if k.startswith("encoder."))
    assert read_metadata(tmp_path / "dec.last.safetensors")["recipe"]["trainable"] == "decoder"


@pytest.mark.parametrize("names, expected", [
    # frames, views and tile numbers of one recording are one source
    (["tile_0001.tif", "tile_0002.tif", "tile_0500.tif"], {"all": 3}),
    (["rgb0.png", "rgb1.png"], {"all": 2}),
    # camera systems below a shared prefix: the shortest part of the names that tells them apart
    (["tno_triclobs_marne_01.png", "tno_triclobs_bosnia.png", "tno_fel_duine_sequence.tif"], {"tno_triclobs": 2, "tno_fel": 1}),
    (["brightfield__colicoords_00001.tif", "brightfield__colicoords_00066.tif", "phase__usiigaci_T98G_xy01t13.tif"],
     {"brightfield": 2, "phase": 1}),
    (["athena_apc_1_view_1.png", "athena_apc_1_view_3.png", "athena_apc_3_view_1.png", "athena_lake.png"],
     {"athena_apc": 3, "athena_lake": 1}),
    # sub-folders come first
    (["lab_a/img_01.tif", "lab_a/img_02.tif", "lab_b/img_01.tif"], {"lab_a": 2, "lab_b": 1}),
])
def test_sources_are_the_names_before_their_frame_numbers(tmp_path, names, expected):
    from diinn_napari.train.sources import group_by_source

    groups = group_by_source([tmp_path / n for n in names], tmp_path)
    assert {k: len(v) for k, v in groups.items()} == expected


def test_whole_sources_are_held_aside_never_split_across_training_and_validation(tmp_path):
    from diinn_napari.train.sources import source_key, split_by_source

    files = ([tmp_path / f"labA_t{i:02d}.tif" for i in range(8)] + [tmp_path / f"labB_view_{i}.tif" for i in range(3)]
             + [tmp_path / f"labC_{i:03d}.tif" for i in range(4)])
    for seed in range(6):
        split = split_by_source([files], 0.1, seed, roots=[tmp_path])
        train_sources = {source_key(f, tmp_path) for f in split.train}
        val_sources = {source_key(f, tmp_path) for f in split.val}
        assert split.val and split.train and not train_sources & val_sources
        assert sorted(split.train + split.val) == sorted(files)
        # 10 % is 1.5 files: the smallest source (3 files) is the most held aside
        assert val_sources == {("labb", "view")} and "whole sources" in split.notes[0]
    # drawn file by file instead, some seed puts a source on both sides
    by_files = [split_by_source([files], 0.3, seed, roots=[tmp_path], by="files") for seed in range(6)]
    assert any({source_key(f) for f in s.train} & {source_key(f) for f in s.val} for s in by_files)
    # --hold-out chooses instead; --val-fraction 0 holds nothing aside
    chosen = split_by_source([files], 0.1, 0, hold_out=["labA_t07*"], roots=[tmp_path])
    assert chosen.val == [tmp_path / "labA_t07.tif"]
    assert split_by_source([files], 0.0, 0, roots=[tmp_path]).val == []
    # one source: single files, as before
    one = split_by_source([files[:8]], 0.25, 0, roots=[tmp_path])
    assert len(one.val) == 2 and len(one.train) == 6


def test_the_command_validates_on_a_source_it_does_not_train_on(tmp_path, rng, start):
    """As a user runs it: two cameras in one folder; the check is on the camera held aside, the metadata says which."""
    path = tmp_path / "tiles"
    path.mkdir()
    for camera, count in (("camA", 4), ("camB", 2)):
        for i in range(count):
            tifffile.imwrite(path / f"{camera}_frame{i:03d}.tif", smooth(rng, (64, 72)).astype(np.uint16))
    out = tmp_path / "tuned.safetensors"
    cmd = [sys.executable, "-m", "diinn_napari.finetune",
           *args_for(path, start, out, "--val-fraction", "0.1", "--steps", "2", "--val-every", "2")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, loop.NOT_BETTER), done.stderr[-3000:]
    assert "holding aside whole sources for validation: camb (2 files); training on cama" in done.stderr
    meta = read_metadata(tmp_path / "tuned.last.safetensors")
    assert sorted(Path(f).name for f in meta["val_files"]) == ["camB_frame000.tif", "camB_frame001.tif"]
    assert meta["train_files"] == 4 and meta["recipe"]["split"] == "sources"
