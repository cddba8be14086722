"""GeoTIFF and multiband TIFF: georeferencing, band meaning and nodata kept; Cloud-Optimized GeoTIFF output.

Asked before :mod:`.tiff`. It reads a single-image TIFF that is
georeferenced (a GeoKeyDirectory, tag 34735) or whose samples are bands
(:func:`~.base.sample_layout`: minisblack with several samples, RGB plus
near-infrared, ...). What it keeps, from the input to the output:

* the CRS (GeoKeyDirectory with its double and ASCII parameters) unchanged;
* the affine transform, scaled by the real size ratio with the same origin:
  ModelPixelScale + ModelTiepoint (each tiepoint moved to its raster position
  on the output grid, so it keeps its world coordinates) or
  ModelTransformation (rotation and shear terms scaled per axis), in the
  file's own raster convention (PixelIsArea: pixel corners; PixelIsPoint:
  pixel centres);
* GDAL_METADATA (band descriptions, scale, offset, colour interpretation;
  band statistics, no longer true of the output, are dropped) and GDAL_NODATA;
* the photometric interpretation, the sample count, ExtraSamples, the
  planar configuration and the band order.

Bands are presented as a leading ``C`` axis (axes ``CYX``), so every band
goes through the gray model with its own intensity fit; colour files are
``YXS`` as elsewhere. ``info.nodata`` is GDAL_NODATA (NaN included) or, for a
float raster without one, None.

Cloud-Optimized GeoTIFF (``info.metadata["cog"]``): the output is written as
a GeoTIFF and then copied by GDAL's own COG driver (through rasterio): tiles
of 256, internal overviews, DEFLATE with a predictor. tifffile writes tiles
and SubIFD pyramids, but not the IFD and data order GDAL's COG validation
asks for, and predictors need imagecodecs; GDAL is the reference COG writer
and reader of the ecosystem. rasterio is needed for ``--cog`` only.
"""

from __future__ import annotations

import html
import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tifffile

from . import record as settings_record
from .base import ImageInfo, register, sample_layout
from .tiff import HEADER_ERRORS, drop_tags


class _QuietGdalTags(logging.Filter):
    """tifffile logs a warning for GDAL tags it cannot parse (e.g. GDAL_NODATA 'nan'); this format reads them itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "GDAL_" not in record.getMessage()


logging.getLogger("tifffile").addFilter(_QuietGdalTags())

GEO_TAGS = {33550: "d", 33922: "d", 34264: "d", 34735: "H", 34736: "d", 34737: "s"}  # code: tifffile dtype
PIXEL_SCALE, TIEPOINT, TRANSFORMATION, GEOKEYS = 33550, 33922, 34264, 34735
GDAL_METADATA, GDAL_NODATA = 42112, 42113
RECORD_ITEM = "DIINN_NAPARI_RECORD"  # the settings record as a GDAL metadata item (what a COG keeps)
_RASTER_TYPE_KEY, _MODEL_TYPE_KEY, _LINEAR_UNITS_KEY = 1025, 1024, 3076
_LINEAR_UNITS = {9001: "m", 9002: "ft", 9003: "US survey ft"}


def geokeys(values) -> dict[int, int]:
    """The short-valued keys of a GeoKeyDirectory (tag 34735 values): {key id: value}."""
    values = [int(v) for v in values]
    keys = {}
    for k in range(values[3] if len(values) >= 4 else 0):
        key, location, _count, value = values[4 + 4 * k: 8 + 4 * k]
        if location == 0:
            keys[key] = value
    return keys


def _tag_values(page, code):
    tag = page.tags.get(code)
    if tag is None:
        return None
    value = tag.value
    return value if isinstance(value, str) else tuple(np.asarray(value).ravel().tolist())


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip("\0").strip()


def parse_nodata(text: str | None) -> float | None:
    """GDAL_NODATA as a float (NaN included), None when absent or not a number."""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def gdal_items(xml: str | None) -> list[ET.Element]:
    """The <Item> elements of a GDAL_METADATA tag."""
    if not xml:
        return []
    try:
        return list(ET.fromstring(xml).iter("Item"))
    except ET.ParseError:
        return []


def colour_interpretation(xml: str | None, count: int) -> list[str | None] | None:
    """GDAL's colour interpretation per sample (lower case, None where not stated), or None if it states none."""
    said: list[str | None] = [None] * count
    for item in gdal_items(xml):
        if item.get("role") == "colorinterp" and item.get("sample", "").isdigit() and int(item.get("sample")) < count:
            said[int(item.get("sample"))] = (item.text or "").strip().lower() or None
    return said if any(said) else None


