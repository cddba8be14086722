"""Image files: the one reader (batch, training, evaluation) and the one atomic writer.

TIFF (ImageJ hyperstacks, OME-TIFF, plain multi-page) through tifffile; PNG,
JPEG, BMP and WebP through scikit-image / imageio. Two ways in, one
interpretation of a file (:func:`sample_layout` decides RGB/RGBA versus
other sample counts for both):

* :func:`read_info` + :class:`PlaneReader` (the batch tool): axes and physical
  metadata without the pixels, then one plane at a time (a page, a page range,
  or a memory map, whatever the layout allows), so a stack never sits whole
  in memory; :func:`write_planes` writes frame by frame;
* :func:`read_image` / :func:`image_planes` (training and evaluation): a whole
  file, as normalised float planes.

Every batch output carries a *settings record* (JSON: input, output size,
model, intensity, dtype) in a private TIFF tag or a PNG text chunk, so a rerun
can tell a finished output from one made with other settings.
:func:`atomic_write` is how files that must never be seen half-written
(weights, trainer state) are written.

This module does not import torch: the batch tool's main process reads with it.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

TIFF_SUFFIXES = (".tif", ".tiff")
OTHER_SUFFIXES = (".png", ".jpg", ".jpeg")
# what the batch tool reads and writes back in kind (plane by plane)
SUFFIXES = TIFF_SUFFIXES + OTHER_SUFFIXES
# what training and evaluation read (whole files): also BMP and WebP (lossless WebP stores natural
# training images about a third smaller than PNG)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
# ImageJ metadata that stays valid when only X and Y are resampled
IMAGEJ_KEEP = ("unit", "spacing", "finterval", "fps", "Labels", "Ranges", "LUTs", "mode", "Info", "Properties", "loop", "min", "max")
_RESUNIT_NAMES = {2: "inch", 3: "cm"}
# OME length units in metres (the ones microscopes write), to bring PhysicalSizeZ into the unit of X
_OME_METRES = {"m": 1.0, "cm": 1e-2, "mm": 1e-3, "µm": 1e-6, "um": 1e-6, "micron": 1e-6, "nm": 1e-9, "Å": 1e-10,
               "pm": 1e-12}
# Private TIFF tag (the 65000-65535 range is free for any use) and PNG text key of the settings record.
RECORD_TAG = 65471
RECORD_KEY = "diinn-napari"


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
    has_resolution: bool = False  # the first page has XResolution and YResolution tags
    subfiletype: int | None = None  # NewSubfileType of the first page, None when absent
    extrasamples: tuple[int, ...] = ()  # TIFF ExtraSamples (the alpha of RGBA)

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

    def upscaled_shape(self, out_yx: tuple[int, int]) -> tuple[int, ...]:
        """This file's shape with its Y and X axes replaced by ``out_yx``."""
        if self.axes.endswith("S"):
            return self.shape[:-3] + tuple(out_yx) + self.shape[-1:]
        return self.shape[:-2] + tuple(out_yx)

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.shape[: -3 if self.axes.endswith("S") else -2], dtype=np.int64))


def is_colour(axes: str, shape: tuple[int, ...]) -> bool:
    """Whether pixels with these tifffile ``axes`` are RGB or RGBA (3 or 4 samples on the last axis)."""
    return axes.endswith("S") and shape[-1] in (3, 4)


def sample_layout(name: str, axes: str, shape: tuple[int, ...]) -> bool:
    """The one rule for samples per pixel: True for RGB/RGBA, False for none; other counts are refused.

    Used by :func:`read_info` and :func:`read_image`, so the batch tool and
    training/evaluation agree on what a file is.
    """
    if axes.endswith("S") and not is_colour(axes, shape):
        raise ValueError(f"{name}: {shape[-1]} samples per pixel; only gray, RGB (3) and RGBA (4) are supported")
    return is_colour(axes, shape)


def _other_axes(array: np.ndarray) -> str:
    """tifffile-style axes of an image read by scikit-image (PNG, JPEG, BMP, WebP)."""
    return "YXS" if array.ndim == 3 else "YX"


