"""TIFF through tifffile: ImageJ hyperstacks, OME-TIFF and plain (multi-page) TIFF.

The output follows the input: ImageJ stays ImageJ (with its version string
and Z ``spacing``), OME stays OME (physical sizes, time increment, channel
names), NewSubfileType and the alpha channel's ExtraSamples are kept, and an
input without resolution tags gets none. The settings record is a private
tag of the first page.
"""

from __future__ import annotations

import logging
import math
import struct
import zlib
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tifffile

from . import record as settings_record
from .base import ImageInfo, drop_invalid_sizes, register, sample_layout

# ImageJ metadata that stays valid when only X and Y are resampled
IMAGEJ_KEEP = ("unit", "spacing", "finterval", "fps", "Labels", "Ranges", "LUTs", "mode", "Info", "Properties", "loop",
               "min", "max")
_RESUNIT_NAMES = {2: "inch", 3: "cm"}
# OME length units in metres (the ones microscopes write), to bring PhysicalSizeZ into the unit of X
_OME_METRES = {"m": 1.0, "cm": 1e-2, "mm": 1e-3, "µm": 1e-6, "um": 1e-6, "micron": 1e-6, "nm": 1e-9, "Å": 1e-10,
               "pm": 1e-12}


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


class TiffPlanes:
    """Array-like over a TIFF's planes: ``reader[index]`` reads one YX(S) plane.

    The file stays open while the reader lives (use it as a context manager).
    How one plane is read depends on the layout, so that the I/O per plane
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
        self._cache: tuple[int, np.ndarray] | None = None  # (page number, its decoded data)
        self._memmap: np.ndarray | None = None
        self._tif: tifffile.TiffFile | None = tifffile.TiffFile(info.path)
        try:
            series = self._tif.series[0]
            self._series = series
            page_shape = tuple(series.keyframe.shape)
            self._page_size = math.prod(page_shape)
            self._plane_size = math.prod(info.plane_shape)
            if len(series) == info.n_planes and page_shape == tuple(info.plane_shape):
                self._mode = "page"
            elif len(series) * self._page_size == math.prod(self.shape) and all(p is not None for p in series.pages):
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
        except ValueError:
            self.close()
            raise
        except HEADER_ERRORS as err:
            self.close()
            raise ValueError(f"{info.path.name}: cannot read this TIFF ({type(err).__name__}: {err})") from err
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the file (the reader cannot read after this)."""
        self._cache = self._memmap = None
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def __enter__(self) -> TiffPlanes:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getitem__(self, index: tuple[int, ...]) -> np.ndarray:
        if self._tif is None:
            raise ValueError(f"{self.info.path.name}: the reader is closed")
        index = tuple(int(i) for i in index)
        try:
            return self._read(index)
        except HEADER_ERRORS as err:
            raise ValueError(f"{self.info.path.name}: plane {index} cannot be read ({type(err).__name__}: {err}); "
                             "the file is damaged") from err

    def _read(self, index: tuple[int, ...]) -> np.ndarray:
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


# what tifffile raises, directly or from the struct, zlib and numpy calls under it, on a damaged header or data
HEADER_ERRORS = (tifffile.TiffFileError, ValueError, IndexError, KeyError, OSError, AttributeError, TypeError,
                 RuntimeError, struct.error, EOFError, OverflowError, MemoryError, zlib.error)


class _Refused(ValueError):
    """A TIFF that opens but cannot be processed as it is (planes missing, an unknown codec): the message says why."""


class _TiffLog(logging.Handler):
    """Collects what tifffile logs while a file is opened (it logs, not raises, what it repaired or guessed)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> _TiffLog:
        logger = logging.getLogger("tifffile")
        logger.addHandler(self)
        self._propagate, logger.propagate = logger.propagate, False  # said by us, in the file's result
        return self

    def __exit__(self, *exc) -> None:
        logger = logging.getLogger("tifffile")
        logger.removeHandler(self)
        logger.propagate = self._propagate


def _codec_error(page, name: str) -> str | None:
    """Why ``page``'s compression cannot be decoded here, or None when it can."""
    code = page.compression
    try:
        tifffile.TIFF.DECOMPRESSORS[code]
    except KeyError as err:
        label = f"{getattr(code, 'name', code)} ({int(code)})"
        if "imagecodecs" in str(err):
            return f"{name}: its compression {label} needs the imagecodecs package: pip install imagecodecs"
        return f"{name}: unsupported compression {label}; save it uncompressed or as LZW/Deflate/ZSTD"
    return None