def output_gdal_metadata(xml: str | None, record: dict | None) -> str | None:
    """The input's GDAL_METADATA without band statistics (they describe the input's pixels), plus the record."""
    root = ET.Element("GDALMetadata")
    for item in gdal_items(xml):
        if not (item.get("name") or "").startswith("STATISTICS_"):
            root.append(item)
    if record is not None:
        ET.SubElement(root, "Item", name=RECORD_ITEM).text = settings_record.encode(record)
    return ET.tostring(root, encoding="unicode") if len(root) else None


def scale_georeference(geo: dict[int, tuple], in_yx: tuple[int, int], out_yx: tuple[int, int],
                       point: bool) -> dict[int, tuple]:
    """The geo tags of an output of ``out_yx`` pixels made from ``in_yx``: same origin, pixels smaller.

    Output pixel centres sit on the input's continuous pixel grid (the
    engine's convention): output column ``I`` is input column
    ``I * rx`` in PixelIsArea coordinates (corners), ``(I + 0.5) * rx - 0.5``
    in PixelIsPoint coordinates (centres), with ``rx`` = input / output width.
    """
    ry, rx = in_yx[0] / out_yx[0], in_yx[1] / out_yx[1]
    cy, cx = (0.5 * ry - 0.5, 0.5 * rx - 0.5) if point else (0.0, 0.0)
    out = dict(geo)
    if PIXEL_SCALE in geo:
        sx, sy, *rest = geo[PIXEL_SCALE]
        out[PIXEL_SCALE] = (sx * rx, sy * ry, *rest)
    if TIEPOINT in geo:
        points = list(geo[TIEPOINT])
        for k in range(0, len(points) - 5, 6):  # (I, J, K, X, Y, Z): raster position to the output grid
            points[k] = (points[k] - cx) / rx
            points[k + 1] = (points[k + 1] - cy) / ry
        out[TIEPOINT] = tuple(points)
    if TRANSFORMATION in geo:
        m = np.asarray(geo[TRANSFORMATION], dtype=np.float64).reshape(4, 4)
        m2 = m.copy()
        m2[:, 0], m2[:, 1] = m[:, 0] * rx, m[:, 1] * ry
        m2[:, 3] = m[:, 3] + m[:, 0] * cx + m[:, 1] * cy
        out[TRANSFORMATION] = tuple(m2.ravel().tolist())
    return out


def _pixel_size(geo: dict[int, tuple]) -> tuple[float, float] | None:
    """(y, x) pixel size in the CRS's units, from ModelPixelScale or the ModelTransformation's columns."""
    if PIXEL_SCALE in geo:
        sx, sy = geo[PIXEL_SCALE][:2]
        return (abs(sy), abs(sx)) if sx and sy else None
    if TRANSFORMATION in geo:
        m = np.asarray(geo[TRANSFORMATION], dtype=np.float64).reshape(4, 4)
        return float(math.hypot(m[0, 1], m[1, 1])), float(math.hypot(m[0, 0], m[1, 0]))
    return None


