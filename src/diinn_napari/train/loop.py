"""The training loop: :func:`train` and the parts of a run.

:func:`train` runs the options of :func:`diinn_napari.train.config.build_parser`
(the recipes, the file split, EMA of the weights, resumable state, a time
limit, DistributedDataParallel under ``torchrun``). One step of it is
:func:`~.step.train_step`; what is validated and kept is in :mod:`.validation`.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..devices import pick_device
from ..io import atomic_write, find_images
from ..model import DIINN
from ..weights import load_weights, resolve, save_weights
from .config import TrainingError, learning_rate, resolve_recipe, side_paths
from .data import PairSampler, PlaneSet, ValidationCrops, left_out_line, load_planes, validation_crops
from .optim import StepClock, ema_decay, make_optimizer
from .sources import split_by_source
from .step import PointLoss, train_step
from .validation import scores_line, better_than, validate, validation_report, validation_scales

__all__ = ["train", "NOT_BETTER"]

# exit code of a run whose result did not beat its start on the validation crops (nothing written at --out)
NOT_BETTER = 3

log = logging.getLogger(__name__)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


# ---- the parts of a run ------------------------------------------------------------------------
@dataclass
class Process:
    """Where this process trains: its rank among ``world_size`` (DistributedDataParallel under torchrun) and device."""

    distributed: bool
    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_process(args: argparse.Namespace) -> Process:
    """Join the process group under ``torchrun`` (gloo on the CPU, nccl on CUDA), pick the device and set torch up."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world, backend = 0, 1, None
    if distributed:
        backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
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
    return Process(distributed, rank, world, device)


def build_model(args: argparse.Namespace) -> tuple[DIINN, str]:
    """The starting model (``--weights``, or a fresh one for ``none``) on the CPU, and its name for the metadata."""
    if args.weights == "none":
        return DIINN(args.channels, encoder=args.encoder, variant=args.variant, skip=args.skip), "none (trained from scratch)"
    weights_file = resolve(args.weights, args.channels)
    model = load_weights(weights_file, "cpu")
    if model.in_channels != args.channels:
        log.info("using the %d-channel model of %s", model.in_channels, weights_file)
    return model, str(args.weights)


@dataclass
class TrainingData:
    """The planes a run trains on, its fixed validation crops and scales, and the pair sampler."""

    train: PlaneSet
    val: PlaneSet
    val_files: list[Path]
    validation: ValidationCrops
    val_scales: list[float]
    sampler: PairSampler


def prepare_data(args: argparse.Namespace, channels: int, main: bool = True) -> TrainingData:
    """Split the files, read the planes, draw the validation crops and build the sampler; raises :class:`TrainingError`."""
    groups = [find_images(folder) for folder in args.data]
    split = split_by_source(groups, args.val_fraction, args.seed, args.hold_out, [Path(d) for d in args.data],
                            getattr(args, "split", "sources"))
    train_files, val_files = split.train, split.val
    min_size = args.patch * 2
    train = load_planes(train_files, channels, min_size)
    val = load_planes(val_files, channels, min_size)
    if not train.planes:
        raise TrainingError(f"no usable training image in {', '.join(args.data)} "
                            f"({len(train.skipped)} skipped: unreadable, not {channels}-channel, smaller than {min_size} px "
                            f"or without a {min_size} px square wholly on data)")
    validation = validation_crops(val, args.val_patches, args.val_crop, args.seed)
    sampler = PairSampler(train.planes, args.patch, args.scale_spec, args.noise, args.blur, dark=args.dark, sparse=args.sparse,
                          jitter=args.jitter, shot_noise=args.shot_noise, aniso=args.aniso, axial=args.axial,
                          levels=args.levels, footprints=train.footprints if any(train.footprints) else None)
    val_scales = validation_scales(sampler.max_scale())
    if main:
        log.info("training on %d planes from %d files, validating on %d crops of %d px from %d files; %d files skipped",
                 len(train.planes), len(train.files), len(validation.crops), args.val_crop, validation.files,
                 len(train.skipped) + len(val.skipped))
        left_out = left_out_line([train, val])
        if left_out:
            log.info("%s", left_out)
        for note in split.notes:
            log.info("%s", note)
        for warning in validation.warnings:
            log.warning("warning: %s", warning)
    return TrainingData(train, val, val_files, validation, val_scales, sampler)


