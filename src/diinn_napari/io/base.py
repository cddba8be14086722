"""What every image format offers: the :class:`ImageInfo` of a file, a plane reader, a writer, a registry.

A format is one module of this package holding one object that satisfies
:class:`ImageFormat`, registered with :func:`register`. The batch tool,
training and evaluation ask :func:`format_for` which format reads a path and
never branch on formats themselves. A format:

* recognises its files (:meth:`ImageFormat.detect`: a suffix, a folder
  layout, a tag in the header);
* describes a file without reading its pixels (:meth:`ImageFormat.read_info`);
* opens a :class:`PlaneSource`: ``source[index]`` is one (Y, X) or
  (Y, X, samples) plane, read with I/O bounded by about one plane;
* writes planes, in order, to a path it is given (the caller makes that path
  a temporary one and renames it into place, :mod:`.atomic`), with the output
  :class:`ImageInfo` (shape, dtype and physical sizes already updated) and the
  settings record (:mod:`.record`);
* reads back the settings record of a file it wrote.

This module does not import torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class ImageInfo:
    """What a file holds, read without reading its pixels.

    kind: the flavour of its format ("imagej", "ome", "tiff", "png", "jpeg");
        the format that wrote or read it is :func:`format_of`.
    axes: tifffile letters, e.g. "TZCYX", "YXS" (S: samples of a colour pixel).
    pixel_size: (y, x) in ``unit``; z_spacing in the same unit.
    nodata: the value that marks pixels without data (GDAL_NODATA), or None.
    metadata: what only its format reads and writes back (ImageJ keys, TIFF
        tags), carried unchanged from an input to its output.
    """

    path: Path
    kind: str
    axes: str
    shape: tuple[int, ...]
    dtype: np.dtype
    pixel_size: tuple[float, float] | None = None
    unit: str | None = None
    z_spacing: float | None = None
    time_interval: float | None = None
    channel_names: list[str] | None = None
    nodata: float | None = None  # the value of pixels without data (NaN included), or None
    metadata: dict[str, Any] = field(default_factory=dict)
    # what the reader dropped or doubted (e.g. an invalid physical size), for the user: the batch tool reports them
    warnings: list[str] = field(default_factory=list)

    @property
    def rgb(self) -> bool:
        """Colour pixels, RGB or RGBA (samples on the last axis)."""
        return is_colour(self.axes, self.shape)

    @property
    def plane_shape(self) -> tuple[int, ...]:
        """Shape of one plane: (Y, X) or (Y, X, samples)."""
        return self.shape[-3:] if self.axes.endswith("S") else self.shape[-2:]

    @property
    def leading(self) -> tuple[int, ...]:
        """The axes in front of the plane (Z, T, C, ...)."""
        return self.shape[: len(self.shape) - len(self.plane_shape)]

    @property
    def yx(self) -> tuple[int, int]:
        return self.shape[-3:-1] if self.axes.endswith("S") else self.shape[-2:]

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.leading, dtype=np.int64))

    def upscaled_shape(self, out_yx: tuple[int, int]) -> tuple[int, ...]:
        """This file's shape with its Y and X axes replaced by ``out_yx``."""
        if self.axes.endswith("S"):
            return self.shape[:-3] + tuple(out_yx) + self.shape[-1:]
        return self.shape[:-2] + tuple(out_yx)

    def output(self, path: Path, shape: tuple[int, ...], dtype, *, z_spacing: float | None = None) -> ImageInfo:
        """The info of an output made from this file: same axes and metadata, new shape and dtype.

        The pixel size is divided by the real Y and X size ratio; ``z_spacing``
        replaces the Z step (isotropic resampling).
        """
        new_yx = shape[-3:-1] if self.axes.endswith("S") else shape[-2:]
        size = None
        if self.pixel_size is not None:
            size = (self.pixel_size[0] * self.yx[0] / new_yx[0], self.pixel_size[1] * self.yx[1] / new_yx[1])
        return dataclasses.replace(self, path=Path(path), shape=tuple(int(n) for n in shape), dtype=np.dtype(dtype),
                                   pixel_size=size, z_spacing=self.z_spacing if z_spacing is None else z_spacing,
                                   warnings=[])


def _valid_size(value) -> bool:
    try:
        return math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        return False


def drop_invalid_sizes(info: ImageInfo) -> ImageInfo:
    """Drop physical sizes that are not finite numbers > 0 (0, -1, NaN, inf), each with a warning in ``info.warnings``.

    Every format's reader calls it, so an invalid size is never divided,
    planned with or copied into an output.
    """
    name = info.path.name
    if info.pixel_size is not None and not all(_valid_size(v) for v in info.pixel_size):
        info.warnings.append(f"{name}: invalid pixel size {tuple(info.pixel_size)} ignored (the file is read as "
                             "uncalibrated in X and Y)")
        info.pixel_size = None
    if info.z_spacing is not None and not _valid_size(info.z_spacing):
        info.warnings.append(f"{name}: invalid Z spacing {info.z_spacing!r} ignored")
        info.z_spacing = None
    if info.time_interval is not None and not _valid_size(info.time_interval):
        info.warnings.append(f"{name}: invalid time interval {info.time_interval!r} ignored")
        info.time_interval = None
    return info