def affine(info: ImageInfo) -> tuple[float, float, float, float, float, float] | None:
    """The file's raster-to-map transform (a, b, c, d, e, f) as GDAL states it (pixel corners), or None.

    ``X = a * col + b * row + c``, ``Y = d * col + e * row + f``; PixelIsPoint
    files are shifted by half a pixel, as GDAL does.
    """
    geo = info.metadata.get("geo") or {}
    if TRANSFORMATION in geo:
        m = np.asarray(geo[TRANSFORMATION], dtype=np.float64).reshape(4, 4)
        a, b, c, d, e, f = m[0, 0], m[0, 1], m[0, 3], m[1, 0], m[1, 1], m[1, 3]
    elif PIXEL_SCALE in geo and TIEPOINT in geo:
        sx, sy = geo[PIXEL_SCALE][:2]
        i, j, _, x, y, _ = geo[TIEPOINT][:6]
        a, b, c, d, e, f = sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy
    else:
        return None
    if info.metadata.get("point"):
        c, f = c - 0.5 * (a + b), f - 0.5 * (d + e)
    return tuple(float(v) for v in (a, b, c, d, e, f))


def napari_affine(info: ImageInfo) -> np.ndarray | None:
    """A napari layer affine (3 x 3, (row, col) -> (-Y, X)) placing pixel centres at their map position."""
    t = affine(info)
    if t is None:
        return None
    a, b, c, d, e, f = t
    # napari's world y grows downwards like rows: it is minus the map's Y (north up stays up)
    return np.array([[-e, -d, -(f + 0.5 * (d + e))], [b, a, c + 0.5 * (a + b)], [0.0, 0.0, 1.0]])


