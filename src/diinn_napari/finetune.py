"""Train or fine-tune DIINN on a folder of images.

    python -m diinn_napari.finetune --data tiles/

starts from the bundled default weights and writes ``diinn-finetuned.safetensors``
(best validation gain over bicubic), ``*.last.safetensors`` (latest) and
``*.state.pt`` (optimizer and sampler state for ``--resume``; keep it
out of version control). ``--weights none`` trains from scratch. ``--recipe``
picks the training recipe: ``scientific`` (default: dark, sparse and
intensity-jittered crops, shot noise, anisotropic and x4-x8 scales, EMA of the
weights, cosine schedule, Charbonnier loss) or ``classic`` (the first bundled
weights' recipe); any single option overrides the preset. Under
``torchrun --nproc_per_node N`` it trains with DistributedDataParallel (gloo on
the CPU, nccl on CUDA).
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .data import PairSampler, downsample, find_images, load_planes, parse_scales
from .devices import pick_device
from .model import DIINN
from .weights import WeightsError, load_weights, resolve, save_weights

log = logging.getLogger("diinn_napari.finetune")


class TrainingError(ValueError):
    """Training cannot start: bad options or no usable data (the message says what to change)."""


# Presets of the training recipe. Options left unset on the command line take
# their value from the chosen preset. "classic" is the recipe of the first bundled
# weights; "scientific" adds the statistics of scientific images (dark, sparse,
# offset/contrast/gamma, shot noise, anisotropic and large scales) and the cheap
# gains of the SR literature (EMA of the weights, cosine schedule, Charbonnier).
RECIPES: dict[str, dict] = {
    "classic": dict(scales="1-4", schedule="step", ema=0.0, loss="l1", dark=0.0, sparse=0.0, jitter=0.0,
                    shot_noise=0.0, aniso=0.0, consistency=0.0),
    "scientific": dict(scales="1-4:0.85,4-8:0.15", schedule="cosine", ema=0.999, loss="charbonnier", dark=0.25,
                       sparse=0.1, jitter=0.3, shot_noise=0.2, aniso=0.2, consistency=0.0),
}


def _preset_help(name: str) -> str:
    return "default: from --recipe (" + ", ".join(f"{r}: {v[name]}" for r, v in RECIPES.items()) + ")"


class _HelpFormatter(argparse.HelpFormatter):
    """Appends each option's default to its help, unless the help already explains it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default in (None, argparse.SUPPRESS):
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return text + " (default: off)"
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The command-line options; :func:`train` takes the parsed namespace."""
    p = argparse.ArgumentParser(prog="python -m diinn_napari.finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=_HelpFormatter)
    p.add_argument("--data", required=True, action="append", help="folder of training images (repeatable; required)")
    p.add_argument("--weights", default="default", help="start from: 'default', a bundled name, a path, or 'none' (scratch)")
    p.add_argument("--encoder", default="edsr-baseline", choices=["edsr-baseline", "rdn"], help="encoder when --weights none")
    p.add_argument("--variant", default="f", help="decoder variant a-f (paper Table 5) when --weights none")
    p.add_argument("--skip", default="bicubic", choices=["none", "bicubic"], help="global skip when --weights none")
    p.add_argument("--channels", type=int, default=1, choices=[1, 3], help="1 = grayscale/scientific, 3 = RGB")
    p.add_argument("--out", default="diinn-finetuned.safetensors", help="output weights file")
    p.add_argument("--steps", type=int, default=2000, help="optimisation steps")
    p.add_argument("--epochs", type=float, default=None,
                   help="instead of --steps: passes over the training planes (default: unset, --steps counts)")
    p.add_argument("--recipe", default="scientific", choices=sorted(RECIPES),
                   help="preset for the options below that say 'from --recipe'")
    p.add_argument("--scales", default=None,
                   help="scale distribution: '2,3,4' (set), '1-4' (uniform range) or a weighted mix "
                        "'1-4:0.85,4-8:0.15'; " + _preset_help("scales"))
    p.add_argument("--aniso", type=float, default=None,
                   help="fraction of items with independent per-axis scales (half of them (s, 1)); " + _preset_help("aniso"))
    p.add_argument("--patch", type=int, default=32, help="LR patch edge in pixels")
    p.add_argument("--batch", type=int, default=8, help="patches per step (per process)")
    p.add_argument("--queries", type=int, default=1024, help="HR pixels decoded per patch; 0 = the whole patch")
    p.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate")
    p.add_argument("--schedule", default=None, choices=["step", "cosine"],
                   help="learning-rate schedule: 'step' halves at the --decay fractions, 'cosine' decays to 0 at the "
                        "last step; " + _preset_help("schedule"))
    p.add_argument("--decay", default="0.5,0.8", help="with --schedule step: fractions of the run at which the learning rate halves")
    p.add_argument("--warmup", type=int, default=0, help="steps of linear learning-rate warm-up (useful with a fresh optimizer on trained weights)")
    p.add_argument("--ema", type=float, default=None,
                   help="decay of the exponential moving average of the weights that is validated and saved; 0 = off; "
                        + _preset_help("ema"))
    p.add_argument("--loss", default=None, choices=["l1", "charbonnier"], help="pixel loss; " + _preset_help("loss"))
    p.add_argument("--consistency", type=float, default=None,
                   help="weight of an LR-consistency loss (downsampled output vs LR) on one small item per step; "
                        + _preset_help("consistency"))
    p.add_argument("--dark", type=float, default=None,
                   help="fraction of crops taken as the darkest of several positions (background-dominated); " + _preset_help("dark"))
    p.add_argument("--sparse", type=float, default=None,
                   help="fraction of items made of synthetic sparse spots and hot pixels on a dim background; " + _preset_help("sparse"))
    p.add_argument("--jitter", type=float, default=None,
                   help="fraction of items with random gamma, contrast and offset (values at and below 0); " + _preset_help("jitter"))
    p.add_argument("--shot-noise", type=float, default=None,
                   help="fraction of items with Poisson-Gaussian noise on the LR input at sampled levels; " + _preset_help("shot_noise"))
    p.add_argument("--noise", type=float, default=0.0, help="max Gaussian noise sigma added to LR (0..1 units)")
    p.add_argument("--blur", type=float, default=0.0, help="max extra Gaussian blur sigma (HR px) before downsampling")
    p.add_argument("--val-fraction", type=float, default=0.1, help="fraction of files held aside for validation")
    p.add_argument("--hold-out", action="append", default=[], metavar="PATTERN",
                   help="also hold aside files whose name matches this glob (repeatable; default: none)")
    p.add_argument("--val-every", type=int, default=200, help="validate every N steps")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=0, help="seed of the file split, the sampling and the initial weights")
    p.add_argument("--deterministic", action="store_true", help="deterministic torch kernels")
    p.add_argument("--resume", action="store_true", help="continue from the *.state.pt beside --out")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="stop (resumably) after this many minutes (default: no limit)")
    return p


def resolve_recipe(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left unset from ``--recipe`` and check every value; raises :class:`TrainingError`."""
    args = argparse.Namespace(**vars(args))
    if args.recipe not in RECIPES:
        raise TrainingError(f"unknown recipe {args.recipe!r}; choose one of {sorted(RECIPES)}")
    for key, value in RECIPES[args.recipe].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for name in ("dark", "sparse", "jitter", "shot_noise", "aniso", "val_fraction"):
        value = getattr(args, name)
        if not 0 <= value <= 1:
            raise TrainingError(f"--{name.replace('_', '-')} is a fraction and must be between 0 and 1, got {value}")
    if not 0 <= args.ema < 1:
        raise TrainingError(f"--ema must be in [0, 1) (0 = off; 0.999 is typical), got {args.ema}")
    if args.consistency < 0:
        raise TrainingError(f"--consistency must be >= 0, got {args.consistency}")
    for name in ("steps", "patch", "batch", "val_every"):
        if getattr(args, name) < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.queries < 0 or args.warmup < 0 or args.lr <= 0:
        raise TrainingError("--queries and --warmup must be >= 0 and --lr > 0")
    try:
        args.scale_spec = parse_scales(args.scales)
        args.milestones = [float(f) for f in args.decay.split(",") if f.strip()]
    except ValueError as err:
        raise TrainingError(f"bad --scales or --decay: {err}") from None
    return args


