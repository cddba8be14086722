"""Whole files, for training and evaluation: find them, read one, make normalised float planes of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import format_for, sample_layout, suffixes
from .png import array_axes, read_pixels

# Besides what the formats read plane by plane, training reads BMP and WebP (lossless WebP stores natural
# training images about a third smaller than PNG).
WHOLE_ONLY_SUFFIXES = (".bmp", ".webp")


def image_suffixes() -> set[str]:
    """What training and evaluation read: every format's suffixes, and BMP and WebP."""
    return set(suffixes()) | set(WHOLE_ONLY_SUFFIXES)


def find_images(folder: str | Path) -> list[Path]:
    """Image files below ``folder`` (recursive, sorted); a clear error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder not found: {folder}")
    wanted = image_suffixes()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in wanted)
    if not files:
        raise FileNotFoundError(f"no images in {folder} (looked for {', '.join(sorted(wanted))}, recursively)")
    return files


def read_image(path: str | Path) -> tuple[np.ndarray, bool]:
    """Read a whole image file. Returns (array, is_rgb): (..., Y, X) or (..., Y, X, 3).

    The first series of a TIFF, with the axes :func:`~diinn_napari.io.read_info`
    reports; RGBA loses its alpha. Other sample counts raise ``ValueError``
    (see :func:`~diinn_napari.io.sample_layout`).
    """
    path = Path(path)
    if path.suffix.lower() in WHOLE_ONLY_SUFFIXES:
        array = read_pixels(path)
        axes = array_axes(array)
    else:
        array, axes = format_for(path).read_array(path)
    layout = sample_layout(path.name, axes, array.shape)
    if layout == "bands":  # every band a gray plane (GeoTIFFs are read with their bands first already)
        array, layout = np.moveaxis(array, -1, -3), "gray"
    is_rgb = layout == "colour"
    if is_rgb:
        array = array[..., :3]
    return array, is_rgb


def image_planes(path: str | Path, channels: int) -> list[np.ndarray]:
    """All samples of one file as normalised float32 planes: (Y, X) for 1 channel, (3, Y, X) for RGB.

    Intensities go through :mod:`diinn_napari.intensity`, the code the engine
    uses, so a model trains and is evaluated on what it will see. RGB files
    become luminance for a 1-channel model; a 3-channel model takes RGB files only.
    """
    from ..intensity import fit_intensity, to_luminance

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