class GeoPlanes:
    """The planes of a GeoTIFF: its one image decoded once, then ``[c]`` a band or ``[()]`` the (Y, X[, S]) plane."""

    def __init__(self, info: ImageInfo):
        self.info, self.shape, self.dtype = info, info.shape, info.dtype
        self._data: np.ndarray | None = None
        self._closed = False

    def _array(self) -> np.ndarray:
        if self._data is None:
            self._data, _ = GEOTIFF.read_array(self.info.path)
        return self._data

    def __getitem__(self, index) -> np.ndarray:
        if self._closed:
            raise ValueError(f"{self.info.path.name}: the reader is closed")
        index = tuple(int(i) for i in np.atleast_1d(index)) if index != () else ()
        return np.array(self._array()[index])

    def close(self) -> None:
        self._data, self._closed = None, True

    def __enter__(self) -> GeoPlanes:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class GeoTiffFormat:
    """GeoTIFF and multiband TIFF (see the module docstring)."""

    name = "geotiff"
    suffixes = (".tif", ".tiff")  # the same files as TIFF: it is asked first and takes the ones it detects
    holds_stacks = False  # one image: bands are its only axis in front of Y, X
    kinds = ("geotiff",)

    def detect(self, path: Path) -> bool:
        if path.suffix.lower() not in self.suffixes or not path.is_file():
            return False
        try:
            with tifffile.TiffFile(path) as tif:
                if tif.is_imagej or tif.is_ome:
                    return False
                page = tif.pages[0]
                if GEOKEYS in page.tags:
                    return True
                series = tif.series[0]
                samples = int(page.samplesperpixel)
                if samples < 2 or len(series.shape) != 3:
                    return False
                axes = "YXS" if series.axes[-1] == "S" or samples == series.shape[-1] else series.axes
                shape = tuple(series.shape) if axes == "YXS" else (*series.shape[1:], samples)
                interp = colour_interpretation(_text(_tag_values(page, GDAL_METADATA)), samples)
                return sample_layout(path.name, "YXS", shape, photometric=int(page.photometric),
                                     interpretation=interp,
                                     extrasamples=tuple(int(v) for v in page.extrasamples or ())) == "bands"
        except HEADER_ERRORS:  # a damaged header: TIFF's reader names what is wrong
            return False

    def read_info(self, path: Path) -> ImageInfo:
        try:
            with tifffile.TiffFile(path) as tif:
                page, series = tif.pages[0], tif.series[0]
                samples = int(page.samplesperpixel)
                planar = int(page.planarconfig)
                shape = tuple(int(n) for n in series.shape)
                if samples == 1:
                    if len(shape) != 2:
                        raise ValueError(f"a GeoTIFF of one image is read, this one has shape {shape} "
                                         f"(axes {series.axes})")
                    yx = shape
                else:
                    yx = shape[1:] if planar == 2 else shape[:2]
                    if len(shape) != 3:
                        raise ValueError(f"a GeoTIFF of one image is read, this one has shape {shape}")
                geo = {code: _tag_values(page, code) for code in GEO_TAGS if code in page.tags}
                gdal_xml = _text(_tag_values(page, GDAL_METADATA))
                nodata_text = _text(_tag_values(page, GDAL_NODATA))
                photometric = int(page.photometric)
                extrasamples = tuple(int(v) for v in page.extrasamples or ())
                has_resolution = "XResolution" in page.tags and "YResolution" in page.tags
        except tifffile.TiffFileError as err:  # (a ValueError too, but says nothing of the file by itself)
            raise ValueError(f"{path.name}: cannot read this GeoTIFF ({err})") from err
        except ValueError as err:
            raise ValueError(f"{path.name}: {err}") from err
        except HEADER_ERRORS as err:
            raise ValueError(f"{path.name}: cannot read this GeoTIFF ({err})") from err
        dtype = np.dtype(series.dtype)
        interp = colour_interpretation(gdal_xml, samples)
        layout = sample_layout(path.name, "YXS" if samples > 1 else "YX", (*yx, samples) if samples > 1 else yx,
                               photometric=photometric, interpretation=interp, extrasamples=extrasamples)
        if layout == "bands":
            axes, info_shape = "CYX", (samples, *yx)
        elif layout == "colour":
            axes, info_shape = "YXS", (*yx, samples)
        else:
            axes, info_shape = "YX", tuple(yx)
        keys = geokeys(geo[GEOKEYS]) if GEOKEYS in geo else {}
        info = ImageInfo(path, "geotiff", axes, info_shape, dtype)
        info.pixel_size = _pixel_size(geo)
        if info.pixel_size is not None:
            info.unit = "degree" if keys.get(_MODEL_TYPE_KEY) == 2 else _LINEAR_UNITS.get(keys.get(_LINEAR_UNITS_KEY, 9001))
        info.nodata = parse_nodata(nodata_text)
        descriptions = {int(i.get("sample")): (i.text or "").strip() for i in gdal_items(gdal_xml)
                        if i.get("role") == "description" and (i.get("sample") or "").isdigit()}
        if layout == "bands" and descriptions:
            info.channel_names = [descriptions.get(k) or f"band {k + 1}" for k in range(samples)]
        info.metadata.update(geo=geo, gdal_metadata=gdal_xml, gdal_nodata=nodata_text, photometric=photometric,
                             planar=planar, extrasamples=extrasamples, source_yx=tuple(yx),
                             point=keys.get(_RASTER_TYPE_KEY) == 2, has_resolution=has_resolution)
        return info

    def open_planes(self, info: ImageInfo) -> GeoPlanes:
        return GeoPlanes(info)

    def read_array(self, path: Path) -> tuple[np.ndarray, str]:
        """The image with its bands first (``CYX``), or ``YXS`` colour / ``YX`` gray, as :meth:`read_info` says."""
        info = self.read_info(path)
        with tifffile.TiffFile(path) as tif:
            data = tif.series[0].asarray()
        if data.ndim == 3 and info.metadata["planar"] == 2 and info.axes != "CYX":
            data = np.moveaxis(data, 0, -1)
        elif data.ndim == 3 and info.metadata["planar"] != 2 and info.axes == "CYX":
            data = np.moveaxis(data, -1, 0)
        return np.ascontiguousarray(data), info.axes

    def output_name(self, path: Path) -> str:
        return path.name

    def write(self, path: Path, info: ImageInfo, planes: Iterable[np.ndarray], record: dict | None = None) -> None:
        """Write the output image (all its bands at once) with the input's geo tags, updated; COG if asked."""
        meta = info.metadata
        if meta.get("cog"):
            self._write_cog(path, info, planes, record)
            return
        data = np.stack([np.asarray(p) for p in planes]) if info.axes == "CYX" else np.asarray(next(iter(planes)))
        separate = meta.get("planar") == 2 and data.ndim == 3
        if separate and info.axes != "CYX":
            data = np.moveaxis(data, -1, 0)
        elif not separate and info.axes == "CYX":
            data = np.moveaxis(data, 0, -1)
        extratags = []
        geo = meta.get("geo") or {}
        if geo:
            geo = scale_georeference(geo, meta["source_yx"], info.yx, meta.get("point", False))
        for code, values in sorted(geo.items()):
            kind = GEO_TAGS[code]
            extratags.append((code, kind, 0 if kind == "s" else len(values), values, True))
        gdal_xml = output_gdal_metadata(meta.get("gdal_metadata"), record)
        if gdal_xml:
            extratags.append((GDAL_METADATA, "s", 0, gdal_xml, True))
        if meta.get("gdal_nodata"):
            extratags.append((GDAL_NODATA, "s", 0, meta["gdal_nodata"], True))
        if record is not None:
            extratags.append((settings_record.RECORD_TAG, "s", 0, settings_record.encode(record), True))
        samples = data.shape[0] if separate else (data.shape[-1] if data.ndim == 3 else 1)
        kwargs: dict = {"photometric": "rgb" if meta.get("photometric") == 2 and samples >= 3 else "minisblack",
                        "planarconfig": "separate" if separate else "contig", "extratags": extratags}
        extras = meta.get("extrasamples") or ()
        if data.ndim == 3 and extras and len(extras) == samples - (3 if kwargs["photometric"] == "rgb" else 1):
            kwargs["extrasamples"] = extras
        if info.pixel_size is not None and not geo and meta.get("has_resolution"):
            kwargs["resolution"] = (1 / info.pixel_size[1], 1 / info.pixel_size[0])
        with tifffile.TiffWriter(path, bigtiff=data.nbytes > 2**32 - 2**25) as tif:
            tif.write(data, metadata=None, **kwargs)
        if "resolution" not in kwargs:
            drop_tags(path, (282, 283, 296))  # tifffile always writes a resolution of 1; a GeoTIFF's size is its transform

    def _write_cog(self, path: Path, info: ImageInfo, planes: Iterable[np.ndarray], record: dict | None) -> None:
        try:
            import rasterio
            import rasterio.shutil
        except ImportError:
            raise ValueError("--cog writes through GDAL: install rasterio (pip install rasterio, or diinn-napari[geotiff])") from None
        plain = path.with_name(path.name + ".plain.tif")
        try:
            self.write(plain, _without_cog(info), planes, record)
            predictor = "3" if info.dtype.kind == "f" else "2"
            with rasterio.Env(GDAL_NUM_THREADS="2"):
                rasterio.shutil.copy(plain, path, driver="COG", COMPRESS="DEFLATE", PREDICTOR=predictor,
                                     BLOCKSIZE="256", OVERVIEWS="AUTO", RESAMPLING="AVERAGE")
        finally:
            plain.unlink(missing_ok=True)

    def read_record(self, path: Path) -> dict | None:
        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                tag = page.tags.get(settings_record.RECORD_TAG)
                if tag is not None:
                    return settings_record.decode(tag.value)
                for item in gdal_items(_text(_tag_values(page, GDAL_METADATA))):
                    if item.get("name") == RECORD_ITEM:
                        text = item.text or ""
                        for _ in range(3):  # GDAL escapes the item's quotes once more when it copies it (COG)
                            found = settings_record.decode(text)
                            if found is not None:
                                return found
                            text = html.unescape(text)
        except (OSError, ValueError, IndexError, tifffile.TiffFileError):
            return None
        return None


def _without_cog(info: ImageInfo) -> ImageInfo:
    import dataclasses

    return dataclasses.replace(info, metadata={k: v for k, v in info.metadata.items() if k != "cog"})


GEOTIFF = register(GeoTiffFormat(), first=True)
