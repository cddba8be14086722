"""Training data: normalised planes of image files, and the sampler of LR/HR pairs.

Every YX plane of every file is a sample (2D images, RGB, multi-page and nD
TIFF stacks), read by :func:`diinn_napari.io.data_planes` (intensities
normalised by the engine's own code, so the model trains on what it will see).
Pixels without data (a GeoTIFF's nodata value or internal mask, the rule
``evaluate`` scores by) are left out of the normalisation, and no training
patch or validation crop touches them (:mod:`.footprint`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io import data_planes
from ..isotropic_plan import default_axial_sigma
from ..quality import degrade_axis, downsample
from .config import parse_scales
from .footprint import Footprint

log = logging.getLogger(__name__)

__all__ = ["PlaneSet", "load_planes", "parse_scales", "PairSampler", "jitter_intensity", "sparse_spots", "gaussian_blur",
           "downsample", "validation_crops", "ValidationCrops", "quantise_levels", "left_out_line"]


@dataclass
class PlaneSet:
    """Normalised training planes, each (C, Y, X) float32; ``owners[i]``: the index in ``files`` of plane i's file.

    ``footprints[i]``: where plane i holds data (None: everywhere); ``left_out[path]``: the
    pixels without data of a used file (files without any are not listed).
    """

    planes: list[torch.Tensor]
    files: list[Path]
    skipped: list[tuple[Path, str]]
    owners: list[int] = field(default_factory=list)
    footprints: list[Footprint | None] = field(default_factory=list)
    left_out: dict[Path, int] = field(default_factory=dict)

    def footprint(self, i: int) -> Footprint | None:
        """Plane i's :class:`Footprint`, or None when all of it holds data."""
        return self.footprints[i] if i < len(self.footprints) else None


def load_planes(files: list[Path], channels: int, min_size: int) -> PlaneSet:
    """Read every plane of ``files``; skip unreadable or too-small ones with a warning.

    A plane with pixels without data is too small when no ``min_size`` px square of it
    lies wholly on data; its nodata pixels are counted in ``left_out``.
    """
    planes, used, skipped, owners, footprints, left_out = [], [], [], [], [], {}
    for path in files:
        try:
            found = data_planes(path, channels)
        except Exception as err:  # unreadable file: count it, never crash the run
            skipped.append((path, f"unreadable ({err.__class__.__name__}: {err})"))
            continue
        kept, small, thin, empty, missing = [], False, False, False, 0
        for plane, valid in found:
            shape = plane.shape[-2:]
            if min(shape) < min_size:
                small = True
                continue
            footprint = None if valid is None else Footprint(valid)
            if footprint is not None and footprint.data_pixels == 0:
                empty = True
                continue
            if footprint is not None and footprint.side < min_size:
                thin = True
                continue
            if not np.isfinite(plane).all():
                continue
            kept.append((plane, footprint))
            missing += 0 if footprint is None else footprint.left_out
        if not kept:
            why = (f"smaller than {min_size} px" if small and not (thin or empty) else
                   f"no {min_size} x {min_size} px square wholly on data (the rest is nodata or masked)" if thin else
                   "no pixel holds data (all nodata or masked)" if empty else "no usable plane")
            skipped.append((path, why))
            continue
        planes += [torch.from_numpy(np.ascontiguousarray(p)).reshape(channels, *p.shape[-2:]) for p, _ in kept]
        footprints += [f for _, f in kept]
        owners += [len(used)] * len(kept)
        used.append(path)
        if missing:
            left_out[path] = missing
    for path, why in skipped:
        log.warning("skipped %s: %s", path, why)
    return PlaneSet(planes, used, skipped, owners, footprints, left_out)


def left_out_line(sets: list[PlaneSet]) -> str | None:
    """One line: how many pixels without data the used files had (left out of patches, crops and normalisation)."""
    counts = {path: n for s in sets for path, n in s.left_out.items()}
    if not counts:
        return None
    total = sum(counts.values())
    pixels = sum(int(p.shape[-1] * p.shape[-2]) for s in sets for p in s.planes)
    files = sum(len(s.files) for s in sets)
    worst = max(counts, key=counts.get)
    return (f"left out {total} pixels without data (nodata or masked, {100 * total / max(pixels, 1):.1f} % of the "
            f"planes' pixels) in {len(counts)} of {files} files; the most in {worst.name} ({counts[worst]})")


@dataclass
class ValidationCrops:
    """The fixed crops a run validates on, and why they may be too few to trust (``warnings``)."""

    crops: list[torch.Tensor]
    files: int
    distinct_pixels: int
    warnings: list[str]


