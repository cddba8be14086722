"""Image files for the batch tool: axes and physical metadata in, planes out one at a time.

TIFF (ImageJ hyperstacks, OME-TIFF, plain multi-page) through tifffile; PNG and
JPEG through scikit-image. Reading is page by page and writing frame by frame,
so a stack never sits whole in memory.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

TIFF_SUFFIXES = (".tif", ".tiff")
OTHER_SUFFIXES = (".png", ".jpg", ".jpeg")
SUFFIXES = TIFF_SUFFIXES + OTHER_SUFFIXES
# ImageJ metadata that stays valid when only X and Y are resampled
IMAGEJ_KEEP = ("unit", "spacing", "finterval", "fps", "Labels", "Ranges", "LUTs", "mode", "Info", "Properties", "loop", "min", "max")
_RESUNIT_NAMES = {2: "inch", 3: "cm"}


@dataclass
class ImageInfo:
    """What a file holds, read without reading its pixels."""

    path: Path
    kind: str  # "imagej", "ome", "tiff", "png", "jpeg"
    axes: str  # tifffile letters, e.g. "TZCYX", "YXS"
    shape: tuple[int, ...]
    dtype: np.dtype
    pixel_size: tuple[float, float] | None = None  # (y, x) in `unit`
    unit: str | None = None
    z_spacing: float | None = None
    time_interval: float | None = None
    channel_names: list[str] | None = None
    imagej: dict = field(default_factory=dict)
    resolution_unit: int | None = None

    @property
    def rgb(self) -> bool:
        return self.axes.endswith("S") and self.shape[-1] == 3

    @property
    def yx(self) -> tuple[int, int]:
        return self.shape[-3:-1] if self.axes.endswith("S") else self.shape[-2:]

    def upscaled_shape(self, out_yx: tuple[int, int]) -> tuple[int, ...]:
        """This file's shape with its Y and X axes replaced by ``out_yx``."""
        if self.axes.endswith("S"):
            return self.shape[:-3] + tuple(out_yx) + self.shape[-1:]
        return self.shape[:-2] + tuple(out_yx)

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.shape[: -3 if self.axes.endswith("S") else -2], dtype=np.int64))


def read_info(path: str | Path) -> ImageInfo:
    """Axes, shape, dtype and physical sizes of an image file; a clear error if unreadable."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path.name}: not a supported image file (use {', '.join(SUFFIXES)})")
    if suffix in OTHER_SUFFIXES:
        from skimage.io import imread

        array = imread(path)
        axes = "YXS" if array.ndim == 3 else "YX"
        if array.ndim == 3 and array.shape[-1] == 4:
            raise ValueError(f"{path.name}: RGBA images are not supported; drop the alpha channel first")
        return ImageInfo(path, "png" if suffix == ".png" else "jpeg", axes, array.shape, array.dtype)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            info = ImageInfo(path, "tiff", series.axes, tuple(series.shape), np.dtype(series.dtype))
            page = tif.pages[0]
            if "XResolution" in page.tags and "YResolution" in page.tags:
                info.resolution_unit = int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 1
                xres, yres = (_rational(page.tags[t].value) for t in ("XResolution", "YResolution"))
                if xres > 0 and yres > 0 and not (xres == 1 and yres == 1):
                    info.pixel_size = (1 / yres, 1 / xres)
                    info.unit = _RESUNIT_NAMES.get(info.resolution_unit)
            if tif.is_ome:
                info.kind = "ome"
                _read_ome(tif.ome_metadata, info)
            elif tif.is_imagej:
                info.kind = "imagej"
                meta = tif.imagej_metadata or {}
                info.imagej = {k: meta[k] for k in IMAGEJ_KEEP if k in meta}
                info.unit = meta.get("unit", info.unit)
                info.z_spacing = meta.get("spacing")
                info.time_interval = meta.get("finterval")
    except (tifffile.TiffFileError, ValueError, IndexError, KeyError, OSError) as err:
        raise ValueError(f"{path.name}: cannot read this TIFF ({err})") from err
    if info.axes.endswith("S") and info.shape[-1] not in (3,):
        raise ValueError(f"{path.name}: {info.shape[-1]} samples per pixel; only RGB (3) is supported")
    return info


def _rational(value) -> float:
    return value[0] / value[1] if isinstance(value, tuple) else float(value)


def _read_ome(xml: str, info: ImageInfo) -> None:
    root = ET.fromstring(xml)
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    if pixels is None:
        return
    a = pixels.attrib
    if "PhysicalSizeX" in a and "PhysicalSizeY" in a:
        info.pixel_size = (float(a["PhysicalSizeY"]), float(a["PhysicalSizeX"]))
        info.unit = a.get("PhysicalSizeXUnit", "µm")
    if "PhysicalSizeZ" in a:
        info.z_spacing = float(a["PhysicalSizeZ"])
    if "TimeIncrement" in a:
        info.time_interval = float(a["TimeIncrement"])
    names = [c.attrib.get("Name") for c in pixels if c.tag.endswith("Channel")]
    if names and all(names):
        info.channel_names = names


class PlaneReader:
    """Array-like over an image file's planes: ``reader[index]`` reads one YX(S) plane."""

    def __init__(self, info: ImageInfo):
        self.info, self.shape, self.dtype = info, info.shape, info.dtype
        self._per_page = info.kind not in ("png", "jpeg") and self._pages_are_planes()

    def _pages_are_planes(self) -> bool:
        with tifffile.TiffFile(self.info.path) as tif:
            series = tif.series[0]
            return len(series) == self.info.n_planes and tuple(series.keyframe.shape) == tuple(
                self.shape[-3:] if self.info.axes.endswith("S") else self.shape[-2:]
            )

    def __getitem__(self, index: tuple[int, ...]) -> np.ndarray:
        if self.info.kind in ("png", "jpeg"):
            from skimage.io import imread

            return imread(self.info.path)
        leading = self.shape[: -3 if self.info.axes.endswith("S") else -2]
        with tifffile.TiffFile(self.info.path) as tif:
            series = tif.series[0]
            if self._per_page:
                flat = int(np.ravel_multi_index(index, leading)) if leading else 0
                return series[flat].asarray()
            # pages hold more than one plane (or tiles of one): read the series, keep one plane
            return series.asarray()[index]