def read_info(path: str | Path) -> ImageInfo:
    """Axes, shape, dtype and physical sizes of an image file; a clear error if unreadable."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path.name}: not a supported image file (use {', '.join(SUFFIXES)})")
    if suffix in OTHER_SUFFIXES:
        from skimage.io import imread

        try:
            array = imread(path)
        except Exception as err:  # imageio raises many types for a broken file
            raise ValueError(f"{path.name}: cannot read this image ({err})") from err
        axes = _other_axes(array)
        sample_layout(path.name, axes, array.shape)
        return ImageInfo(path, "png" if suffix == ".png" else "jpeg", axes, array.shape, array.dtype)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            info = ImageInfo(path, "tiff", series.axes, tuple(series.shape), np.dtype(series.dtype))
            page = tif.pages[0]
            info.extrasamples = tuple(int(v) for v in getattr(page, "extrasamples", ()) or ())
            if "NewSubfileType" in page.tags:
                info.subfiletype = int(page.tags["NewSubfileType"].value)
            info.has_resolution = "XResolution" in page.tags and "YResolution" in page.tags
            if info.has_resolution:
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
                info.imagej = {k: meta[k] for k in IMAGEJ_KEEP + ("ImageJ",) if k in meta}
                info.unit = meta.get("unit", info.unit)
                info.z_spacing = meta.get("spacing")
                info.time_interval = meta.get("finterval")
    except (tifffile.TiffFileError, ValueError, IndexError, KeyError, OSError) as err:
        raise ValueError(f"{path.name}: cannot read this TIFF ({err})") from err
    sample_layout(path.name, info.axes, info.shape)
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
        # in the unit of the pixel size (both default to µm in OME), so that dz / dx is a real ratio
        info.z_spacing = float(a["PhysicalSizeZ"])
        z_unit, xy_unit = a.get("PhysicalSizeZUnit", "µm"), a.get("PhysicalSizeXUnit", "µm")
        if z_unit != xy_unit and z_unit in _OME_METRES and xy_unit in _OME_METRES:
            info.z_spacing *= _OME_METRES[z_unit] / _OME_METRES[xy_unit]
    if "TimeIncrement" in a:
        info.time_interval = float(a["TimeIncrement"])
    names = [c.attrib.get("Name") for c in pixels if c.tag.endswith("Channel")]
    if names and all(names):
        info.channel_names = names


class PlaneReader:
    """Array-like over an image file's planes: ``reader[index]`` reads one YX(S) plane.

    The file stays open while the reader lives (use it as a context manager).
    How one plane is read depends on the TIFF layout, so that the I/O per plane
    stays bounded by one plane or one page:

    - every page is one plane (ImageJ, OME, tifffile, most writers): that page;
    - pages hold several planes or parts of one (separate sample planes,
      volumetric pages): the page range that holds the plane; the last decoded
      page is kept, so reading the planes in order decodes each page once;
    - the pages do not cover the series but its data is one uncompressed block
      (ImageJ files over 4 GiB): a read-only memory map;
    - anything else is refused with a message naming the layout.
    """

    def __init__(self, info: ImageInfo):
        self.info, self.shape, self.dtype = info, info.shape, info.dtype
        self._tif: tifffile.TiffFile | None = None
        self._cache: tuple[int, np.ndarray] | None = None  # (page number, its decoded data)
        self._memmap: np.ndarray | None = None
        if info.kind in ("png", "jpeg"):
            return
        self._tif = tifffile.TiffFile(info.path)
        try:
            series = self._tif.series[0]
            self._series = series
            page_shape = tuple(series.keyframe.shape)
            self._page_size = math.prod(page_shape)
            self._plane_size = math.prod(info.plane_shape)
            if len(series) == info.n_planes and page_shape == tuple(info.plane_shape):
                self._mode = "page"
            elif len(series) * self._page_size == math.prod(self.shape) and all(
                p is not None for p in series.pages
            ):
                self._mode = "pages"
            elif series.dataoffset is not None:
                self._mode = "memmap"
                self._memmap = tifffile.memmap(info.path, series=0, mode="r").reshape(self.shape)
            else:
                raise ValueError(
                    f"{info.path.name}: cannot read one plane at a time from this layout ({len(series)} pages of "
                    f"shape {page_shape} for a series of shape {tuple(self.shape)}, axes {info.axes}, compressed "
                    "or not contiguous); save it as one page per plane (ImageJ or OME-TIFF) first"
                )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the file (the reader cannot read after this)."""
        self._cache = self._memmap = None
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def __enter__(self) -> PlaneReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getitem__(self, index: tuple[int, ...]) -> np.ndarray:
        if self.info.kind in ("png", "jpeg"):
            from skimage.io import imread

            return imread(self.info.path)
        if self._tif is None:
            raise ValueError(f"{self.info.path.name}: the reader is closed")
        index = tuple(int(i) for i in index)
        flat = int(np.ravel_multi_index(index, self.info.leading)) if self.info.leading else 0
        if self._mode == "page":
            return self._series[flat].asarray().reshape(self.info.plane_shape)
        if self._mode == "memmap":
            return np.array(self._memmap[index])
        # the series is its pages' data end to end: the plane is one element range of that
        start, stop = flat * self._plane_size, (flat + 1) * self._plane_size
        parts = []
        for number in range(start // self._page_size, (stop - 1) // self._page_size + 1):
            data = self._page(number)
            lo = max(start - number * self._page_size, 0)
            hi = min(stop - number * self._page_size, self._page_size)
            parts.append(data[lo:hi])
        return np.concatenate(parts).reshape(self.info.plane_shape)

    def _page(self, number: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != number:
            self._cache = (number, self._series[number].asarray().reshape(-1))
        return self._cache[1]


def output_pixel_size(info: ImageInfo, ratio: tuple[float, float]) -> tuple[float, float] | None:
    """New (y, x) pixel size: old / (n_out / n_in) per axis."""
    if info.pixel_size is None:
        return None
    return (info.pixel_size[0] / ratio[0], info.pixel_size[1] / ratio[1])


def write_planes(
    path: Path,
    info: ImageInfo,
    out_yx: tuple[int, int],
    dtype: np.dtype,
    planes: Iterable[np.ndarray],
    record: dict | None = None,
) -> None:
    """Write upscaled planes (in input order) with the input's axes and metadata, frame by frame.

    ``record`` (the run settings, JSON-able) goes into a private TIFF tag of the
    first page, or a PNG text chunk. The output follows the input: ImageJ stays
    ImageJ (with its version string), OME stays OME, NewSubfileType and the
    alpha channel's ExtraSamples are kept, and an input without resolution tags
    gets none.
    """
    H, W = out_yx
    dtype = np.dtype(dtype)
    shape = info.upscaled_shape(out_yx)
    ratio = (H / info.yx[0], W / info.yx[1])
    size = output_pixel_size(info, ratio)
    text = json.dumps(record, sort_keys=True) if record is not None else None
    if info.kind in ("png", "jpeg"):  # a single plane, written as PNG
        _write_png(path, next(iter(planes)), text)
        return
    extratags = []
    if text is not None:
        extratags.append((RECORD_TAG, "s", 0, text, True))
    if info.subfiletype is not None:  # tifffile writes NewSubfileType only when non-zero: add it as a tag
        extratags.append((254, "I", 1, info.subfiletype, False))
    kwargs: dict = {"shape": shape, "dtype": dtype, "photometric": "rgb" if info.rgb else "minisblack",
                    "extratags": extratags}
    if info.rgb and shape[-1] == 4:
        kwargs["extrasamples"] = info.extrasamples or ("unassalpha",)
    if size is not None and info.kind != "ome":
        kwargs["resolution"] = (1 / size[1], 1 / size[0])
        if info.kind != "imagej":
            kwargs["resolutionunit"] = info.resolution_unit or 1
    if info.kind == "imagej":
        metadata = dict(info.imagej, axes=info.axes)
        with tifffile.TiffWriter(path, imagej=True) as tif:
            tif.write(iter(planes), metadata=metadata, **kwargs)
    else:
        metadata = {"axes": info.axes}
        if info.kind == "ome":
            if size is not None:
                metadata.update(PhysicalSizeY=size[0], PhysicalSizeX=size[1], PhysicalSizeYUnit=info.unit,
                                PhysicalSizeXUnit=info.unit)
            if info.z_spacing is not None:
                metadata.update(PhysicalSizeZ=info.z_spacing, PhysicalSizeZUnit=info.unit)
            if info.time_interval is not None:
                metadata["TimeIncrement"] = info.time_interval
            if info.channel_names:
                metadata["Channel"] = {"Name": info.channel_names}
        with tifffile.TiffWriter(path, bigtiff=needs_bigtiff(shape, dtype), ome=info.kind == "ome") as tif:
            tif.write(iter(planes), metadata=metadata, **kwargs)
    if not info.has_resolution:
        # tifffile always writes XResolution = YResolution = 1; an uncalibrated input had none
        drop_tags(path, (282, 283, 296))


def _write_png(path: Path, plane: np.ndarray, text: str | None) -> None:
    import imageio.v3 as iio
    from PIL import PngImagePlugin

    if plane.dtype not in (np.uint8, np.uint16) or (plane.dtype == np.uint16 and plane.ndim == 3):
        raise ValueError(
            f"PNG cannot hold {'RGB ' if plane.ndim == 3 else ''}{plane.dtype} pixels; "
            "use --dtype uint8 (or uint16 for gray images)"
        )
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text(RECORD_KEY, text)
    iio.imwrite(path, plane, extension=".png", pnginfo=info)


def read_record(path: str | Path) -> dict | None:
    """The settings record that :func:`write_planes` stored in a file, or None when it has none."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                tag = tif.pages[0].tags.get(RECORD_TAG)
                text = tag.value if tag is not None else None
        else:
            from PIL import Image

            with Image.open(path) as image:
                text = getattr(image, "text", {}).get(RECORD_KEY)
        return json.loads(text) if text else None
    except (OSError, ValueError, IndexError, tifffile.TiffFileError):
        return None


def drop_tags(path: Path, codes: Iterable[int]) -> None:
    """Remove the tags ``codes`` from every page's IFD, in place.

    An IFD is a count, fixed-size entries sorted by code, and the offset of the
    next IFD; dropping entries shortens the list in place (the bytes left over
    become unused), so every other offset in the file stays valid.
    """
    codes = set(codes)
    with tifffile.TiffFile(path) as tif:
        byteorder, bigtiff = tif.byteorder, tif.is_bigtiff
        offsets = [page.offset for page in tif.pages]
    count_fmt, entry_size, next_fmt = ("Q", 20, "Q") if bigtiff else ("H", 12, "I")
    with open(path, "r+b") as fh:
        for offset in offsets:
            fh.seek(offset)
            count_size = struct.calcsize(count_fmt)
            (count,) = struct.unpack(byteorder + count_fmt, fh.read(count_size))
            entries = [fh.read(entry_size) for _ in range(count)]
            next_ifd = fh.read(struct.calcsize(next_fmt))
            kept = [e for e in entries if struct.unpack(byteorder + "H", e[:2])[0] not in codes]
            if len(kept) == count:
                continue
            fh.seek(offset)
            fh.write(struct.pack(byteorder + count_fmt, len(kept)) + b"".join(kept) + next_ifd)
            fh.write(b"\0" * (entry_size * (count - len(kept))))


def needs_bigtiff(shape: tuple[int, ...], dtype) -> bool:
    """Whether a plain/OME TIFF of this size must be BigTIFF (32 MiB left for the page directories)."""
    return math.prod(shape) * np.dtype(dtype).itemsize > 2**32 - 2**25


# ---- whole files: training and evaluation ---------------------------------------------------------
def find_images(folder: str | Path) -> list[Path]:
    """Image files below ``folder`` (recursive, sorted); a clear error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, recursively)")
    return files


def read_image(path: str | Path) -> tuple[np.ndarray, bool]:
    """Read a whole image file. Returns (array, is_rgb): (..., Y, X) or (..., Y, X, 3).

    The first series of a TIFF, with the axes :func:`read_info` reports; RGBA
    loses its alpha. Other sample counts raise ``ValueError`` (see :func:`sample_layout`).
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array = series.asarray()
            axes = series.axes
    else:
        from skimage.io import imread

        array = imread(path)
        axes = _other_axes(array)
    is_rgb = sample_layout(path.name, axes, array.shape)
    if is_rgb:
        array = array[..., :3]
    return array, is_rgb


def image_planes(path: str | Path, channels: int) -> list[np.ndarray]:
    """All samples of one file as normalised float32 planes: (Y, X) for 1 channel, (3, Y, X) for RGB.

    Intensities go through :mod:`diinn_napari.intensity`, the code the engine
    uses, so a model trains and is evaluated on what it will see. RGB files
    become luminance for a 1-channel model; a 3-channel model takes RGB files only.
    """
    from .intensity import fit_intensity, to_luminance

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


# ---- the atomic writer --------------------------------------------------------------------------
def current_umask() -> int:
    """The process's file-creation mask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status") as f:  # Linux: no race with other threads creating files
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the classic set-and-restore
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Write a file all at once or not at all: ``with atomic_write(p) as tmp: save(tmp)``.

    The body writes to ``tmp``, a new file in ``path``'s folder (so the final
    rename stays on one file system and is atomic); on success the data is
    flushed to disk (fsync), the file gets the permissions a plain ``open(path,
    "w")`` would give it (0o666 less the umask: not the temporary file's 0o600,
    so a lab's other accounts can read shared weights) and replaces ``path``.
    If the body raises, ``path`` is left as it was and ``tmp`` is removed.
    The folder must exist.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "r+b") as f:  # the data on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