def validation_crops(planes: PlaneSet, count: int, size: int, seed: int, min_files: int = 2) -> ValidationCrops:
    """``count`` crops of ``size`` x ``size`` pixels (whole planes when smaller) from held-aside ``planes``.

    The files take turns (so a large stack does not outvote a single picture), a random
    plane of the file and a random position for each crop, all fixed by ``seed``: the
    start and every validation of a run score the same pixels. ``warnings`` says when
    the material is too thin to trust: fewer than ``min_files`` files, or fewer distinct
    pixels than the crops cover (they overlap).
    """
    if count < 1:
        return ValidationCrops([], 0, 0, ["validation is off (no crops asked for): the result is written unchecked"])
    if not planes.planes:
        return ValidationCrops([], 0, 0, ["no held-aside file to validate on: the result cannot be checked against the "
                                          "start and is written unchecked"])
    rng = np.random.default_rng(seed)
    by_file: dict[int, list[int]] = {}
    owners = planes.owners or list(range(len(planes.planes)))
    for i, owner in enumerate(owners):
        by_file.setdefault(owner, []).append(i)
    order = list(by_file)
    rng.shuffle(order)
    crops, covered = [], 0
    for i in range(count):
        group = by_file[order[i % len(order)]]
        k = group[int(rng.integers(len(group)))]
        plane, footprint = planes.planes[k], planes.footprint(k)
        _, h, w = plane.shape
        ch, cw = min(h, size), min(w, size)
        if footprint is None:
            y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        else:  # wholly on data: the largest square there when the asked crop does not fit
            if not footprint.starts(ch, cw).any():
                ch = cw = min(footprint.side, size)
            (y, x), = footprint.pick([rng.random()], ch, cw)
        crops.append(plane[:, y : y + ch, x : x + cw].contiguous())
        covered += ch * cw
    distinct = sum(int(p.shape[-1] * p.shape[-2]) if planes.footprint(i) is None else planes.footprint(i).data_pixels
                   for i, p in enumerate(planes.planes))
    warnings = []
    if len(by_file) < min_files:
        warnings.append(f"only {len(by_file)} held-aside file{'s' if len(by_file) != 1 else ''} to validate on "
                        f"(fewer than {min_files}): the scores may not represent your data; add images or hold more aside "
                        "with --val-fraction / --hold-out")
    if distinct < covered:
        warnings.append(f"the held-aside planes have {distinct} pixels, fewer than the {covered} of {count} validation "
                        f"crops of {size} px: the crops overlap and the scores are noisy; add images or lower --val-patches")
    return ValidationCrops(crops, len(by_file), distinct, warnings)


# Ranges of the "scientific" augmentations (normalised units: the plane's robust range is 0..1).
GAMMA_RANGE = (0.5, 2.0)  # log-uniform exponent of the intensity curve
CONTRAST_RANGE = (0.25, 1.25)  # log-uniform gain
OFFSET_RANGE = (-0.15, 0.15)  # uniform offset: pushes background to and below 0
FLOOR_PROBABILITY = 0.3  # of jittered items: clip at exactly 0, as integer data clipped at its minimum is
PHOTON_GAIN_RANGE = (1e-4, 3e-2)  # log-uniform Poisson variance per unit signal (33..10,000 photons at full range)
READ_NOISE_RANGE = (0.0, 0.02)  # uniform Gaussian sigma of the camera read noise
MAX_SPOTS = 24  # per synthetic sparse item
DARK_CANDIDATES = 8  # crop positions compared to pick a background-dominated crop
PLACE_TRIES = 16  # random starts tried for a crop wholly on data before the plane is scanned for one
LEVELS_RANGE = (8, 64)  # log-uniform number of quantisation levels over a quantised LR patch's range


