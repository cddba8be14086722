import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from skimage.io import imsave

from diinn_napari.train import cli, config, loop, step, validation
from diinn_napari.train.data import PairSampler
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
    args = config.build_parser().parse_args(
        ["--data", str(tiles), "--weights", str(weights), "--out", str(out), "--patch", "16", "--batch", "4",
         "--queries", "256", "--scales", "1-3", "--val-every", "5", "--lr", "2e-3", "--threads", "1", "--val-patches", "8",
         *extra]
    )
    return loop.train(args)


def test_a_few_steps_lower_the_loss_and_write_loadable_weights(tiles, start_weights, tmp_path):
    out = tmp_path / "tuned.safetensors"
    # the classic recipe: no augmentation noise in the loss curve of 40 steps
    history = run(tiles, start_weights, out, "--steps", "40", "--recipe", "classic")
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
    original = PairSampler.sample_batch
    calls = {"n": 0}

    def interrupted(self, gen, n):
        calls["n"] += 1
        if calls["n"] > 6:  # Ctrl-C while drawing step 7's batch
            raise KeyboardInterrupt
        return original(self, gen, n)

    monkeypatch.setattr(PairSampler, "sample_batch", interrupted)
    assert run(tiles, start_weights, resumed, "--steps", "10", "--seed", "3")["exit_code"] == 130
    monkeypatch.setattr(PairSampler, "sample_batch", original)
    assert run(tiles, start_weights, resumed, "--steps", "10", "--seed", "3", "--resume")["step"] == 10

    # the default (scientific) recipe: the weights and their moving average both resume exactly
    for key in ("model", "ema"):
        a = torch.load(tmp_path / "straight.state.pt", weights_only=True)[key]
        b = torch.load(tmp_path / "resumed.state.pt", weights_only=True)[key]
        assert a and all(torch.equal(a[k], b[k]) for k in a)


def test_from_scratch_needs_no_weights(tiles, tmp_path):
    args = config.build_parser().parse_args(
        ["--data", str(tiles), "--weights", "none", "--channels", "3", "--out", str(tmp_path / "s.safetensors"),
         "--steps", "1", "--patch", "16", "--batch", "1", "--queries", "64", "--val-fraction", "0"]
    )
    assert loop.train(args)["exit_code"] == 0
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
    # a library error, not SystemExit: callers (a notebook, the widget) catch it
    with pytest.raises(config.TrainingError, match="no usable training image"):
        run(folder, start_weights, tmp_path / "x.safetensors", "--steps", "1")


def test_two_process_ddp_on_cpu(tiles, start_weights, tmp_path):
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "diinn_napari.finetune",
           "--data", str(tiles), "--weights", str(start_weights), "--out", str(out), "--steps", "3", "--patch", "16",
           "--batch", "2", "--queries", "64", "--device", "cpu", "--val-every", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    # rank 0 validates the start and the result; 3 steps at the fine-tuning rate may not beat a random start
    assert done.returncode == 0 or "did not beat the start" in done.stderr, done.stderr[-3000:]
    assert "step 0 (the start)" in done.stderr
    meta = read_metadata(tmp_path / "ddp.last.safetensors")
    assert meta["world_size"] == 2 and meta["steps"] == 3
    state = torch.load(tmp_path / "ddp.state.pt", weights_only=True)
    assert len(state["generator"]) == 2


def test_every_folder_and_every_held_out_pattern_is_validated(tmp_path):
    groups = [[tmp_path / f"a{i}.png" for i in range(10)], [tmp_path / f"b{i}.tif" for i in range(3)]]
    train, val = validation.split_files(groups, 0.1, seed=0, hold_out=["a7*"])
    assert tmp_path / "a7.png" in val
    assert any(p.name.startswith("b") for p in val) and any(p.name.startswith("b") for p in train)
    assert not set(train) & set(val) and len(train) + len(val) == 13
    assert validation.split_files(groups, 0.1, seed=0, hold_out=["a7*"]) == (train, val)  # deterministic


