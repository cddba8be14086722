"""OME-Zarr (NGFF 0.4 on zarr v2, 0.5 on zarr v3): read level 0, write a multiscale image plane by plane.

Reading: the first multiscale image of a group, its level 0 (the full
resolution), its axes (any valid subset of t, c, z, y, x, in the spec's
order), the scale and translation of level 0 (the multiscale's own
transformations applied on top), units and the omero channels. A
bioformats2raw container (``"bioformats2raw.layout": 3``) holds images
``0``, ``1``, ... : :meth:`OmeZarrFormat.images` lists them and the batch
processes each as its own input, written to ``<container>_<n>.ome.zarr``.

Writing (:class:`PyramidWriter`): planes arrive one at a time (or as
regions); level 0 is written as it comes and every lower level (Y and X
halved by a 2 x 2 mean, an antialiased box filter, until the larger side is
512 pixels or less) is made from the plane in the same pass, so no second
read of level 0 and never a whole volume in memory. The scale and
translation of every level follow the pixel-centre rule of the napari
overlay (:func:`diinn_napari.settings.overlay_placement`). Axes, units and
omero channels are kept; the settings record is the image attribute
``"diinn-napari"``. zarr v2 stores get NGFF 0.4 metadata, zarr v3 stores 0.5.

zarr is imported only when a store is opened or written (``pip install
'diinn-napari[zarr]'``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import os
import struct
import sys
import threading
import weakref
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..settings import overlay_placement
from . import record as settings_record
from .atomic import fsync_file, fsync_folder
from .base import ImageInfo, register

KIND = "ome-zarr"
SMALLEST = 512  # pyramid levels stop once the larger of Y and X is at most this
DEFAULT_CHUNK = 1024  # level-0 chunk side in Y and X for outputs of non-zarr inputs
BLOCK_CHUNK = 512  # the same for a BlockStore (one block in memory at a time: its working set follows this)
MIN_LEVEL_CHUNK = 64  # a BlockStore's lower levels: chunk sides no smaller than this (owned_level_chunks)
AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
# NGFF units are UDUNITS-2 names; ImageInfo.unit uses the short symbols TIFF and the rest of the package use
_TO_NGFF = {"µm": "micrometer", "um": "micrometer", "micron": "micrometer", "nm": "nanometer", "mm": "millimeter",
            "cm": "centimeter", "m": "meter", "Å": "angstrom", "pm": "picometer", "inch": "inch", "s": "second",
            "ms": "millisecond", "min": "minute", "h": "hour"}
_FROM_NGFF = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm", "meter": "m",
              "angstrom": "Å", "picometer": "pm", "inch": "inch"}


MMAP_THRESHOLD = 128 << 10  # glibc's initial mmap threshold, kept fixed by lean_heap
TRIM_THRESHOLD = 128 << 10  # glibc's default heap-top trim threshold, restored by lean_heap


def lean_heap() -> bool:
    """Keep glibc's malloc from holding freed block-sized buffers: less peak memory, more system CPU (opt-in).

    glibc raises its mmap threshold each time a large mapped buffer is freed
    (from 128 KiB up to 32 MiB), after which such buffers come from the heap
    and stay resident once freed: a run over thousands of blocks keeps a few
    windows' worth of freed temporaries (query arrays, float32 tiles, zarr's
    codec buffers) on top of its working set. This keeps the threshold at its
    initial 128 KiB (and the heap-top trim threshold at its default), so
    every buffer of that size or more is unmapped when freed; the price is the
    page faults of mapping fresh pages each time. Process-wide and for good,
    so nothing calls it for you: call it once before a run (the memory
    benchmark's ``--lean-heap``), or set ``MALLOC_MMAP_THRESHOLD_=131072`` in
    the environment. Measured (docs/omezarr.md, "Memory benchmark"): an
    8192 x 8192 uint8 result grew by 4.2-4.7 MiB with it, 6.4-7.6 MiB without
    (before :func:`write_here`; since, 0.8-3.7 MiB without it);
    but the bundled model on the CPU took 26 % more CPU time with it (19.3-19.7
    s against 15.3-15.5 s for a 1024 x 1024 block-store result: its decoder's
    2 MiB activations are then mapped and unmapped for every 2048 queries).
    Linux/glibc only; returns whether the thresholds were set. A
    ``MALLOC_MMAP_THRESHOLD_`` already in the environment is left alone.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        # M_MMAP_THRESHOLD = -3; M_TRIM_THRESHOLD = -1 back to its 128 KiB default, which glibc doubles along with
        # the dynamic threshold: raised before this call (imports, a model load) it would keep that much free
        # memory at the heap's top resident
        return bool(libc.mallopt(-3, MMAP_THRESHOLD)) and bool(libc.mallopt(-1, TRIM_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each call at once in the thread that submits it (asyncio's default executor must be a
    ThreadPoolExecutor; this one starts no thread)."""

    def submit(self, fn, /, *args, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 (handed to the awaiting coroutine, as a pool would)
            future.set_exception(err)
        return future


def write_here(array, selection: tuple, value: np.ndarray) -> None:
    """``array[selection] = value``, with zarr's chunk encoding and file writes in this thread.

    zarr 3 encodes each chunk (and writes its file) in a thread of its event
    loop's shared pool (``asyncio.to_thread``), up to six threads here, each
    with a glibc malloc arena of its own that keeps the chunk and codec buffers
    it freed; over thousands of blocks more of the pool takes turns and the
    process grows. Measured through the widget (``benchmarks/bench_widget_ooc.py``,
    two runs side by side): an 8192 x 8192 uint8 store run's peak RSS grew
    6.4 MiB this way against 11.4 MiB, at 0.97 times the CPU time. So a local
    store's writes run the same coroutine
    (``AsyncArray.setitem``) in a short-lived event loop of the calling
    thread whose executor runs each call inline. Other stores, or a caller
    inside a running event loop (a notebook's), take zarr's own path.
    """
    loop = _inline_loop(array)
    if loop is None:
        array[selection] = value
        return
    try:
        loop.run_until_complete(array.async_array.setitem(selection, value))
    finally:
        loop.close()


def read_here(array, selection) -> np.ndarray:
    """``array[selection]`` (basic indexing: integers, slices), with zarr's file reads and chunk decoding in this
    thread, as :func:`write_here` writes.

    napari reads the displayed level's region and the thumbnail level of a
    layer over a store each time the layer is refreshed; through zarr's pool
    those reads left their freed chunk buffers in the pool threads' malloc
    arenas, and the process grew with the refreshes
    (``benchmarks/bench_layer_reads.py``: an 8192 x 8192 uint8 store layer added and refreshed 20 times,
    10.8-11.5 MiB through zarr's pool, 6.5 MiB here).
    """
    loop = _inline_loop(array)
    if loop is None:
        return np.asarray(array[selection])
    try:
        return np.asarray(loop.run_until_complete(array.async_array.getitem(selection)))
    finally:
        loop.close()


def _inline_loop(array) -> asyncio.AbstractEventLoop | None:
    """A new event loop of this thread whose executor runs each call inline, for ``array`` (a zarr array) in a local
    store; None (take zarr's own path) for other stores, or when an event loop is running in this thread."""
    zarr = _zarr()
    try:
        asyncio.get_running_loop()
        return None
    except RuntimeError:
        pass
    if not isinstance(getattr(array, "store", None), zarr.storage.LocalStore):
        return None
    loop = asyncio.new_event_loop()
    loop.set_default_executor(_InlineExecutor(max_workers=1))
    return loop


def _zarr():
    try:
        import zarr
    except ImportError as err:
        raise ImportError("OME-Zarr needs zarr 3: pip install 'diinn-napari[zarr]'") from err
    return zarr


def ngff_unit(unit: str | None) -> str | None:
    """The NGFF (UDUNITS-2) name of a unit symbol; names already valid pass through."""
    if unit is None:
        return None
    return _TO_NGFF.get(unit, unit)


def _read_attrs(path: Path) -> tuple[dict | None, int | None]:
    """A group's attributes and zarr format (2 or 3) from its JSON files, without importing zarr."""
    try:
        if (path / "zarr.json").is_file():
            meta = json.loads((path / "zarr.json").read_text())
            if meta.get("node_type") != "group":
                return None, None
            return meta.get("attributes", {}), 3
        if (path / ".zgroup").is_file():
            attrs = json.loads((path / ".zattrs").read_text()) if (path / ".zattrs").is_file() else {}
            return attrs, 2
    except (OSError, ValueError):
        return None, None
    return None, None


def _ome(attrs: dict) -> dict:
    """The OME part of a group's attributes: ``attrs["ome"]`` in 0.5, the attributes themselves in 0.4."""
    return attrs.get("ome", attrs) if isinstance(attrs.get("ome"), dict) else attrs


def _transforms(transforms: list[dict] | None, n: int) -> tuple[list[float], list[float]]:
    scale, translation = [1.0] * n, [0.0] * n
    for t in transforms or []:
        if t.get("type") == "scale" and "scale" in t:
            scale = [float(v) for v in t["scale"]]
        elif t.get("type") == "translation" and "translation" in t:
            translation = [float(v) for v in t["translation"]]
        elif t.get("type") not in ("identity", None):
            raise ValueError(f"coordinate transformation {t.get('type')!r} (only scale and translation are supported)")
    return scale, translation


def level0_transform(multiscale: dict, n: int) -> tuple[list[float], list[float]]:
    """Scale and translation of level 0: its own, then the multiscale's (NGFF applies them in that order)."""
    scale, translation = _transforms(multiscale["datasets"][0].get("coordinateTransformations"), n)
    outer_scale, outer_translation = _transforms(multiscale.get("coordinateTransformations"), n)
    scale = [s * o for s, o in zip(scale, outer_scale)]
    translation = [t * o + ot for t, o, ot in zip(translation, outer_scale, outer_translation)]
    return scale, translation


def _axes(multiscale: dict, ndim: int, name: str) -> list[dict]:
    axes = multiscale.get("axes")
    if axes is None:  # NGFF 0.3 and older: 5D tczyx; fewer axes drop from the front
        axes = [{"name": a} for a in "tczyx"[5 - ndim:]]
    axes = [{"name": a} if isinstance(a, str) else dict(a) for a in axes]
    names = "".join(a["name"].lower() for a in axes)
    if len(axes) != ndim or not names.endswith("yx") or any(a not in "tczyx" for a in names) or len(set(names)) != ndim:
        raise ValueError(f"{name}: axes {names!r} for an array of {ndim} dimensions; DIINN reads images with axes "
                         "that are a subset of t, c, z, y, x ending in y, x")
    if names != "".join(a for a in "tczyx" if a in names):
        raise ValueError(f"{name}: axes {names!r} are not in the NGFF order t, c, z, y, x")
    return axes


class OmeZarrPlanes:
    """Array-like over level 0's planes: ``reader[index]`` reads one (Y, X) plane (its chunks only)."""

    def __init__(self, info: ImageInfo):
        self.info, self.shape, self.dtype = info, info.shape, info.dtype
        group = _zarr().open_group(str(info.path), mode="r")
        self._array = group[info.metadata["ngff"]["dataset"]]

    def __getitem__(self, index: tuple[int, ...]) -> np.ndarray:
        return np.asarray(self._array[tuple(int(i) for i in index)])

    def region(self, index: tuple[int, ...], ys: slice, xs: slice) -> np.ndarray:
        """One window of one plane (a cluster worker reads no more than its block needs)."""
        return np.asarray(self._array[tuple(int(i) for i in index) + (ys, xs)])

    def close(self) -> None:
        self._array = None

    def __enter__(self) -> OmeZarrPlanes:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pyramid_shapes(yx: tuple[int, int], smallest: int = SMALLEST) -> list[tuple[int, int]]:
    """(Y, X) of every level: level 0, then each halved (rounding up) until the larger side is <= ``smallest``."""
    shapes = [tuple(int(n) for n in yx)]
    while max(shapes[-1]) > smallest and min(shapes[-1]) > 1:
        y, x = shapes[-1]
        shapes.append(((y + 1) // 2, (x + 1) // 2))
    return shapes


def halve(plane: np.ndarray) -> np.ndarray:
    """Y and X halved by the mean of each 2 x 2 block (an odd edge row or column averages what it has).

    float32 for 8- and 16-bit integers and float32 (exact for the integers:
    a sum of four fits float32's mantissa), float64 otherwise. Four strided
    quarter-size sums, so the working memory is about one output level, not a
    float copy of the input.
    """
    data = np.asarray(plane)
    wide = data.dtype == np.float64 or (data.dtype.kind in "iu" and data.dtype.itemsize > 2)
    work = np.float64 if wide else np.float32
    y, x = data.shape[-2:]
    if y % 2 or x % 2:  # edge-replicate to even sizes: the last block's mean is over its real pixels only
        data = np.pad(data, [(0, 0)] * (data.ndim - 2) + [(0, y % 2), (0, x % 2)], mode="edge")
    total = data[..., 0::2, 0::2].astype(work)
    total += data[..., 1::2, 0::2]
    total += data[..., 0::2, 1::2]
    total += data[..., 1::2, 1::2]
    total *= work(0.25)
    return total


def _cast(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind in "iub":
        info = np.iinfo(dtype) if dtype.kind != "b" else None
        data = np.rint(data)
        if info is not None:
            data = np.clip(data, info.min, info.max)
    return data.astype(dtype)


def _input_letters(info: ImageInfo) -> str:
    """An image's axes as NGFF letters in its own order: colour samples as c, tifffile's Q and I as z."""
    letters = info.axes.lower()
    name = info.path.name
    if info.rgb and "c" not in letters and letters.count("s") == 1:
        letters = letters.replace("s", "c")  # colour samples: NGFF's c axis (see colour_axis)
    elif "s" in letters:
        raise ValueError(f"{name}: samples (axes {info.axes}) that are neither RGB colour nor the only channel axis "
                         "have no OME-Zarr axis; write them as TIFF (--format tiff), or save the bands as a C axis")
    letters = letters.replace("q", "z").replace("i", "z")
    if any(a not in "tczyx" for a in letters) or len(set(letters)) != len(letters):
        raise ValueError(f"{name}: axes {info.axes} cannot be written as OME-Zarr axes t, c, z, y, x "
                         "(each at most once); write it as TIFF (--format tiff)")
    if not letters.endswith("yxc" if info.rgb else "yx"):
        raise ValueError(f"{name}: axes {info.axes} do not end in Y, X; write it as TIFF (--format tiff)")
    return letters


def stored_order(info: ImageInfo) -> tuple[int, ...]:
    """For each axis of the stored level 0 (NGFF's order t, c, z, y, x), the axis of ``info.shape`` it holds.

    An image whose axes are in another order (tifffile's "ZCYX", "CTYX") is
    stored with them permuted into NGFF's; RGB / RGBA samples (last in
    ``info.shape``) go to the c axis. Planes are still written and read by
    their index in ``info``'s leading axes (:meth:`PyramidWriter.key` maps it),
    so the engine and the batch never see the permutation. An image described
    by NGFF axes already (an OME-Zarr input, the napari writer's) is stored in
    their order, its colour samples moved to the c axis (:func:`colour_axis`).
    """
    n = len(info.shape)
    ngff = info.metadata.get("ngff")
    if ngff is not None and len(ngff["axes"]) == n:
        order = list(range(n))
        names = [a["name"].lower() for a in ngff["axes"]]
        if info.rgb:  # the colour samples are stored where the axes put the c axis (first, or after t)
            at = names.index("c") if "c" in names else (1 if info.axes.upper().startswith("T") else 0)
            order = order[:at] + [n - 1] + order[at:-1]
        return tuple(order)
    letters = _input_letters(info)
    return tuple(sorted(range(n), key=lambda k: "tczyx".index(letters[k])))


def colour_axis(info: ImageInfo) -> int | None:
    """Where an RGB / RGBA image's samples sit among the stored array's axes (NGFF's c: first, or after t);
    None for an image without colour samples. Colour is stored as c and handed in and out samples last."""
    if not info.rgb:
        return None
    return stored_order(info).index(len(info.shape) - 1)


def stored_shape(info: ImageInfo) -> tuple[int, ...]:
    """The shape of the stored level 0: ``info.shape`` in NGFF's axis order (:func:`stored_order`), colour
    samples on the c axis."""
    shape = tuple(int(n) for n in info.shape)
    return tuple(shape[k] for k in stored_order(info))


def _output_axes(info: ImageInfo) -> list[dict]:
    """The NGFF axes of an output: the input's when it was OME-Zarr, else from its tifffile letters, in NGFF's
    order (:func:`stored_order`)."""
    ngff = info.metadata.get("ngff")
    if ngff is not None and len(ngff["axes"]) == len(info.shape):
        return [dict(a) for a in ngff["axes"]]
    letters = _input_letters(info)
    unit = ngff_unit(info.unit)
    axes = []
    for a in (letters[k] for k in stored_order(info)):
        axis: dict[str, Any] = {"name": a, "type": AXIS_TYPES[a]}
        if a in "zyx" and unit is not None and unit in _FROM_NGFF:
            axis["unit"] = unit
        axes.append(axis)
    return axes


def output_transforms(info: ImageInfo, axes: list[dict]) -> tuple[list[float], list[float]]:
    """Scale and translation of an output's level 0 (pixel sizes divided by the real size ratio, centres kept).

    The input's transformation (``metadata["ngff"]``, or its pixel size) is
    mapped with :func:`~diinn_napari.settings.overlay_placement`, the rule that
    puts an upscaled napari layer over its source.
    """
    names = [a["name"].lower() for a in axes]
    n = len(names)
    ngff = info.metadata.get("ngff")
    source_yx = info.metadata.get("source_yx") or list(info.yx)
    ratio = [1.0] * n
    ratio[-2], ratio[-1] = info.yx[0] / source_yx[0], info.yx[1] / source_yx[1]
    if ngff is not None and len(ngff["scale"]) == n:
        scale_in, translate_in = list(ngff["scale"]), list(ngff["translation"])
    else:
        scale_in, translate_in = [1.0] * n, [0.0] * n
        source_size = info.metadata.get("source_pixel_size")
        if source_size is None and info.pixel_size is not None:
            source_size = (info.pixel_size[0] * ratio[-2], info.pixel_size[1] * ratio[-1])
        if source_size is not None:
            scale_in[-2], scale_in[-1] = float(source_size[0]), float(source_size[1])
        if "t" in names and info.time_interval:
            scale_in[names.index("t")] = float(info.time_interval)
    if "z" in names and info.z_spacing is not None:
        scale_in[names.index("z")] = float(info.z_spacing)  # Z resampled (--isotropic) or kept
    if "translation" in info.metadata:  # given by the caller (the napari writer): the output's own
        return scale_in, [float(v) for v in info.metadata["translation"]]
    return overlay_placement(scale_in, translate_in, ratio)


class PyramidWriter:
    """An OME-Zarr image being written: level 0 plane by plane (or region by region), every lower level alongside.

    ``PyramidWriter.create(path, info, record)`` makes the store and its
    metadata; :meth:`write_plane` writes one plane of level 0 and the same
    plane of every lower level. For block-wise writing (:meth:`write_region`),
    a region aligned to the level-0 chunks of a size that divides by
    ``2 ** levels`` gives exact lower levels too.
    """

    def __init__(self, group, info: ImageInfo, shapes: list[tuple[int, int]]):
        self.group, self.info, self.shapes = group, info, shapes
        self.arrays = [group[str(k)] for k in range(len(shapes))]
        self.colour_at = colour_axis(info)  # RGB / RGBA: the stored c axis; planes come and go samples last
        self.order = stored_order(info)  # the stored axes in NGFF's order, as axes of info.shape

    def key(self, index: tuple[int, ...], *yx: slice) -> tuple:
        """The stored arrays' selection of plane ``index`` (``info``'s leading axes in its own order, colour
        samples not among them): the index permuted into NGFF's order, every colour sample selected."""
        index = tuple(int(i) for i in index)
        lead = len(index)  # info's leading axes come first in info.shape; Y, X (and the colour samples) after
        return tuple(index[k] if k < lead else slice(None) for k in self.order[:-2]) + yx

    def chunk_coords(self, index: tuple[int, ...], level: int, y0: int, x0: int) -> tuple[int, ...]:
        """The chunk of level ``level`` that holds level-0 pixel (y0, x0) of plane ``index`` (every colour)."""
        array = self.arrays[level]
        lead = tuple(0 if isinstance(i, slice) else i for i in self.key(index))  # one chunk holds every colour
        return lead + ((y0 >> level) // int(array.chunks[-2]), (x0 >> level) // int(array.chunks[-1]))

    def _channels_first(self, data: np.ndarray) -> np.ndarray:
        return np.moveaxis(np.asarray(data), -1, 0) if self.colour_at is not None else data

    def read(self, index: tuple[int, ...], ys: slice, xs: slice) -> np.ndarray:
        """Level 0's region (ys, xs) of plane ``index``, as written (colour samples last)."""
        data = np.asarray(self.arrays[0][self.key(index, ys, xs)])
        return np.moveaxis(data, 0, -1) if self.colour_at is not None else data

    @classmethod
    def create(cls, path: str | Path, info: ImageInfo, record: dict | None = None, *, zarr_format: int | None = None,
               chunks: tuple[int, int] | None = None, smallest: int = SMALLEST,
               level_chunks: list[tuple[int, int]] | None = None) -> PyramidWriter:
        """Create the store at ``path`` for the image ``info`` describes (shape, dtype, axes, sizes, metadata).

        ``chunks``: every level's (Y, X) chunk sides (clipped to the level);
        ``level_chunks``: one (Y, X) per level instead (:func:`owned_level_chunks`)."""
        zarr = _zarr()
        ngff = info.metadata.get("ngff") or {}
        zarr_format = zarr_format or ngff.get("zarr_format") or 3
        axes = _output_axes(info)
        scale, translation = output_transforms(info, axes)
        shapes = pyramid_shapes(info.yx, smallest)
        chunk_yx = chunks or tuple(ngff.get("chunks_yx") or (DEFAULT_CHUNK, DEFAULT_CHUNK))
        leading = stored_shape(info)[:-2]
        colour = colour_axis(info)
        lead_chunks = tuple(n if k == colour else 1 for k, n in enumerate(leading))  # a pixel's colours together
        group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
        datasets = []
        for k, (y, x) in enumerate(shapes):
            cy, cx = level_chunks[k] if level_chunks is not None else chunk_yx
            group.create_array(str(k), shape=leading + (y, x), dtype=info.dtype,
                               chunks=lead_chunks + (min(cy, y), min(cx, x)),
                               fill_value=0, **({"chunk_key_encoding": {"name": "v2", "separator": "/"}} if zarr_format == 2 else {}))
            ratio = [1.0] * len(leading) + [y / shapes[0][0], x / shapes[0][1]]
            level_scale, level_translation = overlay_placement(scale, translation, ratio)
            datasets.append({"path": str(k), "coordinateTransformations": [
                {"type": "scale", "scale": level_scale}, {"type": "translation", "translation": level_translation}]})
        version = "0.5" if zarr_format == 3 else "0.4"
        # image_name: the published name of a store written under a hidden one (the batch's partial store)
        name = info.metadata.get("image_name", info.path.name)
        multiscale: dict[str, Any] = {"name": name, "axes": axes, "datasets": datasets,
                                      "type": "mean", "metadata": {"method": "2 x 2 block mean",
                                                                   "software": "diinn-napari"}}
        ome: dict[str, Any] = {"multiscales": [multiscale]}
        if version == "0.4":
            multiscale["version"] = version
        omero = _output_omero(info, axes)
        if omero is not None:
            ome["omero"] = omero
        attrs: dict[str, Any] = {"ome": {"version": version, **ome}} if version == "0.5" else ome
        if record is not None:
            attrs[settings_record.RECORD_KEY] = record
        group.attrs.update(attrs)
        return cls(group, info, shapes)

    @classmethod
    def open(cls, path: str | Path, info: ImageInfo) -> PyramidWriter:
        """An existing store made by :meth:`create` (a resumed or distributed write)."""
        group = _zarr().open_group(str(path), mode="r+")
        count = len(list(group.array_keys()))
        return cls(group, info, pyramid_shapes(info.yx)[:count])

    def write_plane(self, index: tuple[int, ...], plane: np.ndarray) -> None:
        """Plane ``index`` (the leading axes) of level 0 and of every lower level (colour samples last)."""
        key = self.key(index)
        level = self._channels_first(plane)
        write_here(self.arrays[0], key, level)
        for array in self.arrays[1:]:
            level = _cast(halve(level), self.info.dtype)  # each level from the one above as stored
            write_here(array, key, level)

    def write_region(self, index: tuple[int, ...], y0: int, x0: int, data: np.ndarray, *,
                     levels_only: bool = False) -> None:
        """A region of one plane at (y0, x0) of level 0 (colour samples last) and the matching regions of the
        lower levels (``levels_only``: level 0 holds it already)."""
        index = self.key(index)
        data = self._channels_first(data)
        h, w = data.shape[-2:]
        if not levels_only:
            write_here(self.arrays[0], index + (slice(y0, y0 + h), slice(x0, x0 + w)), data)
        level = data
        for k, array in enumerate(self.arrays[1:], start=1):
            if y0 % 2 ** k or x0 % 2 ** k:
                raise ValueError(f"region at ({y0}, {x0}) is not aligned to level {k}")
            level = _cast(halve(level), self.info.dtype)
            ly, lx = y0 >> k, x0 >> k
            write_here(array, index + (slice(ly, ly + level.shape[-2]), slice(lx, lx + level.shape[-1])), level)


def _output_omero(info: ImageInfo, axes: list[dict]) -> dict | None:
    ngff = info.metadata.get("ngff")
    names = [a["name"] for a in axes]
    n_channels = stored_shape(info)[names.index("c")] if "c" in names else 1
    if ngff is not None and ngff.get("omero"):
        omero = json.loads(json.dumps(ngff["omero"]))
        if len(omero.get("channels", [])) == n_channels:
            return omero
    if info.channel_names and len(info.channel_names) == n_channels:
        return {"channels": [{"label": str(name), "active": True} for name in info.channel_names]}
    if info.rgb:  # colour samples: NGFF viewers show the c axis as these colours, added
        colours = (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"), ("alpha", "FFFFFF"))[:n_channels]
        # an integer colour's window is its dtype's whole range: no channel is stretched apart from the others
        window = _dtype_window(info.dtype)
        return {"channels": [{"label": label, "color": colour, "active": label != "alpha",
                              **({"window": dict(window)} if window else {})} for label, colour in colours]}
    return None


def _dtype_window(dtype) -> dict | None:
    """The omero window of an integer dtype's whole range; None for floats (their range is the data's)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        return None
    lo, hi = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
    return {"min": lo, "max": hi, "start": lo, "end": hi}


def fill_windows(writer: PyramidWriter) -> None:
    """Give every omero channel without a ``window`` one from the written pixels (call once every pixel is in).

    ``start`` / ``end`` are the channel's lowest and highest value in the
    smallest pyramid level (at most 512 pixels a side, read one plane at a
    time: little to read, and the range a viewer first shows; the 2 x 2 means
    put it a little inside level 0's extremes); ``min`` / ``max`` are the
    dtype's range for integers, the same as start / end for floats. How the
    bands of a multiband TIFF get a contrast each in NGFF viewers
    (napari-ome-zarr reads the window as the channel's contrast limits).
    """
    attrs = writer.group.attrs.asdict()
    ome = attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs
    channels = (ome.get("omero") or {}).get("channels") or []
    names = [a["name"].lower() for a in ome["multiscales"][0]["axes"]]
    smallest = writer.arrays[-1]
    if "c" not in names or not any("window" not in c for c in channels):
        return
    at = names.index("c")
    if len(channels) != smallest.shape[at]:
        return
    ranges: dict[int, tuple] = {}  # channel: (lowest, highest) so far
    for index in np.ndindex(*smallest.shape[:-2]):
        if "window" in channels[index[at]]:
            continue
        plane = np.asarray(smallest[index])
        plane = plane[~np.isnan(plane)] if plane.dtype.kind == "f" else plane
        if plane.size == 0:  # a plane without values (all NaN) says nothing of the range
            continue
        lo, hi = plane.min().item(), plane.max().item()
        old = ranges.get(index[at])
        ranges[index[at]] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    for k, (start, end) in ranges.items():
        whole = _dtype_window(smallest.dtype) or {"min": start, "max": end}
        channels[k]["window"] = {"min": whole["min"], "max": whole["max"], "start": start, "end": end}
    if ranges:
        writer.group.attrs.update(attrs)


class OmeZarrFormat:
    """OME-Zarr images (the ``ImageFormat`` of ``.zarr`` folders)."""

    name = "ome-zarr"
    suffixes = (".zarr",)
    kinds = (KIND,)
    holds_stacks = True

    def detect(self, path: Path) -> bool:
        if not path.is_dir():
            return False
        attrs, _ = _read_attrs(path)
        if attrs is None:
            return False
        ome = _ome(attrs)
        return "multiscales" in ome or "bioformats2raw.layout" in ome

    def images(self, path: Path) -> list[Path]:
        """The images of ``path``: itself, or each image of a bioformats2raw container (in series order)."""
        attrs, _ = _read_attrs(path)
        ome = _ome(attrs or {})
        if "multiscales" in ome or "bioformats2raw.layout" not in ome:
            return [path]
        series = None
        omeattrs, _ = _read_attrs(path / "OME")
        if omeattrs is not None:
            series = _ome(omeattrs).get("series")
        if series is None:
            series = sorted((p.name for p in path.iterdir() if p.name.isdigit() and self.detect(p)), key=int)
        found = [path / str(s) for s in series if self.detect(path / str(s))]
        if not found:
            raise ValueError(f"{path.name}: a bioformats2raw container with no images")
        return found

    def read_info(self, path: Path) -> ImageInfo:
        name = path.name
        attrs, zarr_format = _read_attrs(path)
        if attrs is None:
            raise ValueError(f"{name}: not a zarr group")
        ome = _ome(attrs)
        if "multiscales" not in ome:
            if "bioformats2raw.layout" in ome:
                raise ValueError(f"{name}: a bioformats2raw container; give the folder itself to the batch tool "
                                 f"(each image is an input) or one image, e.g. {name}/0")
            raise ValueError(f"{name}: a zarr group without OME-Zarr multiscales metadata")
        try:
            multiscale = ome["multiscales"][0]
            dataset = multiscale["datasets"][0]["path"]
            array = _zarr().open_group(str(path), mode="r")[dataset]
            shape, dtype = tuple(int(n) for n in array.shape), np.dtype(array.dtype)
            chunks = tuple(int(n) for n in array.chunks)
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"{name}: incomplete OME-Zarr metadata ({type(err).__name__}: {err})") from err
        axes = _axes(multiscale, len(shape), name)
        names = "".join(a["name"].lower() for a in axes)
        scale, translation = level0_transform(multiscale, len(shape))
        info = ImageInfo(path, KIND, names.upper(), shape, dtype)
        units = {a["name"].lower(): a.get("unit") for a in axes}
        if any(scale[i] != 1.0 for i in (-2, -1)) or units.get("x"):
            info.pixel_size = (scale[-2], scale[-1])
        if units.get("x"):
            info.unit = _FROM_NGFF.get(units["x"], units["x"])
        if "z" in names:
            info.z_spacing = scale[names.index("z")]
        if "t" in names and (scale[names.index("t")] != 1.0 or units.get("t")):
            info.time_interval = scale[names.index("t")]
        omero = ome.get("omero")
        if isinstance(omero, dict):
            labels = [c.get("label") for c in omero.get("channels", [])]
            if labels and all(labels):
                info.channel_names = [str(label) for label in labels]
        info.metadata["ngff"] = {"axes": axes, "scale": scale, "translation": translation, "dataset": dataset,
                                 "zarr_format": zarr_format, "chunks_yx": list(chunks[-2:]),
                                 "omero": omero if isinstance(omero, dict) else None,
                                 "version": ome.get("version") or multiscale.get("version")}
        return info

    def open_planes(self, info: ImageInfo) -> OmeZarrPlanes:
        return OmeZarrPlanes(info)

    def read_array(self, path: Path) -> tuple[np.ndarray, str]:
        info = self.read_info(path)
        group = _zarr().open_group(str(path), mode="r")
        return np.asarray(group[info.metadata["ngff"]["dataset"]][...]), info.axes

    def output_name(self, path: Path) -> str:
        parent_attrs, _ = _read_attrs(path.parent)
        if parent_attrs is not None and "bioformats2raw.layout" in _ome(parent_attrs):
            return f"{zarr_stem(path.parent)}_{path.name}.ome.zarr"
        return path.name

    def write(self, path: Path, info: ImageInfo, planes: Iterable[np.ndarray], record: dict | None = None) -> None:
        """Write ``planes`` (leading axes in C order) as a multiscale OME-Zarr image with its pyramid."""
        writer = PyramidWriter.create(path, info, record)
        for index, plane in zip(np.ndindex(*info.leading), planes):
            writer.write_plane(index, plane)
        fill_windows(writer)

    def read_record(self, path: Path) -> dict | None:
        attrs, _ = _read_attrs(path)
        value = (attrs or {}).get(settings_record.RECORD_KEY)
        if isinstance(value, str):
            return settings_record.decode(value)
        return value if isinstance(value, dict) else None


def zarr_stem(path: Path) -> str:
    """A store's name without ``.ome.zarr`` / ``.zarr``."""
    name = path.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def with_zarr_name(name: str) -> str:
    """The OME-Zarr name of an output called ``name`` in another format (``a.tif`` -> ``a.ome.zarr``)."""
    lower = name.lower()
    if lower.endswith(".zarr"):
        return name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png", ".jpg", ".jpeg"):
        if lower.endswith(suffix):
            return name[: -len(suffix)] + ".ome.zarr"
    return Path(name).stem + ".ome.zarr"



class PyramidSink:
    """Level 0 of a :class:`PyramidWriter` written piece by piece (any windows, e.g. the engine's tiles).

    ``sink[index + (ys, xs)] = values`` writes level 0 there; once every pixel
    of a block (the level-0 chunk, a multiple of ``2 ** (levels - 1)``) is
    written, that block is read back alone and its lower-level regions are
    written, so the pyramid fills in as tiles finish (no pass over the whole
    level 0 at the end) and equals the one :meth:`PyramidWriter.write_plane`
    makes. Memory: one block.
    """

    def __init__(self, writer: PyramidWriter):
        self.writer, self.array = writer, writer.arrays[0]
        self.shape, self.dtype = tuple(writer.info.shape), self.array.dtype  # colour samples last, as written
        self.block = tuple(int(n) for n in self.array.chunks[-2:])
        step = 2 ** (len(writer.arrays) - 1)
        # a chunk as wide as its axis (clipped to the image) starts at 0 alone: aligned whatever its size
        if len(writer.arrays) > 1 and any(b % step and b < n for b, n in zip(self.block, writer.info.yx)):
            raise ValueError(f"chunks {self.block} do not divide by {step} (the pyramid's levels)")
        self._covered: dict[tuple, int] = {}

    def __setitem__(self, key: tuple, values: np.ndarray) -> None:
        key = tuple(key)
        if self.writer.colour_at is not None:
            key = key[:-1] if len(key) == len(self.shape) else key  # (..., ys, xs[, all samples])
        *index, ys, xs = key
        index = tuple(int(i) for i in index)
        write_here(self.array, self.writer.key(index, ys, xs), self.writer._channels_first(values))
        H, W = self.writer.info.yx
        by, bx = self.block
        for y in range(ys.start // by, (ys.stop - 1) // by + 1):
            for x in range(xs.start // bx, (xs.stop - 1) // bx + 1):
                y0, y1 = max(ys.start, y * by), min(ys.stop, (y + 1) * by)
                x0, x1 = max(xs.start, x * bx), min(xs.stop, (x + 1) * bx)
                cell = (index, y, x)
                self._covered[cell] = self._covered.get(cell, 0) + (y1 - y0) * (x1 - x0)
                full = (min(H, (y + 1) * by) - y * by) * (min(W, (x + 1) * bx) - x * bx)
                if self._covered[cell] >= full:
                    del self._covered[cell]
                    self._finish(index, y * by, x * bx)

    def _finish(self, index: tuple[int, ...], y0: int, x0: int) -> None:
        by, bx = self.block
        data = self.writer.read(index, slice(y0, y0 + by), slice(x0, x0 + bx))
        self.writer.write_region(index, y0, x0, data, levels_only=True)


class BlockStore:
    """A multiscale OME-Zarr image written one whole level-0 chunk (a *block*) at a time, resumable.

    The engine (:meth:`diinn_napari.Engine.steps` with ``out=``) asks it for
    :meth:`block_windows`, skips the blocks :meth:`is_done` names, and hands
    every finished block to :meth:`write_block`: level 0's chunk is written
    whole (never read back), the matching regions of the lower levels are
    made from it, the chunk files are flushed to disk, then the block is
    added to a ledger in the store (``.diinn-blocks``: one CRC-checked record
    per block, flushed). A store left by a crash, a kill or a cancel is
    opened again with :meth:`open` and the run goes on at the first block
    the ledger lacks; the result is the same bit for bit (the same windows
    are decoded). The header file (``.diinn-header``) holds what the blocks
    were made with: :meth:`open` refuses a store of other work. :meth:`finish`
    removes both files once every block is in.
    """

    LEDGER, HEADER, MARKS = ".diinn-blocks", ".diinn-header", ".diinn-marks"
    _RECORD = struct.Struct("<QI")

    def __init__(self, writer: PyramidWriter, header: bytes, *, durable: bool = True, shared: bool = False):
        self.writer, self.array, self.header, self.durable = writer, writer.arrays[0], header, durable
        # shared: several processes (cluster workers) write blocks of this store at once; each finished block is
        # then one marker file in MARKS (made whole by a rename), never an append to the ledger every writer shares
        self.shared = shared
        self.shape, self.dtype = tuple(writer.info.shape), self.array.dtype  # colour samples last, as written
        self.root = Path(str(writer.group.store.root))  # a local store (the group opened from a path)
        self.block = tuple(int(n) for n in self.array.chunks[-2:])
        step = 2 ** (len(writer.arrays) - 1)
        H, W = writer.info.yx
        # a chunk as wide as its axis (clipped to the image) starts at 0 alone: aligned whatever its size
        if len(writer.arrays) > 1 and any(b % step and b < n for b, n in zip(self.block, (H, W))):
            raise ValueError(f"chunks {self.block} do not divide by {step} (the pyramid's levels)")
        self._windows = [(y, min(H, y + self.block[0]), x, min(W, x + self.block[1]))
                         for y in range(0, H, self.block[0]) for x in range(0, W, self.block[1])]
        self._number = {w: i for i, w in enumerate(self._windows)}
        self._leading = tuple(writer.info.leading)
        self.done: set[int] = set()

    # ---- making and opening
    @classmethod
    def create(cls, path: str | Path, info: ImageInfo, header: bytes, record: dict | None = None, *,
               chunks: tuple[int, int] | None = None, zarr_format: int | None = None, durable: bool = True) -> BlockStore:
        """A new store at ``path`` (replacing anything there) for the image ``info`` describes."""
        levels = len(pyramid_shapes(info.yx))
        ngff = info.metadata.get("ngff") or {}
        chunks = block_chunks(chunks or tuple(ngff.get("chunks_yx") or (BLOCK_CHUNK, BLOCK_CHUNK)), levels)
        writer = PyramidWriter.create(path, info, record, zarr_format=zarr_format, chunks=chunks,
                                      level_chunks=owned_level_chunks(chunks, pyramid_shapes(info.yx)))
        store = cls(writer, header, durable=durable)
        root = Path(path)
        (root / cls.HEADER).write_bytes(header)
        (root / cls.LEDGER).write_bytes(b"")
        if durable:
            for folder, _, names in os.walk(root):
                for name in names:
                    fsync_file(Path(folder) / name)
                fsync_folder(folder)
        return store

    @classmethod
    def open(cls, path: str | Path, info: ImageInfo, header: bytes, *, durable: bool = True,
             shared: bool = False) -> BlockStore | None:
        """The store at ``path`` with its finished blocks, or None when it is not this work (another header) or
        not a complete store (made before its header was written). ``shared``: this process is one of several
        writing blocks into it at once (a cluster worker): finished blocks are recorded as marker files."""
        root = Path(path)
        try:
            if (root / cls.HEADER).read_bytes() != header:
                return None
            writer = PyramidWriter.open(root, info)
        except (OSError, ValueError, KeyError):
            return None
        if tuple(writer.arrays[0].shape) != stored_shape(info) or np.dtype(writer.arrays[0].dtype) != info.dtype:
            return None
        store = cls(writer, header, durable=durable, shared=shared)
        store.done = store._read_ledger()
        return store

    @staticmethod
    def stored_header(path: str | Path) -> bytes | None:
        """The header of the store at ``path``, or None."""
        try:
            return (Path(path) / BlockStore.HEADER).read_bytes()
        except OSError:
            return None

    def _read_ledger(self) -> set[int]:
        """The finished blocks: the ledger's records up to a torn one, and the marker files of shared writers."""
        done, size = set(), self._RECORD.size
        total = self.blocks_total
        try:
            names = os.listdir(self.root / self.MARKS)
        except OSError:
            names = []
        done.update(int(name) for name in names if name.isdigit() and int(name) < total)  # temporaries are not digits
        try:
            data = (self.root / self.LEDGER).read_bytes()
        except OSError:
            return done
        for offset in range(0, len(data) - size + 1, size):
            number, crc = self._RECORD.unpack_from(data, offset)
            if zlib.crc32(data[offset:offset + 8]) != crc or number >= total:
                break  # a torn last record
            done.add(int(number))
        return done

    # ---- what the engine asks
    @property
    def blocks_total(self) -> int:
        return len(self._windows) * int(np.prod(self._leading, dtype=np.int64))

    def block_windows(self) -> list[tuple[int, int, int, int]]:
        """The level-0 chunks of one plane as output windows (y0, y1, x0, x1), row by row."""
        return list(self._windows)

    def _flat(self, index: tuple[int, ...], window) -> int:
        plane = int(np.ravel_multi_index(tuple(int(i) for i in index), self._leading)) if self._leading else 0
        return plane * len(self._windows) + self._number[tuple(int(v) for v in window)]

    def is_done(self, index: tuple[int, ...], window) -> bool:
        return self._flat(index, window) in self.done

    def refresh(self) -> None:
        """Read the finished blocks again (other processes may have written some)."""
        self.done = self._read_ledger()

    def block_groups(self) -> list[list[int]]:
        """The blocks (flat numbers, as :attr:`done` holds them) in groups that share no chunk of any level.

        Two processes may write two groups at once: every chunk file (level 0's
        and the lower levels', which a block fills only part of when its chunk
        is larger than the block's region there) belongs to the blocks of one
        group, so no read-modify-write of a chunk races another. Groups are
        rectangles of blocks in one plane, row by row, planes in C order.
        """
        by, bx = self.block
        H, W = self.writer.info.yx
        rows = _runs(H, by, [int(a.chunks[-2]) for a in self.writer.arrays])
        cols = _runs(W, bx, [int(a.chunks[-1]) for a in self.writer.arrays])
        per_row = -(-W // bx)
        groups = []
        for plane in range(int(np.prod(self._leading, dtype=np.int64))):
            first = plane * len(self._windows)
            for r in rows:
                for c in cols:
                    groups.append([first + i * per_row + j for i in r for j in c])
        return groups

    def only(self, numbers) -> BlockSelection:
        """This store as a block sink that writes the blocks ``numbers`` alone (the others count as done)."""
        return BlockSelection(self, numbers)

    def write_block(self, index: tuple[int, ...], window, data: np.ndarray) -> None:
        """Block ``window`` of plane ``index``: level 0 whole, the lower levels' regions, flushed, then recorded."""
        index = tuple(int(i) for i in index)
        y0, y1, x0, x1 = window
        yx = data.shape[-3:-1] if self.writer.colour_at is not None else data.shape[-2:]
        if yx != (y1 - y0, x1 - x0):
            raise ValueError(f"block {window} needs shape {(y1 - y0, x1 - x0)}, got {data.shape}")
        self.writer.write_region(index, y0, x0, data)
        number = self._flat(index, window)
        root = self.root
        if self.durable:
            for k, array in enumerate(self.writer.arrays):
                coords = self.writer.chunk_coords(index, k, y0, x0)
                chunk = root / array.path / array.metadata.encode_chunk_key(coords)
                if chunk.exists():  # an all-zero chunk is not stored
                    fsync_file(chunk)
                    fsync_folder(chunk.parent)
        if self.shared:
            self._mark(number)
        else:
            record = struct.pack("<Q", number)
            with open(root / self.LEDGER, "ab") as fh:
                fh.write(self._RECORD.pack(number, zlib.crc32(record)))
                fh.flush()
                if self.durable:
                    os.fsync(fh.fileno())
        self.done.add(number)

    def _mark(self, number: int) -> None:
        """Block ``number`` is finished: its marker file, made under a temporary name and renamed (a marker
        exists whole or not at all, on any file system that renames atomically, NFS included)."""
        folder = self.root / self.MARKS
        folder.mkdir(exist_ok=True)
        tmp = folder / f"tmp-{number}-{os.getpid()}"
        with open(tmp, "wb") as fh:
            if self.durable:
                os.fsync(fh.fileno())
        os.replace(tmp, folder / str(number))
        if self.durable:
            fsync_folder(folder)

    def finish(self, record: dict | None = None) -> None:
        """Every block is in: store the final ``record`` (if given) and remove the ledger and header files."""
        missing = self.blocks_total - len(self.done)
        if missing:
            raise RuntimeError(f"{missing} of {self.blocks_total} blocks are not written yet")
        fill_windows(self.writer)
        if record is not None:
            self.writer.group.attrs[settings_record.RECORD_KEY] = record
        (self.root / self.LEDGER).unlink(missing_ok=True)
        (self.root / self.HEADER).unlink(missing_ok=True)
        marks = self.root / self.MARKS
        if marks.is_dir():
            for name in os.listdir(marks):
                (marks / name).unlink(missing_ok=True)
            marks.rmdir()


class BlockSelection:
    """Some blocks of a :class:`BlockStore` as a block sink of its own (:meth:`BlockStore.only`).

    The engine writes the blocks ``numbers`` that the store lacks and takes
    every other block as done: one cluster task's share of the output,
    decoded by the same code (``Engine.steps(image, out=selection)``) and so
    with the same windows and bits as a run over the whole store.
    """

    def __init__(self, store: BlockStore, numbers):
        self.store, self.numbers = store, frozenset(int(n) for n in numbers)
        self.shape, self.dtype = store.shape, store.dtype

    def block_windows(self) -> list[tuple[int, int, int, int]]:
        return self.store.block_windows()

    def is_done(self, index: tuple[int, ...], window) -> bool:
        number = self.store._flat(index, window)
        return number not in self.numbers or number in self.store.done

    def write_block(self, index: tuple[int, ...], window, data: np.ndarray) -> None:
        self.store.write_block(index, window, data)

    @property
    def missing(self) -> int:
        """How many of this selection's blocks are not written yet."""
        return len(self.numbers - self.store.done)


class TrustedBlocks:
    """An image's :class:`BlockStore` and its trust map's (float32, the image's Y and X) as one block sink.

    The engine (``Engine.steps(image, out=sink, return_trust=True)``) hands
    every block over with its trust map (``write_block(..., trust=)``); a
    block is done when both stores hold it, so a resumed run makes whatever
    either lacks (the image's block again, bit for bit, when only the map lacked it).
    """

    takes_trust = True

    def __init__(self, image: BlockStore, trust: BlockStore):
        if trust.block_windows() != image.block_windows() or trust._leading != image._leading:
            raise ValueError("the trust map's store needs the image's planes and blocks")
        self.image, self.trust = image, trust
        self.shape, self.dtype = image.shape, image.dtype

    @property
    def done(self) -> set[int]:
        return self.image.done & self.trust.done

    @property
    def blocks_total(self) -> int:
        return self.image.blocks_total

    def block_windows(self) -> list[tuple[int, int, int, int]]:
        return self.image.block_windows()

    def is_done(self, index: tuple[int, ...], window) -> bool:
        return self.image.is_done(index, window) and self.trust.is_done(index, window)

    def write_block(self, index: tuple[int, ...], window, data: np.ndarray, *, trust: np.ndarray) -> None:
        self.trust.write_block(index, window, trust)  # the map first: the image's ledger then says both are in
        self.image.write_block(index, window, data)

    def finish(self, record: dict | None = None, trust_record: dict | None = None) -> None:
        """Both stores are whole: the map finished first, so a finished image always has its finished map."""
        self.trust.finish(trust_record)
        self.image.finish(record)


class PlaneBlocks:
    """Plane ``index`` of a block sink (:class:`BlockStore`, :class:`TrustedBlocks`, :class:`BlockSelection`) as a
    block sink of one plane: ``Engine.steps(plane, out=PlaneBlocks(store, index))`` writes that plane's blocks
    alone, e.g. with a model adapted to the plane (the widget's "adapt to each plane first")."""

    def __init__(self, sink, index: tuple[int, ...]):
        self.sink, self.index = sink, tuple(int(i) for i in index)
        self.shape, self.dtype = tuple(sink.shape[len(self.index):]), sink.dtype
        self.takes_trust = getattr(sink, "takes_trust", False)

    def block_windows(self) -> list[tuple[int, int, int, int]]:
        return self.sink.block_windows()

    def is_done(self, index: tuple[int, ...], window) -> bool:
        return self.sink.is_done(self.index + tuple(index), window)

    def write_block(self, index: tuple[int, ...], window, data: np.ndarray, **trust) -> None:
        self.sink.write_block(self.index + tuple(index), window, data, **trust)


def block_chunks(chunks: tuple[int, int], levels: int) -> tuple[int, int]:
    """Level-0 chunk sides rounded up to a multiple of ``2 ** (levels - 1)``, so blocks make exact lower levels."""
    step = 2 ** max(0, levels - 1)
    return tuple(int(-(-max(int(c), 1) // step) * step) for c in chunks)


def owned_level_chunks(block: tuple[int, int], shapes: list[tuple[int, int]],
                       smallest: int = MIN_LEVEL_CHUNK) -> list[tuple[int, int]]:
    """Per level, the chunk sides of a block store: level 0's are the block; level k's are the block's region
    there (the block halved k times), or ``smallest`` where that is smaller (a chunk of a few pixels is a file
    of a few bytes), each at most the level's size.

    Level k's chunks thus hold one block's region, or whole regions of the
    blocks of one aligned square of level-0 pixels (powers of two apart):
    :meth:`BlockStore.block_groups` never splits a chunk between groups.
    """
    chunks = []
    for k, (y, x) in enumerate(shapes):
        cy, cx = (block[0] >> k, block[1] >> k) if k else block
        chunks.append((min(y, max(cy, smallest if k else cy)), min(x, max(cx, smallest if k else cx))))
    return chunks


def _runs(n: int, block: int, chunks: list[int]) -> list[list[int]]:
    """The blocks of one axis (``n`` pixels of level 0 in blocks of ``block``) in runs that share no chunk of any
    level (level k's chunks of side ``chunks[k]``): adjacent blocks join when a chunk of some level holds both."""
    count = -(-n // block)
    runs = [[0]] if count else []
    for i in range(1, count):
        y0 = i * block  # the first pixel of block i; the last of block i - 1 is y0 - 1
        if any(((y0 - 1) >> k) // c == (y0 >> k) // c for k, c in enumerate(chunks)):
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def level0(info: ImageInfo):
    """The level-0 zarr array of the image ``info`` describes (read only)."""
    return _zarr().open_group(str(info.path), mode="r")[info.metadata["ngff"]["dataset"]]


def pixel_bands(array, index: tuple[int, ...] = (), budget: int = 4 << 20):
    """Plane ``index`` of a zarr array as row bands of at most ``budget`` bytes, in order (C-order bytes of the
    plane when concatenated: a checksum of the plane without holding it)."""
    H, W = array.shape[-2:]
    rows = max(1, budget // max(1, W * np.dtype(array.dtype).itemsize))
    for y in range(0, H, rows):
        yield np.asarray(array[tuple(index) + (slice(y, min(H, y + rows)),)])


def stored_bands(array, budget: int = 4 << 20):
    """Every plane of a zarr array as stored, in C order of its leading axes (an RGB image's c axis among them),
    as row bands of at most ``budget`` bytes: what an OME-Zarr output's pixel checksum is taken over, the same
    bytes when it is written and when it is checked, whatever its layout."""
    for index in np.ndindex(*array.shape[:-2]):
        yield from pixel_bands(array, index, budget)


def create_image(path: str | Path, shape: tuple[int, ...], dtype, *, axes: str | None = None, rgb: bool = False,
                 pixel_size: tuple[float, float] | None = None, unit: str | None = None,
                 translation: list[float] | None = None, channel_names: list[str] | None = None,
                 record: dict | None = None, chunks: tuple[int, int] = (DEFAULT_CHUNK, DEFAULT_CHUNK),
                 zarr_format: int = 3) -> PyramidSink:
    """A new multiscale OME-Zarr image at ``path`` to be filled piece by piece (``sink[...] = tile``).

    axes: tifffile letters in T, C, Z, Y, X order (default: the last
    ``len(shape)`` of "TCZYX"); ``rgb``: ``shape`` ends in 3 or 4 colour samples,
    (T, Z, Y, X, S) by default, stored as NGFF's c axis and written samples last
    (``sink[index + (ys, xs)] = tile`` with tiles (y, x, S));
    ``pixel_size``/``unit``/``translation``: level 0's physical grid
    (translation per axis, NGFF's, i.e. the first pixel's centre).
    """
    if axes is None and rgb:
        if not 3 <= len(shape) <= 5 or shape[-1] not in (3, 4):
            raise ValueError(f"an RGB / RGBA OME-Zarr image is (T, Z, Y, X, 3 or 4) at most; got shape {tuple(shape)}")
        axes = "TZ"[5 - len(shape):] + "YXS"
    axes = axes or "TCZYX"[5 - len(shape):]
    info = ImageInfo(Path(path), KIND, axes.upper(), tuple(int(n) for n in shape), np.dtype(dtype),
                     pixel_size=pixel_size, unit=unit, channel_names=channel_names)
    if translation is not None:
        info.metadata["translation"] = list(translation)
    return PyramidSink(PyramidWriter.create(path, info, record, zarr_format=zarr_format, chunks=chunks))


def open_multiscale(path: str | Path) -> list:
    """The levels of an OME-Zarr image as lazy dask arrays, largest first (a napari multiscale layer's data)."""
    import dask.array as da

    info = OME_ZARR.read_info(Path(path))
    group = _zarr().open_group(str(path), mode="r")
    attrs = _ome(group.attrs.asdict())
    return [da.from_zarr(group[d["path"]]) for d in attrs["multiscales"][0]["datasets"]] if info else []


OME_ZARR = register(OmeZarrFormat())


def open_levels(path: str | Path, *, colour_last: bool = False) -> list:
    """The levels of an OME-Zarr image as read-only zarr arrays, largest first (napari multiscale data).

    Unlike :func:`open_multiscale`'s dask arrays, every read goes to the
    store, so a layer over a store being written shows new blocks on
    ``layer.refresh()`` (over the dask levels, napari 0.9.2's dask chunk
    cache kept serving the chunks as they were first read), each read in the
    reading thread (:class:`ReadHere`).
    ``colour_last``: an RGB / RGBA image's c axis is moved last
    (:class:`SamplesLast`), as napari's ``rgb=True`` layers want it.
    """
    group = _zarr().open_group(str(path), mode="r")
    multiscale = _ome(group.attrs.asdict())["multiscales"][0]
    levels = [ReadHere(group[d["path"]]) for d in multiscale["datasets"]]
    if not colour_last:
        return levels
    names = [a["name"].lower() for a in multiscale["axes"]]
    if "c" not in names:
        raise ValueError(f"{path}: no c axis to show as colour (axes {''.join(names)})")
    return [SamplesLast(level, names.index("c")) for level in levels]


class _ArrayView:
    """What napari and dask ask of an array beyond its shape, dtype and indexing."""

    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self[...]
        return data if dtype is None else data.astype(dtype)


def _full_key(key, ndim: int) -> tuple:
    """An indexing ``key`` as a tuple with its Ellipsis expanded and trailing ``slice(None)`` up to ``ndim``."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:at] + (slice(None),) * (ndim - len(key) + 1) + key[at + 1:]
    return key + (slice(None),) * (ndim - len(key))


class ReadHere(_ArrayView):
    """A read-only view of a zarr array whose reads run in the reading thread (:func:`read_here`), one chunk at a
    time: shape, dtype, chunks and basic indexing (integers, slices, an Ellipsis), as napari reads a multiscale
    layer's levels.

    One chunk at a time: zarr reads every chunk of a selection (its file's
    bytes) before it decodes them into the result, so a read of n chunks
    held about n chunks' bytes and decoded buffers beside the result; here the
    result is filled chunk by chunk, a chunk's buffers freed before the next
    is read. ``array`` is the zarr array itself.

    Every read is a read-only array. A region read again while the previous
    read of it is still held is refilled in place: napari's refresh of a layer over a store being written
    reads the displayed region anew while its slice still holds the last one,
    and so held two of it (``benchmarks/bench_widget_ooc.py``: 8.4-8.5 MiB
    peak growth for an 8192 x 8192 uint8 result before, 6.6-7.5 MiB after);
    whoever holds an earlier read of the same region then sees the store as
    it is now, what a view of a store being written should show."""

    def __init__(self, array):
        self.array = array
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.chunks = tuple(int(n) for n in array.chunks)
        self._last: tuple[list, weakref.ref] | None = None  # the last multi-chunk read: its bounds, its array
        self._refilling = threading.Lock()

    def __getitem__(self, key) -> np.ndarray:
        bounds = _basic_bounds(key, self.shape)
        if bounds is None:  # (a step, an index array: zarr's own selection, in one read)
            return _read_only(read_here(self.array, key))
        pieces = [range(lo // c, -(-hi // c)) if sliced else range(lo // c, lo // c + 1)
                  for (lo, hi, sliced), c in zip(bounds, self.chunks)]
        if int(np.prod([len(r) for r in pieces], dtype=np.int64)) <= 1:
            return _read_only(read_here(self.array, tuple(slice(lo, hi) if sliced else lo for lo, hi, sliced in bounds)))
        with self._refilling:
            out = self._last[1]() if self._last is not None and self._last[0] == bounds else None
            if out is None:
                out = np.empty(tuple(hi - lo for lo, hi, sliced in bounds if sliced), self.dtype)
                self._last = (bounds, weakref.ref(out))
            out.flags.writeable = True
            self._fill(out, bounds, pieces)
            out.flags.writeable = False
        return out

    def _fill(self, out: np.ndarray, bounds: list[tuple[int, int, bool]], pieces: list[range]) -> None:
        for chunk in itertools.product(*pieces):
            source, target = [], []
            for k, (lo, hi, sliced), c in zip(chunk, bounds, self.chunks):
                if not sliced:
                    source.append(lo)
                    continue
                a, b = max(lo, k * c), min(hi, (k + 1) * c)
                source.append(slice(a, b))
                target.append(slice(a - lo, b - lo))
            out[tuple(target)] = read_here(self.array, tuple(source))


def _read_only(data: np.ndarray) -> np.ndarray:
    data.flags.writeable = False
    return data


def _basic_bounds(key, shape: tuple[int, ...]) -> list[tuple[int, int, bool]] | None:
    """(start, stop, is a slice) on each axis of a basic selection ``key`` of an array of ``shape`` (integers,
    slices of step 1, one Ellipsis); None for other keys (a step, an index array, a new axis)."""
    key = key if isinstance(key, tuple) else (key,)
    if sum(k is Ellipsis for k in key) > 1:
        return None
    key = _full_key(key, len(shape))
    if len(key) > len(shape):
        return None
    bounds = []
    for k, n in zip(key, shape):
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            i = int(k) + n if k < 0 else int(k)
            if not 0 <= i < n:
                raise IndexError(f"index {int(k)} is out of bounds for an axis of size {n}")
            bounds.append((i, i + 1, False))
        elif isinstance(k, slice):
            lo, hi, step = k.indices(n)
            if step != 1:
                return None
            bounds.append((lo, max(lo, hi), True))
        else:
            return None
    return bounds


class SamplesLast(_ArrayView):
    """A lazy view of an array with its axis ``axis`` moved last: ``view[key]`` reads only what ``key`` selects.

    How an RGB image stored with NGFF's c axis is shown as a napari ``rgb=True``
    layer (colour last) without loading a level: shape, dtype and basic
    indexing (integers, slices, an Ellipsis), every read going to the array.
    """

    def __init__(self, array, axis: int):
        self.array, self.axis = array, int(axis)
        shape = tuple(int(n) for n in array.shape)
        self.shape = shape[:self.axis] + shape[self.axis + 1:] + (shape[self.axis],)
        self.dtype = np.dtype(array.dtype)
        chunks = getattr(array, "chunks", None)
        if chunks is not None:
            chunks = tuple(chunks)
            self.chunks = chunks[:self.axis] + chunks[self.axis + 1:] + (chunks[self.axis],)

    def __getitem__(self, key) -> np.ndarray:
        key = tuple(int(k) if isinstance(k, (int, np.integer)) else k for k in _full_key(key, self.ndim))
        stored = key[:self.axis] + (key[-1],) + key[self.axis:-1]
        data = np.asarray(self.array[stored])
        if isinstance(key[-1], int):  # one colour: no axis to move
            return data
        moved = sum(not isinstance(k, int) for k in stored[:self.axis])  # where the colour axis is in ``data``
        return np.moveaxis(data, moved, -1)