def _check_complete(tif: tifffile.TiffFile, series, info: ImageInfo, log: list[str]) -> None:
    """Refuse a file whose planes are not all there (truncated, an OME plane count above its pages, zero planes)
    or not decodable; follow an OME plane count below the pages with a warning."""
    name = info.path.name
    if 0 in info.shape or info.n_planes == 0:
        raise _Refused(f"{name} holds no planes (shape {tuple(info.shape)}); nothing to process")
    size = info.path.stat().st_size
    if info.kind == "imagej":
        images = (tif.imagej_metadata or {}).get("images")
        if isinstance(images, int) and images > info.n_planes:
            raise _Refused(f"{name} is truncated: its ImageJ metadata says {images} planes, only {info.n_planes} "
                           f"can be read from its {size} bytes; {images - info.n_planes} plane(s) are missing")
    pages = list(series.pages)
    missing = sum(page is None for page in pages)
    if missing:
        raise _Refused(f"{name}: its metadata describes {len(pages)} pages (shape {tuple(info.shape)}), "
                       f"{missing} of them are not in the file; the file is truncated or its OME metadata is wrong")
    if info.kind == "ome" and len(tif.series) == 1 and len(tif.pages) > len(pages):
        info.warnings.append(f"{name}: its OME metadata describes {info.n_planes} planes but the file has "
                             f"{len(tif.pages)} pages; following the OME metadata (pages after "
                             f"{len(pages)} are not read)")
    for message in log:
        text = message.split("> ", 1)[-1]
        if "missing" in text or "invalid page offset" in text:
            raise _Refused(f"{name}: {text}; the file is truncated or damaged")
        if "expected" not in text:  # what tifffile repaired or guessed, said with the file's result
            info.warnings.append(f"{name}: tifffile: {text}")
    error = _codec_error(series.keyframe, name)
    if error:
        raise _Refused(error)
    # every plane's bytes must be in the file: a cut file is refused here, before any work or partial file
    if series.dataoffset is not None and len(pages) * math.prod(series.keyframe.shape) != math.prod(info.shape):
        end = series.dataoffset + math.prod(info.shape) * info.dtype.itemsize
        if end > size:
            raise _Refused(f"{name} is truncated: its pixel data ends at byte {end}, the file has {size} bytes")
    for number, page in enumerate(pages):
        ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts)]
        if ends and max(ends) > size:
            raise _Refused(f"{name} is truncated: plane data of page {number + 1} of {len(pages)} ends at byte "
                           f"{max(ends)}, the file has {size} bytes")
        if getattr(page, "compression", 1) != series.keyframe.compression:
            error = _codec_error(page, name)
            if error:
                raise _Refused(error)


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


def _gray_samples(axes: str, photometric: int) -> bool:
    """Samples per pixel that the file calls gray (minisblack / miniswhite): bands, whatever their number."""
    return axes.endswith("S") and photometric in (0, 1)


