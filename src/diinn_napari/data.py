"""Training data: read a folder of images into normalised planes and sample LR/HR pairs.

Every YX plane of every file is a sample (2D images, RGB, multi-page and nD
TIFF stacks). Intensities go through :mod:`diinn_napari.intensity`, the same
code the engine uses, so the model trains on what it will see.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .intensity import fit_intensity, to_luminance

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def find_images(folder: str | Path) -> list[Path]:
    """Image files below ``folder`` (recursive, sorted); a clear error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, recursively)")
    return files


def read_image(path: Path) -> tuple[np.ndarray, bool]:
    """Read a whole image file. Returns (array, is_rgb): (..., Y, X) or (..., Y, X, 3)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array = series.asarray()
            is_rgb = series.axes.endswith("S") and array.shape[-1] in (3, 4)
    else:
        from skimage.io import imread

        array = imread(path)
        is_rgb = array.ndim == 3 and array.shape[-1] in (3, 4)
    if is_rgb:
        array = array[..., :3]
    return array, is_rgb


def image_planes(path: Path, channels: int) -> list[np.ndarray]:
    """All samples of one file as normalised float32 planes: (Y, X) for 1 channel, (3, Y, X) for RGB.

    RGB files become luminance for a 1-channel model; a 3-channel model takes RGB files only.
    """
    array, is_rgb = read_image(path)
    if is_rgb:
        stack = array.reshape(-1, *array.shape[-3:])
        if channels == 1:
            planes = [to_luminance(rgb) for rgb in stack]
            # luminance of uint8 keeps the uint8 range, so map it like uint8
            return [plane / 255.0 if array.dtype == np.uint8 else fit_intensity(plane).normalize(plane) for plane in planes]
        return [fit_intensity(rgb).normalize(rgb).transpose(2, 0, 1) for rgb in stack]
    if channels == 3:
        return []
    stack = array.reshape(-1, *array.shape[-2:])
    return [fit_intensity(plane).normalize(plane) for plane in stack]


@dataclass
class PlaneSet:
    """Normalised training planes, each (C, Y, X) float32."""

    planes: list[torch.Tensor]
    files: list[Path]
    skipped: list[tuple[Path, str]]


def load_planes(files: list[Path], channels: int, min_size: int) -> PlaneSet:
    """Read every plane of ``files``; skip unreadable or too-small ones with a warning."""
    planes, used, skipped = [], [], []
    for path in files:
        try:
            found = image_planes(path, channels)
        except Exception as err:  # unreadable file: count it, never crash the run
            skipped.append((path, f"unreadable ({err.__class__.__name__}: {err})"))
            continue
        small = [p for p in found if min(p.shape[-2:]) < min_size]
        found = [p for p in found if min(p.shape[-2:]) >= min_size and np.isfinite(p).all()]
        if not found:
            why = f"smaller than {min_size} px" if small else "no usable plane"
            skipped.append((path, why))
            continue
        planes += [torch.from_numpy(np.ascontiguousarray(p)).reshape(channels, *p.shape[-2:]) for p in found]
        used.append(path)
    for path, why in skipped:
        log.warning("skipped %s: %s", path, why)
    return PlaneSet(planes, used, skipped)


def parse_scales(text: str) -> tuple[str, list[float]]:
    """``"2,3,4"`` -> a set of scales; ``"1-4"`` -> uniform in [1, 4]."""
    text = text.strip()
    if "-" in text and "," not in text:
        lo, hi = (float(v) for v in text.split("-"))
        if not 1 <= lo <= hi:
            raise ValueError(f"scale range must satisfy 1 <= low <= high, got {text!r}")
        return "uniform", [lo, hi]
    values = [float(v) for v in text.split(",") if v]
    if not values or min(values) < 1:
        raise ValueError(f"scales must be >= 1, got {text!r}")
    return "choice", values


def downsample(hr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic, antialiased downsampling of (B, C, H, W) to ``size`` (the LR of a pair)."""
    return F.interpolate(hr, size=size, mode="bicubic", align_corners=False, antialias=True)


@dataclass
class PairSampler:
    """Draws random (LR patch, HR crop) pairs from a :class:`PlaneSet` with a torch.Generator."""

    planes: list[torch.Tensor]
    patch: int
    scales: tuple[str, list[float]]
    noise: float = 0.0
    blur: float = 0.0

    def max_scale(self) -> float:
        return max(self.scales[1])

    def _scale(self, gen: torch.Generator) -> float:
        kind, values = self.scales
        if kind == "uniform":
            return values[0] + (values[1] - values[0]) * torch.rand((), generator=gen).item()
        return values[int(torch.randint(len(values), (), generator=gen))]

    def sample(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One pair: LR (C, patch, patch) and HR (C, H, W) with H, W ~ patch * scale."""
        plane = self.planes[int(torch.randint(len(self.planes), (), generator=gen))]
        _, ph, pw = plane.shape
        scale = min(self._scale(gen), ph / self.patch, pw / self.patch)
        size = max(self.patch, round(self.patch * scale))
        y = int(torch.randint(ph - size + 1, (), generator=gen))
        x = int(torch.randint(pw - size + 1, (), generator=gen))
        hr = plane[:, y : y + size, x : x + size]
        flips = torch.rand(3, generator=gen) < 0.5
        if flips[0]:
            hr = hr.flip(-1)
        if flips[1]:
            hr = hr.flip(-2)
        if flips[2]:
            hr = hr.transpose(-1, -2)
        hr = hr.contiguous()
        source = hr[None]
        if self.blur > 0:  # optical blur before sampling, for real-data degradations
            sigma = self.blur * torch.rand((), generator=gen).item()
            source = gaussian_blur(source, sigma)
        lr = downsample(source, (self.patch, self.patch))[0]
        if self.noise > 0:
            lr = lr + torch.randn(lr.shape, generator=gen) * (self.noise * torch.rand((), generator=gen).item())
        return lr, hr


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