def is_colour(axes: str, shape: tuple[int, ...]) -> bool:
    """Whether pixels with these tifffile ``axes`` are RGB or RGBA (3 or 4 samples on the last axis)."""
    return axes.endswith("S") and shape[-1] in (3, 4)


def sample_layout(name: str, axes: str, shape: tuple[int, ...], *, photometric: int | None = None,
                  interpretation: list[str | None] | None = None, extrasamples: tuple[int, ...] = ()) -> str:
    """The one rule for samples per pixel: "gray" (none), "colour" (RGB / RGBA) or "bands".

    Samples are colour only when the file says so consistently:
    ``photometric`` RGB (TIFF code 2), GDAL's colour interpretation of the
    first three (``interpretation``, lower case, None where not stated) red,
    green and blue where present, and every further sample alpha both by the
    TIFF ExtraSamples (1 or 2) and by GDAL (alpha or not stated): RGB or RGBA.
    Every other sample is a band (minisblack with any number of samples, RGB
    plus near-infrared, ...): bands go through the gray model one by one, each
    with its own intensity fit. Files without a photometric interpretation
    (PNG, JPEG, arrays) are colour with 3 or 4 samples. Every format's reader
    applies it, so the batch tool, the widget, training and evaluation agree.
    """
    if not axes.endswith("S"):
        return "gray"
    count = int(shape[-1])
    if photometric is None:
        return "colour" if count in (3, 4) else "bands"
    if photometric != 2 or count not in (3, 4):
        return "bands"
    said = list(interpretation or []) + [None] * count
    if any(said[i] not in (None, colour) for i, colour in enumerate(("red", "green", "blue"))):
        return "bands"
    if count == 4:
        extra = tuple(extrasamples) + (0,)
        if extra[0] not in (1, 2) or said[3] not in (None, "alpha"):
            return "bands"
    return "colour"


@runtime_checkable
class PlaneSource(Protocol):
    """An open file, array-like over its planes: ``source[index]`` reads one plane (index: the leading axes).

    A source may also offer ``data_mask()``: the (Y, X) bool mask of pixels
    holding data in every plane (a GeoTIFF's internal mask), or None; read it
    through :func:`diinn_napari.io.data_mask`.
    """

    info: ImageInfo

    def __getitem__(self, index: tuple[int, ...]) -> np.ndarray: ...

    def close(self) -> None: ...

    def __enter__(self) -> PlaneSource: ...

    def __exit__(self, *exc) -> None: ...


class ImageFormat(Protocol):
    """One file format, as the batch tool, training and evaluation use it (see the module docstring)."""

    name: str
    suffixes: tuple[str, ...]  # lower case, with the dot: what folders are searched for
    kinds: tuple[str, ...]  # the ImageInfo.kind values it reads and writes
    holds_stacks: bool  # whether a file can hold planes in front of Y, X (Z, T, C); PNG holds one plane

    def detect(self, path: Path) -> bool:
        """Whether this format reads ``path`` (cheap: a suffix, a name, at most a header)."""

    def read_info(self, path: Path) -> ImageInfo:
        """Axes, shape, dtype, physical sizes and metadata; ValueError naming the file if unreadable."""

    def open_planes(self, info: ImageInfo) -> PlaneSource:
        """A reader of ``info``'s planes with bounded memory per plane."""

    def read_array(self, path: Path) -> tuple[np.ndarray, str]:
        """The whole image (first series) and its axes (training and evaluation)."""

    def output_name(self, path: Path) -> str:
        """The name of the output made from input ``path`` (e.g. JPEG inputs give PNG outputs)."""

    def write(self, path: Path, info: ImageInfo, planes: Iterable[np.ndarray], record: dict | None = None) -> None:
        """Write ``planes`` (leading axes in C order) as the image ``info`` describes, with the settings record."""

    def read_record(self, path: Path) -> dict | None:
        """The settings record stored by :meth:`write`, or None."""


_FORMATS: list[ImageFormat] = []


def register(fmt: ImageFormat, *, first: bool = False) -> ImageFormat:
    """Add a format. ``first``: ask it before the others (a specialisation, e.g. GeoTIFF before TIFF)."""
    if first:
        _FORMATS.insert(0, fmt)
    else:
        _FORMATS.append(fmt)
    return fmt


def formats() -> tuple[ImageFormat, ...]:
    """The registered formats, in the order they are asked."""
    return tuple(_FORMATS)


def format_for(path: str | Path) -> ImageFormat:
    """The format that reads ``path``; a ValueError listing the supported suffixes if none does."""
    path = Path(path)
    for fmt in _FORMATS:
        if fmt.detect(path):
            return fmt
    raise ValueError(f"{path.name}: not a supported image file (use {', '.join(suffixes())})")


def is_image(path: str | Path) -> bool:
    """Whether some format reads ``path``."""
    return any(fmt.detect(Path(path)) for fmt in _FORMATS)


def format_of(info: ImageInfo) -> ImageFormat:
    """The format that reads and writes images of ``info.kind``."""
    for fmt in _FORMATS:
        if info.kind in fmt.kinds:
            return fmt
    raise ValueError(f"no format writes {info.kind!r} images")


def suffixes() -> tuple[str, ...]:
    """Every registered suffix, in registration order."""
    return tuple(s for fmt in _FORMATS for s in fmt.suffixes)
