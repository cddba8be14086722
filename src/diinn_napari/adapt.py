"""Self-supervised adaptation of a model to one anisotropic stack, before its Z is resampled.

    from diinn_napari.adapt import adapt
    from diinn_napari.isotropic import isotropic
    net = adapt(stack, (dz, dy, dx), steps=300)
    iso = isotropic(stack, (dz, dy, dx), model=net)

A stack's XY planes hold the lateral resolution that its Z lacks: XY planes
degraded along one axis only, as Z is sampled (axial blur, then point samples
every ``dz / target`` pixels), teach the model the (Z, lateral) degradation
of its XZ and YZ planes. The optimizer and the learning-rate schedule are the
trainer's (:mod:`diinn_napari.train`); the stack's geometry is the planner's
(:func:`~diinn_napari.isotropic_plan.plan_isotropic`).

Command line: ``python -m diinn_napari.batch STACK.tif --isotropic --adapt-steps 300``.
This module imports torch only when work starts.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .core import CancelCheck, check_cancel
from .isotropic import check_volume, fit_volume_intensity
from .isotropic_plan import plan_spacing, z_positions

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .model import DIINN

log = logging.getLogger("diinn_napari.adapt")

# The learning rate decays (cosine) from its start to this fraction of it.
FINAL_LR_FRACTION = 0.1


def adapt(
    volume,
    spacing,
    target: float | None = None,
    *,
    model: str | os.PathLike | DIINN = "default",
    steps: int = 300,
    axial_sigma: float | None = None,
    lr_rows: int = 8,
    patch: int = 32,
    batch: int = 4,
    learning_rate: float = 5e-5,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity: str = "auto",
    progress: Callable[[int, int, float], Any] | None = None,
    cancel: CancelCheck | None = None,
) -> DIINN:
    """Self-supervised fine-tuning on the stack's own XY planes; returns an adapted copy of ``model``.

    volume: (..., Z, Y, X) numpy or array-like; every XY plane of every
        volume is a training plane (normalised with its volume's intensity map).
    spacing, target: as in :func:`diinn_napari.isotropic.isotropic`.

    Each step draws ``batch`` random XY crops (random plane, flips, and a
    transpose, so rows are Y or X), degrades them along the rows exactly as
    Z is sampled (Gaussian blur of ``axial_sigma`` XY pixels, then point
    samples every ``ratio = dz / target`` pixels; ``lr_rows`` x ``patch`` LR
    pixels), decodes the full HR crop at the point-sample positions and takes
    an L1 step (the trainer's optimizer, Adam, and its cosine schedule from
    ``learning_rate`` down to :data:`FINAL_LR_FRACTION` of it).
    ``axial_sigma=None`` uses the plan's default
    (:func:`~diinn_napari.isotropic_plan.default_axial_sigma` of ``dz / dx``);
    0 = pure point sampling. ``progress(step, steps, loss)`` after each step;
    ``cancel`` stops between steps (raises :class:`~diinn_napari.core.Cancelled`).
    The input model (an instance, or the engine's cached copy of a file) is
    not modified.
    """
    import torch
    import torch.nn.functional as F

    from .model.grid import AxisSamples
    from .quality import degrade_axis
    from .train.optim import make_optimizer

    check_volume(volume)
    plan = plan_spacing(volume.shape, spacing, target)
    step = plan.step
    ratio = 1.0 / step  # output planes per input plane = HR pixels per LR row in training
    if axial_sigma is None:
        axial_sigma = plan.axial_sigma
    if not (math.isfinite(axial_sigma) and axial_sigma >= 0):
        raise ValueError(f"axial_sigma must be >= 0 (XY pixels), got {axial_sigma!r}")
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps must be a whole number >= 0, got {steps!r}")
    xy = min(plan.pixel_size)
    if not math.isclose(plan.target, xy, rel_tol=0.05):
        log.info("target %g differs from the XY pixel size %g: training pairs use the XY pixels as the target grid",
                 plan.target, xy)
    net = trainable_copy(model, device)
    if net.in_channels != 1:
        raise ValueError(f"adapt() needs a single-channel model; this one takes {net.in_channels} channels")
    dev = next(net.parameters()).device
    planes = training_planes(volume, intensity)
    h_min, w_min = min(p.shape[0] for p in planes), min(p.shape[1] for p in planes)
    margin = math.ceil(3 * axial_sigma) if axial_sigma >= 0.1 else 0  # HR rows the blur reads beyond the crop
    side = min(h_min, w_min)  # a transposed plane must fit too
    rows = min(lr_rows, int((side - 1 - 2 * margin) / ratio + 1e-9) + 1)
    if rows < 2:
        raise ValueError(f"XY planes of {h_min} x {w_min} pixels are too small for adaptation at ratio {ratio:g} "
                         f"with axial_sigma {axial_sigma:g}: need {math.ceil(ratio) + 1 + 2 * margin} pixels")
    positions = z_positions(rows, step)
    n_hr = len(positions)  # HR rows the point samples span
    width = min(patch, side)
    samples = AxisSamples(positions, step)
    gen = np.random.default_rng(seed)
    opt = make_optimizer(net, learning_rate)
    net.train()
    for i in range(steps):
        check_cancel(cancel, i, steps, "adaptation steps")
        hr = torch.from_numpy(_draw_crops(planes, gen, batch, n_hr + 2 * margin, width))[:, None].to(dev)
        lr = degrade_axis(hr, ratio, axial_sigma, rows, offset=margin)
        target_hr = hr[:, :, margin : margin + n_hr]
        features = net.encode(lr)
        pred = net.decode_window(lr, features, (rows, width), (n_hr, width), (0, n_hr, 0, width), (0, 0), "fast",
                                 samples=(samples, None))
        loss = F.l1_loss(pred, target_hr)
        for group in opt.param_groups:
            group["lr"] = adaptation_lr(learning_rate, i, steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None:
            progress(i + 1, steps, loss.item())
    return net.eval()


def adaptation_lr(start: float, step: int, steps: int) -> float:
    """The learning rate at ``step``: the trainer's cosine schedule, from ``start`` down to :data:`FINAL_LR_FRACTION` of it."""
    from .train.config import cosine_rate

    return cosine_rate(start, step, steps, floor=FINAL_LR_FRACTION)


def trainable_copy(model: str | os.PathLike | DIINN, device: str | torch.device = "auto") -> DIINN:
    """A private copy of ``model`` on ``device`` to train (the caller's instance and the engine's cache stay as they are)."""
    from .engine import get_model
    from .model import DIINN

    net = get_model(model, 1, device)
    made_a_copy = isinstance(model, DIINN) and net is not model  # get_model copied an instance to another device
    return net if made_a_copy else copy.deepcopy(net)


def training_planes(volume, intensity: str = "auto") -> list[np.ndarray]:
    """Every XY plane of every (Z, Y, X) volume of ``volume``, normalised with its volume's intensity map."""
    leading, _ = check_volume(volume)
    planes = []
    for index in np.ndindex(*leading):
        vol = volume[index] if index else volume
        mapping = fit_volume_intensity(vol, intensity)
        planes += [mapping.normalize(np.asarray(vol[z])) for z in range(int(vol.shape[0]))]
    return planes


def _draw_crops(planes: list[np.ndarray], gen: np.random.Generator, batch: int, height: int, width: int) -> np.ndarray:
    """``batch`` random (height, width) crops: a random plane, transposed (rows = X: the YZ case) and flipped at random."""
    crops = []
    for _ in range(batch):
        plane = planes[gen.integers(len(planes))]
        if gen.random() < 0.5:  # rows = X: the YZ case
            plane = plane.T
        if gen.random() < 0.5:
            plane = plane[::-1]
        if gen.random() < 0.5:
            plane = plane[:, ::-1]
        h, w = plane.shape
        y = gen.integers(0, h - height + 1)
        x = gen.integers(0, w - width + 1)
        crops.append(np.ascontiguousarray(plane[y : y + height, x : x + width]))
    return np.stack(crops)