@dataclass
class RunState:
    """What a run has reached: the step, the schedule's horizon, and the start's, best and last validation."""

    step: int = 0
    horizon: int = 0
    start: dict | None = None
    best: dict | None = None
    last: dict | None = None
    stopped_by_time: bool = False
    losses: list[float] = field(default_factory=list)


class Checkpoint:
    """The files of a run beside ``--out``: best weights, last weights, resumable state and the validation log."""

    def __init__(self, args: argparse.Namespace, model: DIINN, ema: nn.Module | None, optimizer: torch.optim.Optimizer,
                 gen: torch.Generator, process: Process, meta: dict):
        self.paths = side_paths(Path(args.out))
        self.paths["best"].parent.mkdir(parents=True, exist_ok=True)  # the log is written before the first weights
        self.model, self.ema, self.optimizer, self.gen, self.process, self.meta = model, ema, optimizer, gen, process, meta
        self.saved = ema if ema is not None else model  # the model that is validated and saved

    def write_weights(self, kind: str, state: RunState, metrics: dict | None) -> None:
        meta = dict(self.meta, steps=state.step, total_steps=state.horizon, metrics=metrics, start_metrics=state.start,
                    world_size=self.process.world_size)
        save_weights(self.saved, self.paths[kind], meta)

    def log(self, record: dict) -> None:
        with open(self.paths["log"], "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_state(self, state: RunState) -> None:
        """The resumable state (all ranks' generators) and the last weights; collective under DDP."""
        gens = [self.gen.get_state()]
        if self.process.distributed:
            gathered = [None] * self.process.world_size
            dist.all_gather_object(gathered, self.gen.get_state())
            gens = gathered
        if not self.process.main:
            return
        record = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "generator": gens,
            "step": state.step,
            "best_gain": state.best["mean_gain"] if state.best else -math.inf,
            "last_val": json.dumps(state.last) if state.last else "",
            "best_val": json.dumps(state.best) if state.best else "",
            "start_val": json.dumps(state.start) if state.start else "",
        }
        with atomic_write(self.paths["state"]) as tmp:
            torch.save(record, tmp)
        self.write_weights("last", state, state.last)

    def resume(self, state: RunState) -> bool:
        """Load the state beside ``--out`` into the run (if there is one); returns whether it did."""
        if not self.paths["state"].exists():
            return False
        record = torch.load(self.paths["state"], map_location="cpu", weights_only=True)
        self.model.load_state_dict(record["model"])
        if self.ema is not None:  # a state written without EMA starts the average at the current weights
            self.ema.load_state_dict(record.get("ema") or record["model"])
        self.optimizer.load_state_dict(record["optimizer"])
        self.gen.set_state(record["generator"][self.process.rank])
        state.step = record["step"]
        for key in ("last", "best", "start"):
            text = record.get(f"{key}_val")
            setattr(state, key, json.loads(text) if text else None)
        if self.process.main:
            log.info("resumed %s at step %d", self.paths["state"], state.step)
        return True


def run_metadata(args: argparse.Namespace, base: str, channels: int, data: TrainingData, device: torch.device) -> dict:
    """The metadata saved with the weights: where they came from, what they trained on, and how."""
    return {
        "channels": channels,
        "base_weights": base,
        "data": [str(d) for d in args.data],
        "train_files": len(data.train.files),
        "train_planes": len(data.train.planes),
        "val_files": [str(f) for f in data.val_files],
        "val_crops": len(data.validation.crops),
        "device": device.type,
        "recipe": {k: getattr(args, k) for k in ("recipe", "preset", "scales", "aniso", "axial", "levels", "patch", "batch", "queries", "lr",
                                                 "lr_floor", "schedule", "decay", "warmup", "ema", "trainable", "encoder_lr",
                                                 "loss", "consistency", "dark", "sparse", "jitter", "shot_noise", "noise", "blur",
                                                 "seed", "time_limit", "val_patches", "val_crop", "split", "min_gain")},
    }


