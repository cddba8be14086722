"""The optimisation helpers every training loop here shares: schedule, optimizer, EMA, step clock.

Small public functions so that :func:`diinn_napari.train.loop.train`,
:func:`diinn_napari.train.self_adapt.adapt_to_image` and the isotropic
adaptation use one schedule, one optimizer set-up and one moving average:

* :func:`cosine_rate`: linear warm-up, then a cosine from the base rate to a floor;
* :func:`make_optimizer`: Adam over what to train (all layers, the decoder only, or
  the encoder at a lower rate);
* :func:`ema_decay` / :func:`ema_update`: the exponential moving average of the weights;
* :class:`StepClock`: how many steps fit in a time limit, from the measured step and
  validation times (the horizon the cosine of a time-limited run follows).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .config import cosine_rate, warmup_factor  # noqa: F401  (the schedule: plain math, defined beside the options)

TRAINABLE = ("all", "decoder", "encoder-slow")


def parameter_groups(model: nn.Module, trainable: str = "all", encoder_factor: float = 0.1) -> list[dict]:
    """Adam parameter groups for ``trainable``: ``"all"``, ``"decoder"`` (the encoder frozen) or
    ``"encoder-slow"`` (the encoder at ``encoder_factor`` times the rate).

    Each group carries ``lr_factor``, the multiple of the scheduled rate it gets. A
    frozen encoder has ``requires_grad`` off, so no gradient is computed for it.
    """
    if trainable not in TRAINABLE:
        raise ValueError(f"unknown trainable {trainable!r}; choose one of {TRAINABLE}")
    encoder = getattr(model, "encoder", None)
    if trainable == "all" or encoder is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr_factor": 1.0}]
    enc_ids = {id(p) for p in encoder.parameters()}
    rest = [p for p in model.parameters() if id(p) not in enc_ids]
    if trainable == "decoder":
        encoder.requires_grad_(False)
        return [{"params": rest, "lr_factor": 1.0}]
    if not 0 < encoder_factor <= 1:
        raise ValueError(f"encoder_factor must be in (0, 1], got {encoder_factor}")
    return [{"params": rest, "lr_factor": 1.0}, {"params": list(encoder.parameters()), "lr_factor": encoder_factor}]


def make_optimizer(model: nn.Module, lr: float, trainable: str = "all", encoder_factor: float = 0.1) -> torch.optim.Adam:
    """The trainer's optimizer: Adam over :func:`parameter_groups`; set rates with :func:`set_rate`."""
    groups = parameter_groups(model, trainable, encoder_factor)
    for group in groups:
        group["lr"] = lr * group["lr_factor"]
    return torch.optim.Adam(groups, lr=lr)


def set_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the scheduled rate ``lr`` on every group (times its ``lr_factor``, 1 when absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_factor", 1.0)


def ema_decay(target: float, step: int) -> float:
    """The EMA decay after ``step`` steps: ``target``, warmed up as (1 + step) / (10 + step).

    The warm-up keeps a short fine-tune from being dominated by its start.
    """
    return min(target, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """Move ``ema``'s parameters towards ``model``'s by ``1 - decay``; copy the buffers."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


class StepClock:
    """Estimates how many steps fit in a time limit, from measured step and validation times.

    ``limit_s``: the run's time budget in seconds (``None``: no limit, :meth:`horizon`
    returns ``steps``). Training steps and validations are timed separately
    (:meth:`step_done`, :meth:`validation_done`); the horizon is the number of steps
    whose training time plus one validation every ``val_every`` steps (and a final
    one) fit in the budget, capped by ``steps``. It is first estimated after
    ``probe`` steps (before that: ``steps``) and refreshed at every call.
    """

    def __init__(self, limit_s: float | None, steps: int, val_every: int, probe: int = 5):
        self.limit_s, self.steps, self.val_every, self.probe = limit_s, steps, val_every, probe
        self.started = time.perf_counter()
        self.step_seconds: list[float] = []
        self.val_seconds: list[float] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def step_done(self, seconds: float) -> None:
        self.step_seconds.append(seconds)

    def validation_done(self, seconds: float) -> None:
        self.val_seconds.append(seconds)

    def out_of_time(self) -> bool:
        return self.limit_s is not None and self.elapsed() > self.limit_s

    def seconds_per_step(self) -> float | None:
        """Median training time of the recent steps (robust to a slow first step and to load spikes)."""
        if len(self.step_seconds) < self.probe:
            return None
        recent = sorted(self.step_seconds[-50:])
        return recent[len(recent) // 2]

    def horizon(self, step: int) -> int:
        """The number of steps the run will reach, ``step`` steps done so far."""
        per_step = self.seconds_per_step()
        if self.limit_s is None or per_step is None:
            return self.steps
        val = max(self.val_seconds) if self.val_seconds else 0.0
        left = self.limit_s - self.elapsed() - val  # keep time for the final validation
        more = max(0, int(left / (per_step + val / self.val_every)))
        return max(step + (0 if left <= 0 else 1), min(self.steps, step + more))
