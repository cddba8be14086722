"""Whole files, for training and evaluation: find them, read one, make normalised float planes of it.

Pixels without data (a GeoTIFF's nodata value or GDAL internal mask) are found by
one rule, :func:`nodata_rule` + :func:`data_pixels`, which the engine's fill,
evaluation's scores and training's patches share.
"""

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


def nodata_rule(path: str | Path) -> tuple[float | None, np.ndarray | None]:
    """What marks a file's pixels without data: (its nodata value or None, its (Y, X) internal data mask or None).

    A mask that cannot be read counts as none (the file's pixels are read as they are).
    """
    from . import data_mask, open_planes, read_info

    path = Path(path)
    if path.suffix.lower() in WHOLE_ONLY_SUFFIXES:  # BMP and WebP carry neither
        return None, None
    info = read_info(path)
    try:
        with open_planes(info) as source:
            mask = data_mask(source)
    except (OSError, ValueError):
        mask = None
    return info.nodata, mask


def data_pixels(values: np.ndarray, nodata: float | None, mask: np.ndarray | None) -> np.ndarray | None:
    """The (Y, X) bool mask of ``values`` ((Y, X), or (Y, X, 3 or 4) colour) that holds data, or None when all of it does.

    The one rule the engine, training and evaluation follow (GDAL's dataset mask):
    a pixel holds no data where it equals ``nodata`` (NaN: is NaN), in every colour
    sample of a colour pixel (an RGBA pixel's alpha aside), or where ``mask`` (True:
    data; ignored unless it is (Y, X) of ``values``) is False.
    """
    valid = None
    if nodata is not None:
        colour = values if values.ndim == 2 else values[..., :3]
        hit = np.isnan(colour) if np.isnan(nodata) else colour == nodata
        valid = ~(hit if hit.ndim == 2 else hit.all(-1))
    if mask is not None and mask.shape == values.shape[:2]:
        valid = mask if valid is None else valid & mask
    return None if valid is None or valid.all() else valid


def data_planes(path: str | Path, channels: int, honour_nodata: bool = True) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Every sample of one file as (normalised float32 plane, (Y, X) data mask or None): (Y, X) planes
    for 1 channel (RGB files as luminance), (3, Y, X) for 3 (RGB files only).

    Intensities go through :mod:`diinn_napari.intensity`, the code the engine uses.
    With ``honour_nodata`` the pixels without data (:func:`data_pixels` of the file's samples: for RGB every
    colour at the nodata value) are left out of each plane's intensity fit, as the
    engine leaves them out, and set to 0 (a NaN nodata never reaches the network).
    """
    from ..intensity import Intensity, fit_intensity, to_luminance

    array, is_rgb = read_image(path)
    nodata, mask = nodata_rule(path) if honour_nodata else (None, None)
    if channels == 3 and not is_rgb:
        return []
    stack = array.reshape(-1, *array.shape[-3:]) if is_rgb else array.reshape(-1, *array.shape[-2:])
    out = []
    for raw in stack:
        valid = data_pixels(raw, nodata, mask)
        values = to_luminance(raw) if is_rgb and channels == 1 else raw
        if array.dtype == np.uint8:  # luminance of uint8 keeps the uint8 range, so map it like uint8
            mapping = Intensity(0.0, 255.0)
        elif valid is None:
            mapping = fit_intensity(values)
        else:
            mapping = fit_intensity(values[valid]) if valid.any() else Intensity(0.0, 1.0)
        plane = mapping.normalize(values)
        if valid is not None:
            plane[~valid] = 0.0
        out.append((plane.transpose(2, 0, 1) if plane.ndim == 3 else plane, valid))
    return out


def image_planes(path: str | Path, channels: int) -> list[np.ndarray]:
    """All samples of one file as normalised float32 planes: (Y, X) for 1 channel, (3, Y, X) for RGB.

    Intensities go through :mod:`diinn_napari.intensity`, the code the engine
    uses, so a model trains and is evaluated on what it will see. RGB files
    become luminance for a 1-channel model; a 3-channel model takes RGB files only.
    Every pixel counts in the normalisation, nodata included (:func:`data_planes`
    leaves those out).
    """
    return [plane for plane, _ in data_planes(path, channels, honour_nodata=False)]