def _shared_horizon(clock: StepClock, step: int, process: Process) -> int:
    """The schedule's horizon, estimated on rank 0 and shared, so every rank runs the same rates and steps."""
    horizon = [clock.horizon(step)]
    if process.distributed:
        dist.broadcast_object_list(horizon, src=0)
    return horizon[0]


def _validate_and_keep(ckpt: Checkpoint, data: TrainingData, state: RunState, process: Process, loss: float | None,
                       lr: float, clock: StepClock, min_gain: float = 0.0) -> None:
    """Validate the saved model; log it; write the best weights when it beats the start and every earlier result."""
    if state.step == 0:
        log.info("validating the start on %d crops at %s ...", len(data.validation.crops),
                 ", ".join(f"x{s:g}" for s in data.val_scales))
    started = time.perf_counter()
    metrics = validate(ckpt.saved, data.validation.crops, data.val_scales, process.device, crop=1 << 30)
    clock.validation_done(time.perf_counter() - started)
    state.last = metrics
    ckpt.log({"step": state.step, "loss": loss, "lr": lr, "seconds": clock.elapsed(), **metrics})
    if state.step == 0:
        state.start = metrics
        log.info("step 0 (the start): %s", scores_line(metrics))
        return
    # against the start, a rise within the noise of the crops is no evidence (measured: a thermal fine-tune rose
    # 0.01 dB on the camera held aside and lost 0.29 dB on a third one; docs/finetuning.md)
    kept = (better_than(metrics, state.start, margin=min_gain)
            and better_than(metrics, state.best, tolerance=math.inf))
    if kept:
        state.best = metrics
        ckpt.write_weights("best", state, metrics)
    log.info("step %d: %s%s", state.step, scores_line(metrics), " (best so far, saved)" if kept else "")


def _finish(args: argparse.Namespace, ckpt: Checkpoint, state: RunState, process: Process) -> int:
    """Write the result when nothing could validate it; print the report; the exit code."""
    if not process.main:
        return 0
    out = ckpt.paths["best"]
    if state.start is None:  # nothing to validate against: the final weights are the result
        ckpt.write_weights("best", state, state.last)
        log.info("done: %d steps; weights %s (not validated)", state.step, out)
        return 0
    log.info("validation (the same %d crops at every step; gain over bicubic, mean bias):\n%s",
             args.val_patches, validation_report(state.start, state.best or state.start))
    if state.best is None:
        log.error("fine-tuning did not beat the start on the validation crops after %d steps (start %+.2f dB, last %+.2f dB): "
                  "kept the start, nothing written to %s. Try a lower --lr, more data or more time.",
                  state.step, state.start["mean_gain"], (state.last or state.start)["mean_gain"], out)
        return NOT_BETTER
    log.info("done: %d steps%s; best weights %s (mean gain over bicubic %+.2f dB, start %+.2f dB)", state.step,
             " (time limit)" if state.stopped_by_time else "", out, state.best["mean_gain"], state.start["mean_gain"])
    return 0