def _draw_scales(scales: tuple[str, list], n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` scales from a :func:`parse_scales` distribution, as one float64 tensor."""
    kind, values = scales
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    if kind == "uniform":
        return values[0] + (values[1] - values[0]) * u
    if kind == "choice":
        return torch.tensor(values, dtype=torch.float64)[torch.randint(len(values), (n,), generator=gen)]
    table = torch.tensor(values, dtype=torch.float64)  # rows: lo, hi, weight
    which = torch.multinomial(table[:, 2], n, replacement=True, generator=gen)
    return table[which, 0] + (table[which, 1] - table[which, 0]) * u


@dataclass
class PairSampler:
    """Draws random (LR patch, HR crop) pairs from normalised planes with a torch.Generator.

    Besides the classic recipe (random crop, flips, transpose, antialiased
    bicubic downsampling, optional blur and Gaussian noise) it can draw the
    statistics of scientific images, each for a fraction of the items:

    * ``dark``: the crop is the darkest of several random positions (background-dominated);
    * ``sparse``: the item is synthetic sparse spots (and a few hot pixels) on a dim,
      textured, possibly negative background;
    * ``jitter``: random gamma, contrast and offset of the plane (values at and below 0
      included), sometimes clipped at exactly 0;
    * ``shot_noise``: Poisson-Gaussian noise on the LR input at a sampled photon gain and
      read noise (the HR target stays clean, so noise is not sharpened);
    * ``aniso``: independent per-axis scales (half of them (s, 1), the XZ case);
    * ``axial``: Z of a stack, as :func:`diinn_napari.isotropic.isotropic` meets it:
      rows only, scale (s, 1), the LR made by :func:`~diinn_napari.quality.degrade_axis`
      (a Gaussian blur along the rows, none for a third of the items and otherwise up
      to :func:`~diinn_napari.isotropic.default_axial_sigma` of s, then point samples
      on the LR pixel centres) instead of antialiased downsampling. An aliased Z
      (planes further apart than the optics resolve) is only learnt from these;
    * ``levels``: the LR input (noise included, as a camera digitises it) rounded to
      a few levels, log-uniform in :data:`LEVELS_RANGE`, over the patch's own range
      (dim 8- to 16-bit data); the HR target stays smooth, so the staircase is not
      learnt as structure (:func:`quantise_levels`).

    ``footprints`` (one per plane, None where a plane holds data everywhere): every crop
    lies wholly on data, its size capped by the largest all-data square of the plane.

    The same generator state always gives the same pairs.
    """

    planes: list[torch.Tensor]
    patch: int
    scales: tuple[str, list]
    noise: float = 0.0
    blur: float = 0.0
    dark: float = 0.0
    sparse: float = 0.0
    jitter: float = 0.0
    shot_noise: float = 0.0
    aniso: float = 0.0
    axial: float = 0.0
    levels: float = 0.0
    footprints: list[Footprint | None] | None = None

    def __post_init__(self) -> None:
        if self.footprints is not None and len(self.footprints) != len(self.planes):
            raise ValueError(f"{len(self.footprints)} footprints for {len(self.planes)} planes")
        for name in ("dark", "sparse", "jitter", "shot_noise", "aniso", "axial", "levels"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} is a fraction of the items and must be in [0, 1], got {value}")
        if not self.planes:
            raise ValueError("PairSampler needs at least one plane")

    def max_scale(self) -> float:
        """The largest scale the distribution can draw."""
        kind, values = self.scales
        return max(v[1] for v in values) if kind == "mix" else max(values)

    def sample(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One pair: LR (C, patch, patch) and HR (C, H, W) with H, W ~ patch * scale."""
        lr, hrs = self.sample_batch(gen, 1)
        return lr[0], hrs[0]

    def sample_batch(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``n`` pairs: LR (n, C, patch, patch) and a list of HR crops (C, H_i, W_i).

        Every random number of the batch is drawn up front in a few tensor calls;
        only cropping and resizing (sizes differ per item) run per item.
        """
        p = self.patch
        index = torch.randint(len(self.planes), (n,), generator=gen)
        sy = _draw_scales(self.scales, n, gen)
        sx = sy.clone()
        u = torch.rand(n, 8, generator=gen, dtype=torch.float64)
        second = _draw_scales(self.scales, n, gen)
        aniso = u[:, 0] < self.aniso
        # half the anisotropic items keep one axis at 1 (an XZ/YZ plane of a stack)
        sx = torch.where(aniso, torch.where(u[:, 1] < 0.5, torch.ones_like(second), second), sx)
        dark, sparse, jitter, shot = (u[:, 2] < self.dark), (u[:, 3] < self.sparse), (u[:, 4] < self.jitter), (u[:, 5] < self.shot_noise)
        blur_sigma = self.blur * u[:, 6]
        noise_sigma = self.noise * u[:, 7]
        flips = torch.rand(n, 3, generator=gen) < 0.5
        positions = torch.rand(n, DARK_CANDIDATES, 2, generator=gen, dtype=torch.float64)
        jit = torch.rand(n, 4, generator=gen, dtype=torch.float64)
        spots = torch.rand(n, MAX_SPOTS + 4, 4, generator=gen, dtype=torch.float64)
        shot_levels = torch.rand(n, 2, generator=gen, dtype=torch.float64)
        axial = torch.zeros(n, dtype=torch.bool)
        if self.axial > 0:  # drawn only when used: the random stream of the other recipes is unchanged
            axial_u = torch.rand(n, 3, generator=gen, dtype=torch.float64)
            axial = axial_u[:, 0] < self.axial
        if self.footprints:  # drawn only when used: the tries at a crop wholly on data (Footprint.place)
            tries = torch.rand(n, DARK_CANDIDATES, PLACE_TRIES, 2, generator=gen, dtype=torch.float64)
            elsewhere = torch.rand(n, DARK_CANDIDATES, generator=gen, dtype=torch.float64)
        quantised = torch.zeros(n, dtype=torch.bool)
        if self.levels > 0:  # drawn only when used, like the axial numbers
            levels_u = torch.rand(n, 2, generator=gen, dtype=torch.float64)
            quantised = levels_u[:, 0] < self.levels

        lrs, hrs = [], []
        for i in range(n):
            plane = self.planes[int(index[i])]
            footprint = self.footprints[int(index[i])] if self.footprints else None
            _, ph, pw = plane.shape
            if footprint is not None:  # sizes capped by the largest square on data, so an all-data crop exists
                ph = pw = footprint.side
            if aniso[i]:  # each axis capped by the plane on its own
                fy, fx = min(float(sy[i]), ph / p), min(float(sx[i]), pw / p)
            else:  # one scale, capped by the smaller fit, so the item stays isotropic
                fy = fx = min(float(sy[i]), ph / p, pw / p)
            h, w = max(p, min(ph, round(p * fy))), max(p, min(pw, round(p * fx)))
            if axial[i]:  # instead: n_hr rows plus a margin on each side (the blur reads it), p columns; after a
                # transpose the rows come from the plane's X, so the crop is taken in that orientation
                rows = pw if flips[i, 2] else ph
                n_hr = max(p, min(rows, round(p * min(float(sy[i]), rows / p))))
                ratio = n_hr / p
                z_blur = 0.0 if axial_u[i, 1] < 1 / 3 else float(axial_u[i, 2]) * default_axial_sigma(ratio)
                margin = min(math.ceil(3 * z_blur) if z_blur >= 0.1 else 0, (rows - n_hr) // 2)
                h, w = (n_hr + 2 * margin, p) if not flips[i, 2] else (p, n_hr + 2 * margin)
            if footprint is None:
                ys = (positions[i, :, 0] * (ph - h + 1)).long().clamp(max=ph - h).tolist()
                xs = (positions[i, :, 1] * (pw - w + 1)).long().clamp(max=pw - w).tolist()
            else:  # each candidate one of the starts whose crop holds data only
                m = DARK_CANDIDATES if dark[i] else 1  # only the dark pick compares candidates
                ys, xs = zip(*footprint.place(tries[i, :m].numpy(), elsewhere[i, :m].numpy(), h, w))
            k = 0
            if dark[i]:  # background-dominated: the darkest of the candidate crops
                k = int(torch.stack([plane[:, y : y + h, x : x + w].mean() for y, x in zip(ys, xs)]).argmin())
            hr = plane[:, ys[k] : ys[k] + h, xs[k] : xs[k] + w]
            if sparse[i]:
                hr = sparse_spots(hr, spots[i])
            if jitter[i]:
                hr = jitter_intensity(hr, jit[i])
            if flips[i, 0]:
                hr = hr.flip(-1)
            if flips[i, 1]:
                hr = hr.flip(-2)
            if flips[i, 2]:
                hr = hr.transpose(-1, -2)
            hr = hr.contiguous()
            source = hr[None]
            if blur_sigma[i] > 0:  # optical blur before sampling, for real-data degradations
                source = gaussian_blur(source, float(blur_sigma[i]))
            if axial[i]:  # LR row j = the blurred HR at the centre of LR pixel j, (j + 1/2) * ratio - 1/2
                lrs.append(degrade_axis(source, ratio, z_blur, p, offset=margin + (ratio - 1) / 2)[0])
                hr = hr[:, margin : margin + n_hr]
            else:
                lrs.append(downsample(source, (p, p))[0])
            hrs.append(hr)
        lr = torch.stack(lrs)
        # noise on the LR input only, for the whole batch at once; the HR target stays clean
        normal = torch.randn(lr.shape, generator=gen)
        sigma = noise_sigma.float().view(n, 1, 1, 1).expand_as(lr)
        if shot.any():
            lo, hi = (math.log(v) for v in PHOTON_GAIN_RANGE)
            gain = torch.exp(lo + (hi - lo) * shot_levels[:, 0]).float().view(n, 1, 1, 1)
            read = (READ_NOISE_RANGE[0] + (READ_NOISE_RANGE[1] - READ_NOISE_RANGE[0]) * shot_levels[:, 1]).float().view(n, 1, 1, 1)
            shot_sigma = torch.sqrt(gain * lr.clamp(min=0) + read**2)
            sigma = torch.where(shot.view(n, 1, 1, 1), torch.sqrt(sigma**2 + shot_sigma**2), sigma)
        if self.noise > 0 or shot.any():
            lr = lr + normal * sigma
        if quantised.any():  # after the noise: the camera digitises the noisy signal
            lo, hi = (math.log(v) for v in LEVELS_RANGE)
            count = torch.exp(lo + (hi - lo) * levels_u[:, 1]).round()
            lr = torch.where(quantised.view(n, 1, 1, 1), quantise_levels(lr, count), lr)
        return lr, hrs


def quantise_levels(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Each item of ``x`` (B, C, H, W) rounded to ``levels[i]`` equally spaced values over its own min..max.

    The extremes are levels, so an item takes exactly ``levels[i]`` values at most (fewer where
    its histogram has gaps); a constant item is returned unchanged.
    """
    flat = x.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    step = ((hi - lo) / (levels.to(x.dtype) - 1).clamp(min=1)).clamp(min=torch.finfo(x.dtype).tiny)
    shape = (-1,) + (1,) * (x.dim() - 1)
    lo, step = lo.view(shape), step.view(shape)
    return lo + torch.round((x - lo) / step) * step


def jitter_intensity(hr: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Random gamma, contrast and offset of a normalised crop; ``u``: 4 uniform numbers.

    The curve is applied to the magnitude (sign kept) so values below 0 stay
    below 0; with probability :data:`FLOOR_PROBABILITY` the result is clipped
    at exactly 0 (integer data clipped at its minimum).
    """
    lo, hi = (math.log(v) for v in GAMMA_RANGE)
    gamma = math.exp(lo + (hi - lo) * float(u[0]))
    lo, hi = (math.log(v) for v in CONTRAST_RANGE)
    contrast = math.exp(lo + (hi - lo) * float(u[1]))
    offset = OFFSET_RANGE[0] + (OFFSET_RANGE[1] - OFFSET_RANGE[0]) * float(u[2])
    out = hr.sign() * hr.abs() ** gamma * contrast + offset
    if float(u[3]) < FLOOR_PROBABILITY:
        out = out.clamp(min=0)
    return out


def sparse_spots(background: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Synthetic sparse fluorescence: Gaussian spots and hot pixels on a dim version of ``background``.

    ``background`` (C, H, W) is a real crop, scaled to 0-15 % of the range and
    offset by -5..+10 %, so the background is textured, dark and sometimes
    negative; ``u`` ((MAX_SPOTS + 4, 4) uniform numbers) places up to
    :data:`MAX_SPOTS` spots (sigma 0.5 px to 1/8 of the crop, amplitude 0.1-1)
    and, for some items, single-pixel hot spots of amplitude up to 1.
    """
    c, h, w = background.shape
    dtype = background.dtype
    level, gain, count, hot = (float(v) for v in u[-1])
    out = background * (0.15 * gain) + (-0.05 + 0.15 * level)
    n_spots = 1 + int(count * (MAX_SPOTS - 1))  # rows 0..23; rows 24-26 are the hot pixels
    s = u[:n_spots]
    y = (s[:, 0] * h).to(dtype)
    x = (s[:, 1] * w).to(dtype)
    lo, hi = math.log(0.5), math.log(max(1.0, min(h, w) / 8))
    sigma = torch.exp(lo + (hi - lo) * s[:, 2]).to(dtype)
    amplitude = (0.1 + 0.9 * s[:, 3]).to(dtype)
    gy = torch.exp(-0.5 * ((torch.arange(h, dtype=dtype)[None] + 0.5 - y[:, None]) / sigma[:, None]) ** 2)
    gx = torch.exp(-0.5 * ((torch.arange(w, dtype=dtype)[None] + 0.5 - x[:, None]) / sigma[:, None]) ** 2)
    out = out + torch.einsum("k,ky,kx->yx", amplitude, gy, gx)[None]
    if hot < 0.3:  # hot pixels / cosmic-ray hits: single pixels far above the spots
        pix = u[-4:-1]
        out = out.clone()
        out[:, (pix[:, 0] * h).long().clamp(max=h - 1), (pix[:, 1] * w).long().clamp(max=w - 1)] += (pix[:, 2] * 1.0).to(dtype)
    return out.expand(c, h, w).contiguous() if out.shape[0] != c else out


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflect padding."""
    if sigma < 0.1:
        return x
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