def output_pixel_size(info: ImageInfo, ratio: tuple[float, float]) -> tuple[float, float] | None:
    """New (y, x) pixel size: old / (n_out / n_in) per axis."""
    if info.pixel_size is None:
        return None
    return (info.pixel_size[0] / ratio[0], info.pixel_size[1] / ratio[1])


def write_planes(path: Path, info: ImageInfo, out_yx: tuple[int, int], dtype: np.dtype, planes: Iterable[np.ndarray]) -> None:
    """Write upscaled planes (in input order) with the input's axes and metadata, frame by frame."""
    H, W = out_yx
    shape = info.upscaled_shape(out_yx)
    ratio = (H / info.yx[0], W / info.yx[1])
    size = output_pixel_size(info, ratio)
    if info.kind in ("png", "jpeg"):  # a single plane; the format follows path's suffix
        from skimage.io import imsave

        imsave(path, next(iter(planes)), check_contrast=False)
        return
    kwargs: dict = {"shape": shape, "dtype": dtype, "photometric": "rgb" if info.rgb else "minisblack"}
    if size is not None and info.kind != "ome":
        kwargs["resolution"] = (1 / size[1], 1 / size[0])
        if info.kind != "imagej":
            kwargs["resolutionunit"] = info.resolution_unit or 1
    if info.kind == "imagej":
        metadata = dict(info.imagej, axes=info.axes)
        with tifffile.TiffWriter(path, imagej=True) as tif:
            tif.write(iter(planes), metadata=metadata, **kwargs)
        return
    metadata: dict = {"axes": info.axes}
    if info.kind == "ome":
        if size is not None:
            metadata.update(PhysicalSizeY=size[0], PhysicalSizeX=size[1], PhysicalSizeYUnit=info.unit, PhysicalSizeXUnit=info.unit)
        if info.z_spacing is not None:
            metadata.update(PhysicalSizeZ=info.z_spacing, PhysicalSizeZUnit=info.unit)
        if info.time_interval is not None:
            metadata["TimeIncrement"] = info.time_interval
        if info.channel_names:
            metadata["Channel"] = {"Name": info.channel_names}
    with tifffile.TiffWriter(path, bigtiff=needs_bigtiff(shape, dtype), ome=info.kind == "ome") as tif:
        tif.write(iter(planes), metadata=metadata, **kwargs)


def needs_bigtiff(shape: tuple[int, ...], dtype) -> bool:
    """Whether a plain/OME TIFF of this size must be BigTIFF (32 MiB left for the page directories)."""
    return math.prod(shape) * np.dtype(dtype).itemsize > 2**32 - 2**25