def train(args: argparse.Namespace) -> dict:
    """Run training as configured by :func:`build_parser`'s arguments.

    The start is validated at step 0 on fixed crops of the held-aside files; the
    result is written to ``--out`` only when it beats the start on them (see
    :func:`better_than`), and a time-limited stop keeps the best validated weights.
    Returns a dict: ``losses`` (per step), ``step``, ``start`` / ``best`` (validation
    metrics, ``None`` when not validated) and ``exit_code``: 0 done, :data:`NOT_BETTER`
    (3) the start was not beaten (nothing written at ``--out``), 130 interrupted.

    Raises :class:`TrainingError` (bad options, no usable data), ``FileNotFoundError``
    (a missing data folder) or :class:`WeightsError`; a Ctrl-C or SIGTERM saves the
    state and returns exit code 130. The process's SIGTERM handler is restored on return.
    """
    args = resolve_recipe(args)
    process = setup_process(args)
    model, base = build_model(args)
    model.to(process.device).train()
    data = prepare_data(args, model.in_channels, process.main)
    steps = args.steps if args.epochs is None else max(1, math.ceil(args.epochs * len(data.train.planes) / args.batch))

    optimizer = make_optimizer(model, args.lr, args.trainable, args.encoder_lr)
    net: nn.Module = PointLoss(model, args.queries, args.loss, args.consistency)
    if process.distributed:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[process.device.index] if process.device.type == "cuda" else None)
    # the saved model: an exponential moving average of the weights (or the weights themselves)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if args.ema > 0 else None
    gen = torch.Generator().manual_seed(args.seed * 1000 + process.rank)
    ckpt = Checkpoint(args, model, ema, optimizer, gen, process, run_metadata(args, base, model.in_channels, data, process.device))
    state = RunState(horizon=steps)
    if args.resume:
        ckpt.resume(state)
    clock = StepClock(args.time_limit * 60 if args.time_limit else None, steps, args.val_every)
    validating = process.main and bool(data.validation.crops)
    if validating and state.start is None:
        _validate_and_keep(ckpt, data, state, process, None, 0.0, clock, args.min_gain)

    previous_sigterm = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a scheduler's stop, `kill`) saves like Ctrl-C; SIGINT may be ignored in background jobs.
        # The caller's handler comes back in the `finally` below.
        previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
    try:
        history = _run_steps(args, net, optimizer, data, ckpt, state, process, clock, ema, gen, validating)
    except KeyboardInterrupt:
        ckpt.write_state(state)
        if process.main:
            log.info("interrupted at step %d; saved %s (resume with --resume)", state.step, ckpt.paths["state"])
        return {"losses": state.losses, "exit_code": 130, "step": state.step, "start": state.start, "best": state.best}
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    code = _finish(args, ckpt, state, process)
    if process.distributed:
        dist.destroy_process_group()
    return {"losses": history, "exit_code": code, "step": state.step, "start": state.start, "best": state.best}


def _run_steps(args, net, optimizer, data: TrainingData, ckpt: Checkpoint, state: RunState, process: Process,
               clock: StepClock, ema, gen, validating: bool) -> list[float]:
    """The loop: steps until the horizon (or the time limit), validating every ``--val-every`` steps and at the end."""
    from tqdm import tqdm

    history = state.losses  # also what an interrupted run returns
    state.horizon = _shared_horizon(clock, state.step, process)
    bar = tqdm(total=state.horizon, initial=state.step, disable=None if process.main else True, desc="training", unit="step",
               dynamic_ncols=True)
    try:
        while state.step < state.horizon:
            lr = learning_rate(args, state.step, state.horizon)
            started = time.perf_counter()
            loss = train_step(net, optimizer, data.sampler, gen, args.batch, process.device, lr=lr, ema=ema,
                              decay=ema_decay(args.ema, state.step + 1)).item()
            clock.step_done(time.perf_counter() - started)
            state.step += 1
            history.append(loss)
            if state.step == clock.probe or state.step % 10 == 0:  # the time-limited schedule follows the measured pace
                state.horizon = _shared_horizon(clock, state.step, process)
                bar.total = state.horizon
            state.stopped_by_time = clock.out_of_time() and not process.distributed  # DDP: the shared horizon stops it
            if state.stopped_by_time:
                state.horizon = state.step
            bar.update(1)
            postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.1e}"}
            if state.last:
                postfix["val_gain_dB"] = f"{state.last['mean_gain']:+.2f}"
            if state.start:
                postfix["start_dB"] = f"{state.start['mean_gain']:+.2f}"
            bar.set_postfix(postfix)
            if state.step % args.val_every == 0 or state.step >= state.horizon:
                if validating:
                    bar.clear()
                    _validate_and_keep(ckpt, data, state, process, loss, lr, clock, args.min_gain)
                ckpt.write_state(state)
        if state.stopped_by_time and process.main:
            log.info("time limit reached at step %d; saved %s (continue with --resume)", state.step, ckpt.paths["state"])
    finally:
        bar.close()
    return history
