"""One optimisation step: the point loss, :func:`train_step`, and a per-part timer.

:func:`train_step` is what the training loop (:mod:`.loop`) runs each step and what
``benchmarks/bench_train.py`` times with a :class:`StepProfile`, so the benchmark
measures the loop rather than a copy of it.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from ..model import DIINN
from ..quality import downsample
from .data import PairSampler
from .optim import ema_update, set_rate

__all__ = ["PointLoss", "StepProfile", "train_step"]


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
    ``lr`` (when given) is set on every parameter group first (times the group's
    ``lr_factor``, see :func:`~diinn_napari.train.optim.set_rate`); ``ema``, a copy
    of the model, moves towards the trained weights by ``1 - decay`` (see
    :func:`ema_decay`). Returns the loss, detached. The same generator state
    gives the same step: the training loop and the benchmark both run this.
    """
    if lr is not None:
        set_rate(optimizer, lr)
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
        ema_update(ema, getattr(net, "module", net).model, decay)  # through DistributedDataParallel
        if profile is not None:
            profile.mark("ema")
    return loss.detach()
