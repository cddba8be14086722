"""The training loop: the loss, one optimisation step, validation and :func:`train`.

:func:`train` runs the options of :func:`diinn_napari.train.config.build_parser`
(the recipes, the file split, EMA of the weights, resumable state, a time
limit, DistributedDataParallel under ``torchrun``); :func:`train_step` is one
step of it, which ``benchmarks/bench_train.py`` times (with a per-part
:class:`StepProfile`) instead of copying the loop.
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
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..devices import pick_device
from ..io import atomic_write, find_images
from ..model import DIINN
from ..quality import downsample
from ..weights import load_weights, resolve, save_weights
from .config import TrainingError, learning_rate, resolve_recipe, side_paths
from .data import PairSampler, load_planes

log = logging.getLogger(__name__)


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

    def forward(self, lr: torch.Tensor, hrs: list[torch.Tensor], gen: torch.Generator,
                profile: StepProfile | None = None) -> torch.Tensor:
        """The loss of one batch: LR (B, C, h, w) and its HR crops (C, H_i, W_i), query pixels drawn from ``gen``."""
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
        if profile is not None:
            profile.mark("query drawing")
        features = self.model.encode(lr)
        if profile is not None:
            profile.mark("encoder forward")
            if features.requires_grad:  # fires when the decoder's backward reaches the features
                features.register_hook(lambda grad: profile.mark("decoder backward"))
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
        if profile is not None:
            profile.mark("decoder forward")
        return loss


class StepProfile:
    """Wall time of the parts of training steps, for ``benchmarks/bench_train.py``.

    :func:`train_step` calls :meth:`mark` after each part: pair sampling,
    query drawing, encoder forward, decoder forward (with the loss), decoder
    backward (up to the gradient of the encoder's features), encoder backward,
    optimizer step and the EMA update. Each mark waits for the device, so a profiled step is
    a little slower than a plain one.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}
        self._last = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        """Start timing a step."""
        self._sync()
        self._last = time.perf_counter()

    def mark(self, part: str) -> None:
        """Add the time since the last mark to ``part``."""
        self._sync()
        now = time.perf_counter()
        self.seconds[part] = self.seconds.get(part, 0.0) + now - self._last
        self._last = now


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Adam:
    """The trainer's optimizer (Adam), also the one ``benchmarks/bench_train.py`` times."""
    return torch.optim.Adam(model.parameters(), lr=lr)


def ema_decay(target: float, step: int) -> float:
    """The EMA decay after ``step`` steps: ``target``, warmed up as (1 + step) / (10 + step).

    The warm-up keeps a short fine-tune from being dominated by its start.
    """
    return min(target, (1 + step) / (10 + step))


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: PairSampler,
    gen: torch.Generator,
    batch: int,
    device: torch.device | str,
    *,
    lr: float | None = None,
    ema: nn.Module | None = None,
    decay: float = 0.0,
    profile: StepProfile | None = None,
) -> torch.Tensor:
    """One optimisation step: draw a batch, compute the loss, backward, optimizer step, EMA update.

    ``net`` is a :class:`PointLoss` (or a DistributedDataParallel around one);
    ``lr`` (when given) is set on every parameter group first; ``ema``, a copy
    of the model, moves towards the trained weights by ``1 - decay`` (see
    :func:`ema_decay`). Returns the loss, detached. The same generator state
    gives the same step: the training loop and the benchmark both run this.
    """
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    if profile is not None:
        profile.start()
    lr_batch, hrs = sampler.sample_batch(gen, batch)
    if profile is not None:
        profile.mark("sampling")
    loss = net(lr_batch.to(device), hrs, gen, profile) if profile is not None else net(lr_batch.to(device), hrs, gen)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if profile is not None:
        profile.mark("encoder backward")
    optimizer.step()
    if profile is not None:
        profile.mark("optimizer")
    if ema is not None:
        model = getattr(net, "module", net).model  # through DistributedDataParallel
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
            for e, b in zip(ema.buffers(), model.buffers()):
                e.copy_(b)
        if profile is not None:
            profile.mark("ema")
    return loss.detach()


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
    from ..evaluate import compare

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
                          jitter=args.jitter, shot_noise=args.shot_noise, aniso=args.aniso, axial=args.axial)
    val_scales = [s for s in (2.0, 3.0, 4.0) if s <= sampler.max_scale()] or [sampler.max_scale()]
    steps = args.steps if args.epochs is None else max(1, math.ceil(args.epochs * len(train.planes) / args.batch))

    net: nn.Module = PointLoss(model, args.queries, args.loss, args.consistency)
    if distributed:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(model, args.lr)
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
        "recipe": {k: getattr(args, k) for k in ("recipe", "scales", "aniso", "axial", "patch", "batch", "queries", "lr", "schedule", "decay",
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
        with atomic_write(paths["state"]) as tmp:
            torch.save(state, tmp)
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
                loss = train_step(net, optimizer, sampler, gen, args.batch, device, lr=learning_rate(args, step, steps),
                                  ema=ema, decay=ema_decay(args.ema, step + 1))
                step += 1
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
