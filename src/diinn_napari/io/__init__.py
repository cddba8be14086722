"""Image files: one interface over every format, the settings record, atomic writes.

Two levels, as tifffile has (``imread`` / ``TiffFile``):

* one call for the common case: :func:`read_info` (what a file holds, without
  its pixels), :func:`open_planes` (its planes, one at a time, I/O bounded by
  about a plane), :func:`write_planes` (upscaled planes written with the
  input's axes and metadata), :func:`read_record`; whole files for training
  and evaluation: :func:`find_images`, :func:`read_image`, :func:`image_planes`;
* the format objects (:func:`format_for`, :class:`ImageFormat`) for control.

Formats: :mod:`.geotiff` (GeoTIFF, multiband TIFF, COG output), :mod:`.tiff` (ImageJ, OME,
plain), :mod:`.png` (PNG, JPEG) and :mod:`.omezarr` (OME-Zarr folders, NGFF 0.4 and 0.5). A
new format is one module with an object satisfying :class:`ImageFormat`,
registered with :func:`register` and imported below.
:func:`atomic_write` is how files that must never be seen half-written
(weights, trainer state, batch outputs) are written.

This package does not import torch: the batch tool's main process reads with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

# each format registers itself on import; the import order is the order formats are asked in
from . import tiff  # noqa: F401,I001
from . import png  # noqa: F401
from . import geotiff  # noqa: F401  (registers itself first: asked before TIFF)
from . import omezarr  # noqa: F401
from .atomic import atomic_write, current_umask, fsync_folder, publish
from .base import (ImageFormat, ImageInfo, PlaneSource, drop_invalid_sizes, format_for, format_of, formats, is_colour, is_image, register,
                   sample_layout, suffixes)
from .record import RECORD_KEY, RECORD_TAG, read_record
from .whole import data_pixels, data_planes, find_images, image_planes, image_suffixes, nodata_rule, read_image

__all__ = ["ImageFormat", "ImageInfo", "PlaneSource", "RECORD_KEY", "RECORD_TAG", "atomic_write", "current_umask",
           "data_mask", "data_pixels", "data_planes", "find_images", "format_for", "format_of", "formats", "fsync_folder", "image_planes", "image_suffixes",
           "is_colour", "is_image", "nodata_rule", "open_planes", "publish", "read_image", "read_info", "read_record", "register",
           "sample_layout", "suffixes", "write_planes"]


def read_info(path: str | Path) -> ImageInfo:
    """Axes, shape, dtype, physical sizes and metadata of an image file; a ValueError naming it if unreadable."""
    path = Path(path)
    # every format's sizes pass the same check (idempotent: a format may already have applied it)
    return drop_invalid_sizes(format_for(path).read_info(path))


def open_planes(info: ImageInfo) -> PlaneSource:
    """A plane reader over the file ``info`` describes (a context manager): ``source[index]`` is one plane."""
    return format_of(info).open_planes(info)


def data_mask(source: PlaneSource) -> np.ndarray | None:
    """The (Y, X) bool mask of the pixels that hold data in every plane of ``source`` (True: data), or None.

    A GeoTIFF's GDAL internal mask; formats without masks have none.
    """
    read = getattr(source, "data_mask", None)
    return None if read is None else read()


def write_planes(path: str | Path, info: ImageInfo, out_yx: tuple[int, int], dtype, planes: Iterable[np.ndarray],
                 record: dict | None = None) -> None:
    """Write upscaled planes of input ``info`` (in input order) to ``path``, with its axes and metadata.

    The pixel size is divided by the real size ratio; ``record`` (JSON-able
    run settings) is stored as the format stores it. Not atomic by itself:
    wrap it in :func:`atomic_write`.
    """
    path = Path(path)
    out = info.output(path, info.upscaled_shape(out_yx), dtype)
    format_of(info).write(path, out, planes, record)