def learning_rate(args: argparse.Namespace, step: int, steps: int) -> float:
    """The learning rate at ``step``, a function of the step alone (so a resumed run may change --steps)."""
    if args.schedule == "cosine":
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(1, steps)))
    else:
        lr = args.lr * 0.5 ** sum(step >= int(steps * f) for f in args.milestones)
    if args.warmup:
        lr *= min(1.0, (step + 1) / args.warmup)
    return lr


def side_paths(out: Path) -> dict[str, Path]:
    stem = out.with_suffix("") if out.suffix == ".safetensors" else out
    return {
        "best": stem.with_suffix(".safetensors"),
        "last": stem.with_suffix(".last.safetensors"),
        "state": stem.with_suffix(".state.pt"),
        "log": stem.with_suffix(".log.jsonl"),
    }


class PointLoss(nn.Module):
    """Pixel loss of decoded query pixels (plus an optional LR-consistency term).

    A module so DistributedDataParallel can wrap it. ``loss``: ``"l1"`` or
    ``"charbonnier"`` (sqrt(d^2 + eps^2), smooth at 0). ``consistency`` > 0 adds,
    for the item of the batch with the smallest output (if it has at most
    ``CONSISTENCY_MAX_PIXELS``), the L1 distance between its whole decoded output
    downsampled to the LR grid and the clean LR (the downsampled target): the
    term that keeps the mean intensity and the measured values.
    """

    CHARBONNIER_EPS = 1e-3
    CONSISTENCY_MAX_PIXELS = 96 * 96

    def __init__(self, model: DIINN, queries: int, loss: str = "l1", consistency: float = 0.0):
        super().__init__()
        if loss not in ("l1", "charbonnier"):
            raise ValueError(f"unknown loss {loss!r}; use 'l1' or 'charbonnier'")
        self.model, self.queries, self.loss, self.consistency = model, queries, loss, consistency

    def distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss == "charbonnier":
            return torch.sqrt((pred - target) ** 2 + self.CHARBONNIER_EPS**2).mean()
        return F.l1_loss(pred, target)

    def forward(self, lr: torch.Tensor, hrs: list[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        queries, targets = [], []
        small = min(range(len(hrs)), key=lambda i: hrs[i].shape[-1] * hrs[i].shape[-2])
        whole = self.consistency > 0 and hrs[small].shape[-1] * hrs[small].shape[-2] <= self.CONSISTENCY_MAX_PIXELS
        for i, hr in enumerate(hrs):
            _, H, W = hr.shape
            n = H * W if self.queries <= 0 else min(self.queries, H * W)
            flat = torch.randperm(H * W, generator=gen)[:n]
            ys, xs = flat // W, flat % W
            queries.append(((H, W), ys, xs))
            targets.append(hr[:, ys, xs].to(lr.device))
        if whole:  # every pixel of the smallest item, for the consistency term
            _, H, W = hrs[small].shape
            grid = torch.arange(H * W)
            queries.append(((H, W), grid // W, grid % W))
        features = self.model.encode(lr)
        if whole:  # decode the small item twice from the same features: no second encoder pass
            lr = torch.cat([lr, lr[small : small + 1]])
            features = torch.cat([features, features[small : small + 1]])
        preds = self.model.decode_points(lr, features, queries)
        loss = self.distance(torch.cat(preds[: len(hrs)], 1), torch.cat(targets, 1))
        if whole:
            hr = hrs[small].to(lr.device)[None]
            out = preds[-1].view(1, hr.shape[1], *hr.shape[-2:])
            size = (lr.shape[-2], lr.shape[-1])
            loss = loss + self.consistency * F.l1_loss(downsample(out, size), downsample(hr, size))
        return loss


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def split_files(groups: list[list[Path]], fraction: float, seed: int, hold_out: list[str] = ()) -> tuple[list[Path], list[Path]]:
    """Hold aside a deterministic ``fraction`` of each group of files (one group per --data folder).

    Each group with two or more files gives at least one, so every source is
    validated; files whose name matches a ``hold_out`` glob are held aside too.
    """
    train, val = [], []
    for i, files in enumerate(groups):
        forced = [f for f in files if any(fnmatch.fnmatch(f.name, pattern) for pattern in hold_out)]
        val += forced
        files = [f for f in files if f not in forced]
        order = sorted(files)
        random.Random(seed * 1000 + i).shuffle(order)
        n_val = min(len(order) - 1, max(1 if fraction > 0 else 0, round(len(order) * fraction)))
        train += order[n_val:]
        val += order[:n_val]
    return sorted(train), sorted(val)


@torch.no_grad()
def validate(model: DIINN, planes: list[torch.Tensor], scales: list[float], device, crop: int = 192) -> dict:
    """Mean PSNR of the model and of bicubic on centre crops of the validation planes, per scale.

    Each crop is scored by :func:`diinn_napari.evaluate.compare` (DIINN
    protocol, the engine with its default data consistency), so these numbers
    are the ones ``python -m diinn_napari.evaluate`` prints. ``bias_percent`` is
    the mean of (output - reference) in % of the reference's robust range.
    """
    from .evaluate import compare

    model.eval()
    result = {}
    for scale in scales:
        rows = []
        for plane in planes:
            _, h, w = plane.shape
            ch, cw = min(h, crop), min(w, crop)
            hr = plane[:, (h - ch) // 2 : (h - ch) // 2 + ch, (w - cw) // 2 : (w - cw) // 2 + cw]
            rows.append(compare(hr.cpu().numpy(), scale, model, device=device))
        result[f"x{scale:g}"] = {"psnr": float(np.mean([r["psnr"] for r in rows])),
                                 "bicubic": float(np.mean([r["bicubic_psnr"] for r in rows])),
                                 "bias_percent": float(np.mean([r["bias"] for r in rows]))}
    result["mean_gain"] = float(np.mean([v["psnr"] - v["bicubic"] for k, v in result.items()]))
    model.train()
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: the only place that turns errors into an exit code (2) and a message."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return train(args)["exit_code"]
    except (TrainingError, WeightsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def train(args: argparse.Namespace) -> dict:
    """Run training as configured by :func:`build_parser`'s arguments; returns the loss history and exit code.

    Raises :class:`TrainingError` (bad options, no usable data), ``FileNotFoundError``
    (a missing data folder) or :class:`WeightsError`; a Ctrl-C or SIGTERM saves the
    state and returns exit code 130. The process's SIGTERM handler is restored on return.
    """
    args = resolve_recipe(args)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = 0
    if distributed:
        backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
        dist.init_process_group(backend)
        rank = dist.get_rank()
    device = pick_device(args.device if not distributed or args.device != "auto" else ("cuda" if backend == "nccl" else "cpu"))
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        # training tolerates TF32 matrix products (10-bit mantissa) and gains several times on
        # Ampere and later; inference (the engine) stays exact fp32
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    paths = side_paths(Path(args.out))
    paths["best"].parent.mkdir(parents=True, exist_ok=True)  # the log is written before the first weights

    # ---- model -------------------------------------------------------------------------------
    if args.weights == "none":
        model = DIINN(args.channels, encoder=args.encoder, variant=args.variant, skip=args.skip)
        base = "none (trained from scratch)"
    else:
        weights_file = resolve(args.weights, args.channels)
        model = load_weights(weights_file, "cpu")
        base = str(args.weights)
        if model.in_channels != args.channels:
            log.info("using the %d-channel model of %s", model.in_channels, weights_file)
    model.to(device).train()
    channels = model.in_channels

    # ---- data --------------------------------------------------------------------------------
    groups = [find_images(folder) for folder in args.data]
    train_files, val_files = split_files(groups, args.val_fraction, args.seed, args.hold_out)
    scales = args.scale_spec
    min_size = args.patch * 2
    train = load_planes(train_files, channels, min_size)
    val = load_planes(val_files, channels, min_size)
    if not train.planes:
        raise TrainingError(f"no usable training image in {', '.join(args.data)} "
                         f"({len(train.skipped)} skipped: unreadable, not {channels}-channel, or smaller than {min_size} px)")
    skipped = len(train.skipped) + len(val.skipped)
    if rank == 0:
        log.info("training on %d planes from %d files, validating on %d planes from %d files; %d files skipped",
                 len(train.planes), len(train.files), len(val.planes), len(val.files), skipped)
    val_planes = val.planes[:8]
    sampler = PairSampler(train.planes, args.patch, scales, args.noise, args.blur, dark=args.dark, sparse=args.sparse,
                          jitter=args.jitter, shot_noise=args.shot_noise, aniso=args.aniso)
    val_scales = [s for s in (2.0, 3.0, 4.0) if s <= sampler.max_scale()] or [sampler.max_scale()]
    steps = args.steps if args.epochs is None else max(1, math.ceil(args.epochs * len(train.planes) / args.batch))

    net: nn.Module = PointLoss(model, args.queries, args.loss, args.consistency)
    if distributed:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    # the saved model: an exponential moving average of the weights (or the weights themselves)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if args.ema > 0 else None
    saved = ema if ema is not None else model
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank)
    step, best_gain, last_val = 0, -math.inf, None

    if args.resume and paths["state"].exists():
        state = torch.load(paths["state"], map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        if ema is not None:  # a state written without EMA starts the average at the current weights
            ema.load_state_dict(state.get("ema") or state["model"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"][rank])
        step, best_gain = state["step"], state["best_gain"]
        last_val = json.loads(state["last_val"]) if state.get("last_val") else None
        if rank == 0:
            log.info("resumed %s at step %d", paths["state"], step)

    meta_base = {
        "channels": channels,
        "base_weights": base,
        "data": [str(d) for d in args.data],
        "train_files": len(train.files),
        "train_planes": len(train.planes),
        "val_files": [str(f) for f in val_files],
        "device": device.type,
        "recipe": {k: getattr(args, k) for k in ("recipe", "scales", "aniso", "patch", "batch", "queries", "lr", "schedule", "decay",
                                                 "warmup", "ema", "loss", "consistency", "dark", "sparse", "jitter", "shot_noise",
                                                 "noise", "blur", "seed")},
    }

    def save(kind: str, metrics) -> None:
        meta = dict(meta_base, steps=step, total_steps=steps, metrics=metrics, world_size=dist.get_world_size() if distributed else 1)
        save_weights(saved, paths[kind], meta)

    def save_state() -> None:
        gens = [gen.get_state()]
        if distributed:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, gen.get_state())
            gens = gathered
        if rank != 0:
            return
        state = {
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else {},
            "optimizer": optimizer.state_dict(),
            "generator": gens,
            "step": step,
            "best_gain": best_gain,
            "last_val": json.dumps(last_val) if last_val else "",
        }
        tmp = paths["state"].with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, paths["state"])
        save("last", last_val)

    from tqdm import tqdm

    bar = tqdm(total=steps, initial=step, disable=None if rank == 0 else True, desc="training", unit="step", dynamic_ncols=True)
    previous_sigterm = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a scheduler's stop, `kill`) saves like Ctrl-C; SIGINT may be ignored in background jobs.
        # The caller's handler comes back in the `finally` below.
        previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
    started = time.time()
    history = []
    try:
        try:
            while step < steps:
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(args, step, steps)
                lr_batch, hrs = sampler.sample_batch(gen, args.batch)
                loss = net(lr_batch.to(device), hrs, gen)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                if ema is not None:
                    # warm-up of the average ((1 + t) / (10 + t)) so a short fine-tune is not dominated by its start
                    decay = min(args.ema, (1 + step) / (10 + step))
                    with torch.no_grad():
                        for e, p in zip(ema.parameters(), model.parameters()):
                            e.lerp_(p, 1 - decay)
                        for e, b in zip(ema.buffers(), model.buffers()):
                            e.copy_(b)
                history.append(loss.item())
                bar.update(1)
                postfix = {"loss": f"{loss.item():.4f}"}
                if last_val:
                    postfix["val_gain_dB"] = f"{last_val['mean_gain']:+.2f}"
                bar.set_postfix(postfix)
                out_of_time = bool(args.time_limit) and time.time() - started > args.time_limit * 60
                if step % args.val_every == 0 or step == steps or out_of_time:
                    if rank == 0 and val_planes:
                        last_val = validate(saved, val_planes, val_scales, device)
                        with open(paths["log"], "a") as f:
                            f.write(json.dumps({"step": step, "loss": loss.item(), "lr": learning_rate(args, step - 1, steps),
                                                "seconds": time.time() - started, **last_val}) + "\n")
                        if last_val["mean_gain"] > best_gain:
                            best_gain = last_val["mean_gain"]
                            save("best", last_val)
                    save_state()
                if out_of_time:
                    log.info("time limit reached at step %d; saved %s (continue with --resume)", step, paths["state"])
                    break
        except KeyboardInterrupt:
            bar.close()
            save_state()
            if rank == 0:
                log.info("interrupted at step %d; saved %s (resume with --resume)", step, paths["state"])
            return {"losses": history, "exit_code": 130, "step": step}
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    bar.close()
    if rank == 0 and (not val_planes or not paths["best"].exists()):
        save("best", last_val)  # nothing to validate against: the final weights are the result
    if rank == 0:
        log.info("done: %d steps; best weights %s (mean gain over bicubic %+.2f dB)", step, paths["best"], best_gain)
    if distributed:
        dist.destroy_process_group()
    return {"losses": history, "exit_code": 0, "step": step}

if __name__ == "__main__":
    sys.exit(main())
