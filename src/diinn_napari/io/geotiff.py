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
from .tiff import HEADER_ERRORS, _codec_error, drop_tags


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
_READ_BUFFER = 1 << 20  # bytes of strips or tiles read at a time (tifffile reads 256 MiB; it holds ~3x that)
_MASK_SEARCH = 40  # pages looked at for an internal mask: GDAL's overviews and their masks come first at most


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


def _nearest_input(n_in: int, n_out: int) -> np.ndarray:
    """The nearest input pixel of each output pixel on one axis: the engine's rule (``model.grid.nearest_lr_index``).

    Repeated here in integers because this package does not import torch; a test holds the two equal.
    """
    i = np.arange(n_out, dtype=np.int64)
    return np.minimum(((2 * i + 1) * n_in) // (2 * n_out), n_in - 1)


def scale_mask(mask: np.ndarray, out_yx: tuple[int, int]) -> np.ndarray:
    """A (Y, X) mask on the output grid: each output pixel takes its nearest input pixel's value (as nodata does)."""
    (h, w), (H, W) = mask.shape, out_yx
    return mask[np.ix_(_nearest_input(h, H), _nearest_input(w, W))]


def internal_mask_page(tif: tifffile.TiffFile) -> int | None:
    """The page number of the GDAL internal mask of the first image, or None.

    GDAL writes it (``GDAL_TIFF_INTERNAL_MASK``, ``dataset.write_mask``) as an
    IFD with the mask bit of NewSubfileType (4, not reduced), photometric
    "transparency mask", one sample, and the size of the image; 0 means "no data".
    """
    first = tif.pages[0]
    size = (int(first.imagelength), int(first.imagewidth))
    for number in range(1, 1 + _MASK_SEARCH):  # GDAL puts it among the first pages (after overviews at most)
        try:
            page = tif.pages[number]
        except IndexError:
            return None
        subfile = int(getattr(page, "subfiletype", 0) or 0)
        if (subfile & 4 and not subfile & 1 and int(page.photometric) == 4 and int(page.samplesperpixel) == 1
                and (int(page.imagelength), int(page.imagewidth)) == size):
            return number
    return None


def read_band(tif: tifffile.TiffFile, band: int | None) -> np.ndarray:
    """One band (Y, X) of the first page, decoding one strip or tile at a time; ``band=None``: the whole page.

    Separate planes: only that band's strips or tiles are read. Pixel
    interleaved: every strip or tile is read and decoded, and only the band is
    kept, so memory stays about one band, never the scene.
    """
    page = tif.pages[0]
    if band is None:
        return page.asarray()
    separate, _depth, length, width, _contig = (int(n) for n in page.shaped)
    out = np.zeros((length, width), page.dtype)  # a sparse (empty) strip or tile reads as 0 (GDAL: 0 or the nodata)
    count = len(page.dataoffsets)
    per_band = count // separate
    chosen = range(band * per_band, (band + 1) * per_band) if separate > 1 else range(count)
    decodeargs: dict = {"_fullsize": bool(page.is_tiled)}
    if page.compression in {6, 7, 34892, 33007}:  # JPEG (as tifffile's own TiffPage.segments)
        decodeargs.update(jpegtables=page.jpegtables, jpegheader=page.jpegheader)
    fh = tif.filehandle
    offsets = [page.dataoffsets[i] for i in chosen]
    counts = [page.databytecounts[i] for i in chosen]
    for data, index in fh.read_segments(offsets, counts, indices=list(chosen), sort=True, lock=fh.lock,
                                        buffersize=_READ_BUFFER):
        segment, (_s, _d, y, x, _c), _shape = page.decode(data, index, **decodeargs)
        if segment is None:
            continue
        rows, cols = min(segment.shape[1], length - y), min(segment.shape[2], width - x)
        out[y:y + rows, x:x + cols] = segment[0, :rows, :cols, 0 if separate > 1 else band]
    return out


class GeoPlanes:
    """The planes of a GeoTIFF, read one at a time: ``[c]`` one band (``CYX``), ``[()]`` the (Y, X[, S]) plane.

    The file stays open while the reader lives. A band is decoded strip by
    strip (:func:`read_band`), so the scene is never held whole; a colour
    plane is the page. :meth:`data_mask` is the GDAL internal mask.
    """

    def __init__(self, info: ImageInfo):
        self.info, self.shape, self.dtype = info, info.shape, info.dtype
        try:
            self._tif: tifffile.TiffFile | None = tifffile.TiffFile(info.path)
        except HEADER_ERRORS as err:
            raise ValueError(f"{info.path.name}: cannot read this GeoTIFF ({type(err).__name__}: {err})") from err

    def __getitem__(self, index) -> np.ndarray:
        if self._tif is None:
            raise ValueError(f"{self.info.path.name}: the reader is closed")
        index = tuple(int(i) for i in np.atleast_1d(index)) if index != () else ()
        if self.info.axes == "CYX":
            if len(index) != 1 or not 0 <= index[0] < self.shape[0]:
                raise IndexError(f"{self.info.path.name}: band index {index} outside its {self.shape[0]} bands")
            band = index[0]
        elif index:
            raise IndexError(f"{self.info.path.name}: one plane, indexed by (), not {index}")
        else:
            band = None
        try:
            data = read_band(self._tif, band)
        except HEADER_ERRORS as err:
            raise ValueError(f"{self.info.path.name}: plane {index} cannot be read ({type(err).__name__}: {err}); "
                             "the file is damaged") from err
        if band is None and data.ndim == 3 and self.info.metadata.get("planar") == 2:
            data = np.moveaxis(data, 0, -1)  # a colour plane stored as separate planes: samples last
        return np.ascontiguousarray(data)

    def data_mask(self) -> np.ndarray | None:
        """The (Y, X) bool mask of pixels holding data (GDAL internal mask, for every band), or None if it has none."""
        number = self.info.metadata.get("internal_mask")
        if number is None or self._tif is None:
            return None
        try:
            return np.asarray(self._tif.pages[number].asarray()) != 0
        except HEADER_ERRORS as err:
            raise ValueError(f"{self.info.path.name}: its internal mask cannot be read ({type(err).__name__}: {err}); "
                             "the file is damaged") from err

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None

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
                if GEOKEYS in page.tags or internal_mask_page(tif) is not None:
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
        path = Path(path)
        try:
            with tifffile.TiffFile(path) as tif:
                page, series = tif.pages[0], tif.series[0]
                samples = int(page.samplesperpixel)
                planar = int(page.planarconfig)
                shape = tuple(int(n) for n in series.shape)
                axes_read = series.axes
                geo = {code: _tag_values(page, code) for code in GEO_TAGS if code in page.tags}
                gdal_xml = _text(_tag_values(page, GDAL_METADATA))
                nodata_text = _text(_tag_values(page, GDAL_NODATA))
                photometric = int(page.photometric)
                extrasamples = tuple(int(v) for v in page.extrasamples or ())
                has_resolution = "XResolution" in page.tags and "YResolution" in page.tags
                mask_page = internal_mask_page(tif)
                dtype = np.dtype(series.dtype)
                codec_error = _codec_error(page, path.name)
                if codec_error is None and mask_page is not None:
                    codec_error = _codec_error(tif.pages[mask_page], path.name)
        except HEADER_ERRORS as err:  # tifffile's errors say nothing of the file by themselves
            raise ValueError(f"{path.name}: cannot read this GeoTIFF ({type(err).__name__}: {err})") from err
        if codec_error:
            raise ValueError(codec_error)
        if len(shape) != (2 if samples == 1 else 3):
            raise ValueError(f"{path.name}: a GeoTIFF of one image is read, this one has shape {shape} "
                             f"(axes {axes_read})")
        yx = shape if samples == 1 else (shape[1:] if planar == 2 else shape[:2])
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
        if layout == "bands":  # GDAL's band descriptions; "band 1", "band 2", ... where a band has none
            info.channel_names = [descriptions.get(k) or f"band {k + 1}" for k in range(samples)]
        info.metadata.update(geo=geo, gdal_metadata=gdal_xml, gdal_nodata=nodata_text, photometric=photometric,
                             planar=planar, extrasamples=extrasamples, source_yx=tuple(yx),
                             point=keys.get(_RASTER_TYPE_KEY) == 2, has_resolution=has_resolution,
                             internal_mask=mask_page, mask_source=str(path) if mask_page is not None else None)
        return info

    def open_planes(self, info: ImageInfo) -> GeoPlanes:
        return GeoPlanes(info)

    def read_array(self, path: Path) -> tuple[np.ndarray, str]:
        """The image with its bands first (``CYX``), or ``YXS`` colour / ``YX`` gray, as :meth:`read_info` says.

        Band by band into one array: the scene is held once.
        """
        info = self.read_info(Path(path))
        with GeoPlanes(info) as planes:
            if info.axes != "CYX":
                return planes[()], info.axes
            data = np.empty(info.shape, info.dtype)
            for band in range(info.shape[0]):
                data[band] = planes[band]
        return data, info.axes

    def read_mask(self, path: Path) -> np.ndarray | None:
        """The (Y, X) bool mask of pixels holding data (the GDAL internal mask), or None if the file has none."""
        with GeoPlanes(self.read_info(Path(path))) as planes:
            return planes.data_mask()

    def output_name(self, path: Path) -> str:
        return path.name

    def write(self, path: Path, info: ImageInfo, planes: Iterable[np.ndarray], record: dict | None = None) -> None:
        """Write the output image with the input's geo tags (updated) and internal mask (scaled); COG if asked.

        Separate band planes are written as they come (one band in memory);
        pixel-interleaved bands are gathered into the one output array.
        """
        meta = info.metadata
        if meta.get("cog"):
            self._write_cog(path, info, planes, record)
            return
        separate = meta.get("planar") == 2 and len(info.shape) == 3
        if info.axes == "CYX" and separate:  # written band by band as the planes come: one band in memory at a time
            data, shape = (np.asarray(p, info.dtype) for p in planes), tuple(info.shape)
        elif info.axes == "CYX":  # pixel interleaved: every band is needed for each strip; filled into one array
            data = np.empty((*info.yx, info.shape[0]), info.dtype)
            for band, plane in enumerate(planes):
                data[..., band] = plane
            shape = data.shape
        else:
            data = np.asarray(next(iter(planes)))
            data = np.moveaxis(data, -1, 0) if separate else data
            shape = data.shape
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
        samples = shape[0] if separate else (shape[-1] if len(shape) == 3 else 1)
        kwargs: dict = {"photometric": "rgb" if meta.get("photometric") == 2 and samples >= 3 else "minisblack",
                        "planarconfig": "separate" if separate else "contig", "extratags": extratags}
        extras = meta.get("extrasamples") or ()
        if len(shape) == 3 and extras and len(extras) == samples - (3 if kwargs["photometric"] == "rgb" else 1):
            kwargs["extrasamples"] = extras
        if info.pixel_size is not None and not geo and meta.get("has_resolution"):
            kwargs["resolution"] = (1 / info.pixel_size[1], 1 / info.pixel_size[0])
        mask = self._output_mask(info)
        nbytes = math.prod(shape) * info.dtype.itemsize
        with tifffile.TiffWriter(path, bigtiff=nbytes > 2**32 - 2**25) as tif:
            tif.write(data, shape=shape, dtype=info.dtype, metadata=None, **kwargs)
            if mask is not None:  # GDAL's internal mask: the mask bit of NewSubfileType, 1 bit per pixel, deflated
                tif.write(mask, subfiletype=4, photometric=4, compression="zlib", metadata=None)
        if "resolution" not in kwargs:
            drop_tags(path, (282, 283, 296))  # tifffile always writes a resolution of 1; a GeoTIFF's size is its transform

    def _output_mask(self, info: ImageInfo) -> np.ndarray | None:
        """The output's internal mask: the input's, each output pixel taking its nearest input pixel's value."""
        source = info.metadata.get("mask_source")
        if source is None:
            return None
        mask = self.read_mask(Path(source))
        if mask is None:
            raise ValueError(f"{Path(source).name}: its internal mask is gone (the file changed while it was "
                             "processed); run again")
        return scale_mask(mask, info.yx)

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