def test_main_turns_errors_into_a_message_and_exit_code_2(tmp_path, start_weights, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.tif").write_bytes(b"nonsense")
    assert cli.main(["--data", str(folder), "--weights", str(start_weights), "--steps", "1",
                          "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "no usable training image" in capsys.readouterr().err
    assert cli.main(["--data", str(folder), "--scales", "0.5-2", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "--scales" in capsys.readouterr().err
    with pytest.raises(config.TrainingError, match="--ema"):
        config.resolve_recipe(config.build_parser().parse_args(["--data", "x", "--ema", "1.5"]))


def test_scales_listed_high_to_low_validate_at_the_largest(tiles, start_weights, tmp_path):
    # regression: the maximum was taken as the last listed scale, so "4,2" validated at x2 only
    out = tmp_path / "t.safetensors"
    run(tiles, start_weights, out, "--steps", "2", "--val-every", "2", "--scales", "4,2")
    assert {"x2", "x4"} <= set(read_metadata(tmp_path / "t.last.safetensors")["metrics"])


def test_the_callers_sigterm_handler_is_restored(tiles, start_weights, tmp_path):
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        run(tiles, start_weights, tmp_path / "t.safetensors", "--steps", "1")
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_every_option_has_a_help_text_and_shows_its_default():
    parser = config.build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, action.option_strings
        assert action.required or "default" in formatter._get_help_string(action), action.option_strings
    text = " ".join(parser.format_help().split())  # undo line wrapping
    assert "(default: 0)" in text and "scientific: cosine" in text


def test_ema_weights_are_saved_and_differ_from_the_raw_weights(tiles, start_weights, tmp_path):
    out = tmp_path / "ema.safetensors"
    run(tiles, start_weights, out, "--steps", "6", "--ema", "0.9", "--val-every", "3", "--lr", "1e-2")
    state = torch.load(tmp_path / "ema.state.pt", weights_only=True)
    saved = load_weights(tmp_path / "ema.last.safetensors").state_dict()
    raw, ema = state["model"], state["ema"]
    assert any(not torch.allclose(raw[k], ema[k]) for k in raw)
    # the file holds the average (float16 storage), not the raw weights
    to_ema = sum(float(((saved[k] - ema[k]) ** 2).sum()) for k in ema)
    to_raw = sum(float(((saved[k] - raw[k]) ** 2).sum()) for k in raw)
    assert to_ema < 0.1 * to_raw
    assert read_metadata(tmp_path / "ema.last.safetensors")["recipe"]["ema"] == 0.9


def test_learning_rate_schedules():
    args = config.resolve_recipe(config.build_parser().parse_args(["--data", "x", "--lr", "1e-3", "--schedule", "cosine",
                                                                   "--warmup", "0", "--lr-floor", "0"]))
    assert config.learning_rate(args, 0, 100) == pytest.approx(1e-3)
    assert config.learning_rate(args, 50, 100) == pytest.approx(5e-4)
    assert config.learning_rate(args, 100, 100) == pytest.approx(0, abs=1e-12)
    args.schedule, args.warmup = "step", 10
    assert config.learning_rate(args, 0, 100) == pytest.approx(1e-4)  # warm-up: 1/10 of the rate
    assert [config.learning_rate(args, s, 100) for s in (20, 50, 80)] == pytest.approx([1e-3, 5e-4, 2.5e-4])


def test_recipe_fills_only_the_options_left_unset():
    parse = config.build_parser().parse_args
    sci = config.resolve_recipe(parse(["--data", "x"]))
    assert sci.recipe == "scientific" and sci.ema > 0 and sci.dark > 0 and sci.schedule == "cosine"
    assert sci.scale_spec[0] == "mix" and max(c[1] for c in sci.scale_spec[1]) >= 8
    classic = config.resolve_recipe(parse(["--data", "x", "--weights", "none", "--recipe", "classic", "--dark", "0.5"]))
    assert classic.ema == 0 and classic.dark == 0.5 and classic.scales == "1-4" and classic.loss == "l1"
    assert classic.preset == "scratch" and classic.lr == 5e-4 and classic.steps == 2000 and classic.time_limit is None
    # a trained start: the fine-tuning preset's schedule and EMA win over the recipe's, the command line over both
    tuned = config.resolve_recipe(parse(["--data", "x", "--recipe", "classic", "--warmup", "7"]))
    finetune = config.PRESETS["finetune"]
    assert tuned.preset == "finetune" and tuned.ema == finetune["ema"] and tuned.schedule == "cosine"
    assert tuned.lr == finetune["lr"] and tuned.warmup == 7 and tuned.loss == "l1"
    assert tuned.time_limit == config.FINETUNE_MINUTES  # sized by time unless --steps or --epochs says otherwise
    assert config.resolve_recipe(parse(["--data", "x", "--steps", "50"])).time_limit is None


def test_charbonnier_and_consistency_terms():
    model = tiny_model().train()
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    torch.manual_seed(0)
    lr = torch.rand(2, 1, 8, 8)
    hrs = [torch.rand(1, 16, 16), torch.rand(1, 24, 20)]
    l1 = step.PointLoss(model, 64, "l1")(lr, hrs, gen())
    charb = step.PointLoss(model, 64, "charbonnier")(lr, hrs, gen())
    # sqrt(d^2 + eps^2) lies between |d| and |d| + eps
    assert l1 <= charb <= l1 + step.PointLoss.CHARBONNIER_EPS
    with_term = step.PointLoss(model, 64, "l1", consistency=1.0)(lr, hrs, gen())
    assert with_term > l1
    with_term.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # an item larger than the cap gets no consistency term (it would decode too many pixels)
    big = [torch.rand(1, 200, 200), torch.rand(1, 120, 120)]
    capped = step.PointLoss(model, 64, "l1", consistency=1.0)
    assert torch.equal(capped(lr, big, gen()), step.PointLoss(model, 64, "l1")(lr, big, gen()))
    with pytest.raises(ValueError, match="unknown loss"):
        step.PointLoss(model, 64, "l2")


def test_scientific_recipe_trains_and_records_its_recipe(tiles, start_weights, tmp_path):
    out = tmp_path / "sci.safetensors"
    result = run(tiles, start_weights, out, "--steps", "4", "--val-every", "4", "--consistency", "0.5")
    assert result["exit_code"] in (0, loop.NOT_BETTER) and len(result["losses"]) == 4 and all(np.isfinite(result["losses"]))
    meta = read_metadata(tmp_path / "sci.last.safetensors")
    assert meta["recipe"]["recipe"] == "scientific" and meta["recipe"]["consistency"] == 0.5
    assert meta["recipe"]["axial"] == config.RECIPES["scientific"]["axial"]
    assert "bias_percent" in meta["metrics"]["x2"]


def test_axial_items_train_from_the_command_line(tiles, start_weights, tmp_path):
    """`python -m diinn_napari.finetune --axial 1`: every item is Z of a stack; the run finishes and records it."""
    out = tmp_path / "axial.safetensors"
    cmd = [sys.executable, "-m", "diinn_napari.finetune", "--data", str(tiles), "--weights", str(start_weights),
           "--out", str(out), "--axial", "1", "--steps", "3", "--patch", "16", "--batch", "4", "--queries", "128",
           "--scales", "2-4", "--val-every", "3", "--device", "cpu", "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, loop.NOT_BETTER), done.stderr[-3000:]
    meta = read_metadata(tmp_path / "axial.last.safetensors")
    assert meta["recipe"]["axial"] == 1.0 and meta["steps"] == 3


def test_output_folder_is_created(tiles, start_weights, tmp_path):
    # regression: the validation log was opened before any weights file had created the folder
    out = tmp_path / "new" / "folder" / "t.safetensors"
    assert run(tiles, start_weights, out, "--steps", "2", "--val-every", "1")["exit_code"] in (0, loop.NOT_BETTER)
    assert out.with_suffix(".last.safetensors").exists() and out.with_suffix(".log.jsonl").exists()


def test_validation_numbers_are_the_ones_evaluate_prints(tmp_path, rng):
    # issue 9: the trainer's validation and `evaluate` computed "PSNR against bicubic" two ways
    import tifffile

    from diinn_napari.train.data import load_planes
    from diinn_napari.evaluate import evaluate
    from diinn_napari.train.validation import validate

    path = tmp_path / "v.tif"
    tifffile.imwrite(path, (rng.random((48, 40)) * 3000).astype(np.uint16))
    model = tiny_model()
    planes = load_planes([path], 1, 8).planes
    ours = validate(model, planes, [2.0, 3.0], "cpu", crop=1000)
    theirs = evaluate([path], [2.0, 3.0], model=model, device="cpu")["scales"]
    for key in ("x2", "x3"):
        assert ours[key]["psnr"] == pytest.approx(theirs[key]["mean"]["psnr"], abs=1e-6)
        assert ours[key]["bicubic"] == pytest.approx(theirs[key]["mean"]["bicubic_psnr"], abs=1e-6)


def test_a_run_stopped_by_its_time_limit_validates_where_it_stopped(tiles, start_weights, tmp_path):
    # an equal-time comparison of recipes needs the numbers of the step where each run stopped
    out = tmp_path / "timed.safetensors"
    result = run(tiles, start_weights, out, "--steps", "1000", "--val-every", "1000", "--time-limit", "0.001")
    assert 0 < result["step"] < 1000
    logged = [json.loads(line) for line in (tmp_path / "timed.log.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == result["step"] and "mean_gain" in logged[-1]
    assert read_metadata(tmp_path / "timed.last.safetensors")["steps"] == result["step"]


def test_webp_training_images_are_found(tmp_path, rng):
    # lossless WebP stores natural training images about a third smaller than PNG
    folder = tmp_path / "webp"
    folder.mkdir()
    image = smooth_image(rng, (40, 40)).astype(np.uint8)
    imsave(folder / "a.webp", np.repeat(image[..., None], 3, 2), lossless=True)
    from diinn_napari.io import find_images, read_image

    (found,) = find_images(folder)
    array, is_rgb = read_image(found)
    assert is_rgb and np.array_equal(array[..., 0], image)


def test_the_finetune_module_keeps_its_command_line_and_names():
    # the implementation moved to diinn_napari.train; `python -m diinn_napari.finetune` and its names stay
    from diinn_napari import finetune

    done = subprocess.run([sys.executable, "-m", "diinn_napari.finetune", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--recipe" in done.stdout and "Train or fine-tune DIINN" in done.stdout
    assert finetune.main is cli.main and finetune.build_parser is config.build_parser and finetune.train is loop.train
    done = subprocess.run([sys.executable, "-m", "diinn_napari.finetune", "--data", "x", "--scales", "0.5"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--scales" in done.stderr


def test_train_step_is_one_reproducible_step_that_updates_weights_and_average():
    planes = [torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    sampler = PairSampler(planes, 16, config.parse_scales("1-3"))

    def one_step(profile=None):
        torch.manual_seed(0)
        model = tiny_model().train()
        ema = tiny_model().eval().requires_grad_(False)
        ema.load_state_dict(model.state_dict())
        net = step.PointLoss(model, 64)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        loss = step.train_step(net, optimizer, sampler, torch.Generator().manual_seed(1), 2, "cpu", lr=5e-3, ema=ema,
                               decay=0.5, profile=profile)
        return loss, before, model, ema, optimizer

    loss, before, model, ema, optimizer = one_step()
    assert loss.ndim == 0 and not loss.requires_grad and optimizer.param_groups[0]["lr"] == 5e-3
    for name, p in model.named_parameters():
        # the average sits halfway between the old and the new weights (decay 0.5)
        assert torch.allclose(dict(ema.named_parameters())[name], (before[name] + p.detach()) / 2, atol=1e-6)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    profile = step.StepProfile("cpu")
    again, *_ = one_step(profile)
    assert torch.equal(loss, again)  # the profile observes, it does not change the step
    assert set(profile.seconds) == {"sampling", "query drawing", "encoder forward", "decoder forward", "decoder backward",
                                    "encoder backward", "optimizer", "ema"}
    assert all(t >= 0 for t in profile.seconds.values())