class TiffFormat:
    """ImageJ, OME and plain TIFF (the ``ImageFormat`` of ``.tif`` / ``.tiff`` files)."""

    name = "tiff"
    suffixes = (".tif", ".tiff")
    holds_stacks = True
    kinds = ("imagej", "ome", "tiff")

    def detect(self, path: Path) -> bool:
        return path.suffix.lower() in self.suffixes and not path.is_dir()

    def read_info(self, path: Path) -> ImageInfo:
        try:
            with _TiffLog() as log, tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                info = ImageInfo(path, "tiff", series.axes, tuple(series.shape), np.dtype(series.dtype))
                page = tif.pages[0]
                photometric = int(page.photometric)
                meta = info.metadata
                meta["extrasamples"] = tuple(int(v) for v in getattr(page, "extrasamples", ()) or ())
                if "NewSubfileType" in page.tags:
                    meta["subfiletype"] = int(page.tags["NewSubfileType"].value)
                meta["has_resolution"] = "XResolution" in page.tags and "YResolution" in page.tags
                if meta["has_resolution"]:
                    unit = int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 1
                    meta["resolution_unit"] = unit
                    xres, yres = (_rational(page.tags[t].value) for t in ("XResolution", "YResolution"))
                    if xres > 0 and yres > 0 and not (xres == 1 and yres == 1):
                        info.pixel_size = (1 / yres, 1 / xres)
                        info.unit = _RESUNIT_NAMES.get(unit)
                if tif.is_ome:
                    info.kind = "ome"
                    _read_ome(tif.ome_metadata, info)
                elif tif.is_imagej:
                    info.kind = "imagej"
                    ij = tif.imagej_metadata or {}
                    meta["imagej"] = {k: ij[k] for k in IMAGEJ_KEEP + ("ImageJ",) if k in ij}
                    info.unit = ij.get("unit", info.unit)
                    info.z_spacing = ij.get("spacing")
                    info.time_interval = ij.get("finterval")
                _check_complete(tif, series, info, log.messages)
        except _Refused:
            raise
        except HEADER_ERRORS as err:
            raise ValueError(f"{path.name}: cannot read this TIFF ({err})") from err
        # Plain multiband TIFFs are read by the GeoTIFF format (io.geotiff), which is asked first. Samples that
        # the file calls gray (minisblack / miniswhite) are bands even when there are 3 or 4 of them: read as
        # RGB(A) they would go through the colour model with the fourth band taken for alpha.
        gray_samples = _gray_samples(info.axes, photometric)
        if gray_samples or sample_layout(path.name, info.axes, info.shape) == "bands":
            raise ValueError(f"{path.name}: {info.shape[-1]} {'gray ' if gray_samples else ''}samples per pixel in "
                             "this stack; only gray pixels, RGB (3) and RGBA (4) colour are read "
                             "from ImageJ, OME and multi-page TIFF (save the bands as a channel axis)")
        drop_invalid_sizes(info)
        if info.pixel_size is None:
            info.metadata["has_resolution"] = False  # an invalid calibration is not written back
        imagej = info.metadata.get("imagej")
        if imagej is not None:  # the ImageJ keys are written back as they are: no invalid size among them
            if info.z_spacing is None:
                imagej.pop("spacing", None)
            if info.time_interval is None:
                imagej.pop("finterval", None)
        return info

    def open_planes(self, info: ImageInfo) -> TiffPlanes:
        return TiffPlanes(info)

    def read_array(self, path: Path) -> tuple[np.ndarray, str]:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array, axes = series.asarray(), series.axes
            if _gray_samples(axes, int(tif.pages[0].photometric)):  # bands, one gray plane each
                array, axes = np.moveaxis(array, -1, -3), axes[:-3] + "C" + axes[-3:-1]
            return array, axes

    def output_name(self, path: Path) -> str:
        return path.name

    def write(self, path: Path, info: ImageInfo, planes: Iterable[np.ndarray], record: dict | None = None) -> None:
        """Write planes frame by frame as ``info`` describes (its kind, shape, dtype, sizes, metadata)."""
        meta = info.metadata
        shape, dtype, size = tuple(info.shape), np.dtype(info.dtype), info.pixel_size
        extratags = []
        if record is not None:
            extratags.append((settings_record.RECORD_TAG, "s", 0, settings_record.encode(record), True))
        if meta.get("subfiletype") is not None:  # tifffile writes NewSubfileType only when non-zero: add it
            extratags.append((254, "I", 1, meta["subfiletype"], False))
        kwargs: dict = {"shape": shape, "dtype": dtype, "photometric": "rgb" if info.rgb else "minisblack",
                        "extratags": extratags}
        if info.rgb and shape[-1] == 4:
            kwargs["extrasamples"] = meta.get("extrasamples") or ("unassalpha",)
        if size is not None and info.kind != "ome":
            kwargs["resolution"] = (1 / size[1], 1 / size[0])
            if info.kind != "imagej":
                kwargs["resolutionunit"] = meta.get("resolution_unit") or 1
        if info.kind == "imagej":
            imagej = dict(meta.get("imagej", {}), axes=info.axes)
            if info.z_spacing is not None:
                imagej["spacing"] = info.z_spacing
            labels = imagej.get("Labels")
            if labels is not None and len(labels) != info.n_planes:  # one label per plane: no longer matches
                del imagej["Labels"]
            with tifffile.TiffWriter(path, imagej=True) as tif:
                tif.write(iter(planes), metadata=imagej, **kwargs)
        else:
            metadata: dict = {"axes": info.axes}
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
        if not meta.get("has_resolution", True):
            # tifffile always writes XResolution = YResolution = 1; an uncalibrated input had none
            drop_tags(path, (282, 283, 296))

    def read_record(self, path: Path) -> dict | None:
        try:
            with tifffile.TiffFile(path) as tif:
                tag = tif.pages[0].tags.get(settings_record.RECORD_TAG)
                return settings_record.decode(tag.value if tag is not None else None)
        except (OSError, ValueError, IndexError, tifffile.TiffFileError):
            return None


TIFF = register(TiffFormat())
