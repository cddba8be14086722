"""Adapt the model to one image, without ground truth: fine-tune on the image's own downsampled copies.

    from diinn_napari.train.self_adapt import adapt_to_image
    adapted = adapt_to_image(image, 4)            # a copy of the model, tuned on `image`
    out = upscale(image, 4, model=adapted.model)

The image is its own teacher (internal learning, as ZSSR): crops of it are the HR,
their antialiased downsampled copies (the degradation the models train for) the LR,
at scales up to the target. The training is the trainer's own step
(:func:`~diinn_napari.train.step.train_step` with its pair sampler, loss, optimizer,
warm-up + cosine schedule and EMA of the weights). Never silently worse: a strip of
the image is held aside, the start and the result are scored on its downsampled copy
(the same crops, gain over bicubic), and the start is returned unless the result beats it.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .footprint import Footprint

log = logging.getLogger(__name__)

# benchmarks/self_adapt.py on 7 transmitted-light files of other labs (256-px crops, 20 steps):
# x2 +0.20 dB over the bundled model, none worse; x4 -0.17 dB, the worst -1.7 dB (a 64-px LR
# holds too little of itself to learn x4 from). Callers should offer it up to this scale.
MEASURED_HELPFUL_UP_TO = 2.0
# the steps the measurements above ran (what the batch's --self-adapt and the widget offer by default)
MEASURED_STEPS = 20


def refusal(scale: float | tuple[float, float]) -> str | None:
    """Why self-adaptation is not offered for upscaling by ``scale`` (a number or (sy, sx)), or None when it is.

    Not at x1 (there is nothing to learn), and not above :data:`MEASURED_HELPFUL_UP_TO`,
    where it was measured to lose on held-aside files (docs/finetuning.md).
    """
    factors = (scale, scale) if isinstance(scale, (int, float)) else tuple(scale)
    largest = max(float(f) for f in factors)
    if largest <= 1:
        return f"self-adaptation learns to upscale; at x{largest:g} there is nothing to learn"
    if largest > MEASURED_HELPFUL_UP_TO + 1e-9:
        return (f"self-adaptation was measured to help up to x{MEASURED_HELPFUL_UP_TO:g} and to lose above it (x4: "
                f"-0.17 dB on held-aside files, docs/finetuning.md); x{largest:g} asked")
    return None


@dataclass
class Adaptation:
    """The result of :func:`adapt_to_image`.

    ``model``: the adapted copy, or a copy of the start when adaptation did not beat it
    (``improved`` False); ``start`` / ``result``: the held-aside strip's validation
    (per scale ``psnr``, ``bicubic``, ``bias_percent`` and ``mean_gain``, as the trainer
    reports them); ``steps``: steps run; ``losses``: per step; ``seconds``: wall time.
    """

    model: Any
    improved: bool
    start: dict | None
    result: dict | None
    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _cancelled(cancel) -> bool:
    return cancel is not None and (cancel.is_set() if isinstance(cancel, threading.Event) else bool(cancel()))


def adapt_plane(plane, scale: float | tuple[float, float], settings, steps: int = MEASURED_STEPS, *, rgb: bool = False,
                mask=None, seed: int = 0, progress: Callable[[int, int, float], Any] | None = None,
                cancel: Callable[[], bool] | threading.Event | None = None) -> Adaptation:
    """:func:`adapt_to_image` for one plane as the engine will upscale it with ``settings`` (a RunSettings).

    What every shell calls (the batch's ``--self-adapt``, the napari widget): the plane's
    nodata pixels (and those ``mask``, a (Y, X) bool array True where there is data, marks
    as without) are found as the engine finds them and left out of the training and the
    check (``adapt_to_image``'s ``valid``), an RGBA plane's alpha is left out,
    and ``settings``' model, device, intensity and threads are used. ``scale`` is the
    plane's (sy, sx) factor: pairs are drawn up to the larger one. Refuses (ValueError)
    a scale :func:`refusal` refuses.
    """
    from ..engine import fill_nodata

    reason = refusal(scale)
    if reason is not None:
        raise ValueError(reason)
    factors = (scale, scale) if isinstance(scale, (int, float)) else tuple(scale)
    plane = np.asarray(plane)
    if rgb and plane.ndim == 3 and plane.shape[-1] == 4:
        plane = plane[..., :3]
    plane, missing = fill_nodata(plane, settings.nodata, rgb, None if mask is None else np.asarray(mask, dtype=bool))
    return adapt_to_image(plane, max(float(f) for f in factors), model=settings.model, rgb=rgb, steps=steps,
                          valid=None if missing is None else ~missing,
                          min_scale=min(1.5, max(float(f) for f in factors)), seed=seed, device=settings.device,
                          intensity=settings.intensity, threads=settings.threads, progress=progress, cancel=cancel)


def split_strip(plane: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(training part, held-aside strip) of a (C, Y, X) plane: the last ``fraction`` of its longer axis.

    ``None`` for the strip when ``fraction`` is 0.
    """
    if fraction <= 0:
        return plane, None
    axis = -1 if plane.shape[-1] >= plane.shape[-2] else -2
    n = plane.shape[axis]
    cut = n - max(1, round(n * fraction))
    if axis == -1:
        return plane[..., :cut], plane[..., cut:]
    return plane[..., :cut, :], plane[..., cut:, :]


def adapt_to_image(
    image,
    scale: float,
    *,
    model="default",
    rgb: bool = False,
    steps: int = 150,
    time_limit: float | None = None,
    learning_rate: float = 5e-5,
    warmup: int = 10,
    ema: float = 0.99,
    trainable: str = "all",
    patch: int = 24,
    batch: int = 4,
    queries: int = 512,
    holdout: float = 0.25,
    min_scale: float = 1.5,
    seed: int = 0,
    device="auto",
    intensity: str = "auto",
    threads: int | None = None,
    valid=None,
    progress: Callable[[int, int, float], Any] | None = None,
    cancel: Callable[[], bool] | threading.Event | None = None,
) -> Adaptation:
    """Fine-tune a copy of ``model`` on ``image``'s own downsampled copies, for upscaling it by ``scale``.

    image: (Y, X) (or (Y, X, 3) with ``rgb=True``) array in its own units; normalised by
        the engine's intensity map (``intensity``, as :func:`~diinn_napari.upscale` does).
    scale: the factor the image will be upscaled by; training pairs are drawn at scales
        uniform in [``min_scale``, ``scale``] (capped by what fits in the image).
    steps / time_limit: at most ``steps`` steps, and at most ``time_limit`` seconds.
    learning_rate, warmup, ema, trainable: the schedule (linear warm-up, cosine to 0 over
        ``steps``), the EMA decay of the weights that are returned, and what to train
        (``"all"``, ``"decoder"``, ``"encoder-slow"``, see
        :func:`~diinn_napari.train.optim.parameter_groups`).
    patch, batch, queries: LR patch edge (px), patches per step, HR pixels decoded per patch.
    holdout: fraction of the longer axis held aside as the check strip (0: no check, the
        adapted model is returned unchecked).
    valid: (Y, X) bool, True where the image holds data (None: everywhere). The intensity
        map is fitted on data only, as the engine fits it; training crops lie wholly on data
        and the check is the largest square of the strip on data (the trainer's rule for
        nodata, :mod:`~diinn_napari.train.footprint`).
    progress: ``progress(step, steps, loss)`` after each step; ``cancel`` stops between
        steps (raises :class:`~diinn_napari.engine.Cancelled`).

    The caller's model (and the engine's cached one) is left as it was. Returns an
    :class:`Adaptation`; ``.model`` is ready for ``upscale(image, scale, model=...)``.
    """
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps must be a whole number >= 0, got {steps!r}")
    if not (math.isfinite(scale) and scale > 1):
        raise ValueError(f"scale must be a number > 1, got {scale!r}")
    if not 0 <= holdout < 0.5:
        raise ValueError(f"holdout must be in [0, 0.5), got {holdout!r}")
    array = np.asarray(image)
    if array.ndim != (3 if rgb else 2):
        raise ValueError(f"adapt_to_image takes one plane: (Y, X) or (Y, X, 3) with rgb=True; got shape {array.shape}")
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != array.shape[:2]:
            raise ValueError(f"valid has shape {valid.shape}; the image's (Y, X) is {array.shape[:2]}")
        if valid.all():
            valid = None
    if scale > MEASURED_HELPFUL_UP_TO:
        log.warning("self-adaptation at x%g: measured to help at x2 but to lose at x4 on held-aside files "
                    "(docs/finetuning.md); compare the result with the start", scale)
    from ..engine import torch_threads

    # torch's thread count is the process's: set for the adaptation only (a napari session keeps its own)
    with torch_threads(threads):
        return _adapt(array, scale, model, rgb, steps, time_limit, learning_rate, warmup, ema, trainable, patch, batch,
                      queries, holdout, min_scale, seed, device, intensity, valid, progress, cancel)


def _on_data(strip: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """The largest square of a (C, Y, X) ``strip`` wholly on data (``valid``: its (Y, X) mask; None: all of it)."""
    if valid is None or valid.all():
        return strip
    footprint = Footprint(valid)
    side = footprint.side
    if side == 0:
        return strip[..., :0, :0]
    (y, x), = footprint.pick([0.5], side, side)  # (the middle one of the allowed squares, in raster order)
    return strip[..., y:y + side, x:x + side]


def _adapt(array, scale, model, rgb, steps, time_limit, learning_rate, warmup, ema, trainable, patch, batch, queries,
           holdout, min_scale, seed, device, intensity, valid, progress, cancel) -> Adaptation:
    import torch

    from ..engine import Cancelled, get_model
    from ..intensity import fit_intensity, to_luminance
    from ..model import DIINN
    from .config import cosine_rate
    from .data import PairSampler
    from .step import PointLoss, train_step
    from .validation import better_than, validate
    from .optim import ema_decay, make_optimizer

    # a caller's instance is copied before the engine touches it (get_model moves it and sets eval mode)
    start_model = get_model(copy.deepcopy(model) if isinstance(model, DIINN) else model, 3 if rgb else 1, device)
    net = copy.deepcopy(start_model).train()
    dev = next(net.parameters()).device
    channels = net.in_channels
    if rgb and channels == 1:
        array = to_luminance(array)
    elif not rgb and channels == 3:
        array = np.repeat(array[..., None], 3, -1)
    mapping = fit_intensity(array if valid is None else array[valid], intensity)  # on data only, as the engine
    plane = mapping.normalize(array)
    plane = plane.transpose(2, 0, 1) if plane.ndim == 3 else plane[None]
    train_part, strip = split_strip(plane, holdout)
    train_valid, strip_valid = split_strip(valid, holdout) if valid is not None else (None, None)
    footprint = None if train_valid is None or train_valid.all() else Footprint(train_valid)
    side = min(train_part.shape[-2:]) if footprint is None else footprint.side  # the largest square on data
    patch = min(patch, max(8, math.floor(side / scale)))  # so that pairs at the target scale fit
    if side < 8 * min_scale:
        if footprint is not None:
            raise ValueError(f"too little of the image holds data to adapt to: its largest square on data is {side} "
                             f"px (need {math.ceil(8 * min_scale)} px)")
        raise ValueError(f"an image of {array.shape[:2]} px is too small to adapt to (need {math.ceil(8 * min_scale / (1 - holdout))} px)")
    planes = [torch.from_numpy(np.ascontiguousarray(train_part))]
    sampler = PairSampler(planes, patch, ("uniform", [min_scale, max(min_scale, float(scale))]),
                          footprints=None if footprint is None else [footprint])
    if strip is not None:
        strip = _on_data(strip, strip_valid)
    val_scales = sorted({s for s in (2.0, float(scale)) if s <= scale})
    check = [torch.from_numpy(np.ascontiguousarray(strip))] if strip is not None and min(strip.shape[-2:]) >= 2 * scale else []
    if strip is not None and not check:
        log.warning("the image is too small to hold a check strip aside at x%g: the adaptation is not checked", scale)

    average = copy.deepcopy(net).eval().requires_grad_(False) if ema > 0 else None
    saved = average if average is not None else net
    started_at = time.perf_counter()
    start = validate(saved, check, val_scales, dev, crop=1 << 30) if check else None
    optimizer = make_optimizer(net, learning_rate, trainable)
    loss_fn = PointLoss(net, queries, "charbonnier")
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    done = 0
    for done in range(1, steps + 1):
        if _cancelled(cancel):
            raise Cancelled(f"adaptation cancelled after {done - 1} of {steps} steps")
        lr = cosine_rate(learning_rate, done - 1, steps, warmup)
        loss = train_step(loss_fn, optimizer, sampler, gen, batch, dev, lr=lr, ema=average, decay=ema_decay(ema, done))
        losses.append(loss.item())
        if progress is not None:
            progress(done, steps, losses[-1])
        if time_limit is not None and time.perf_counter() - started_at > time_limit:
            break
    result = validate(saved, check, val_scales, dev, crop=1 << 30) if check else None
    improved = result is None or (done > 0 and better_than(result, start))
    final = saved if improved else copy.deepcopy(start_model)
    final.eval()
    if check:
        log.info("self-adaptation, %d steps: held-aside strip gain over bicubic %+.2f dB (start %+.2f dB)%s", done,
                 result["mean_gain"], start["mean_gain"], "" if improved else ": not better, the start is kept")
    return Adaptation(final, improved, start, result, done, losses, time.perf_counter() - started_at)
