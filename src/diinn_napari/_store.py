"""The widget's results larger than memory: an OME-Zarr store the engine fills block by block, resumable.

When the plan says so (:func:`~diinn_napari._planner.with_store`: the result
is above the memory budget, or the user asked), the worker opens the store
here and hands it to :meth:`Engine.steps <diinn_napari.engine.Engine.steps>`
as ``out=``, as the batch tool does for ``--format ome-zarr``: the same
:class:`~diinn_napari.io.omezarr.BlockStore` (whole level-0 chunks, their
pyramid regions, a ledger of finished blocks), the same header
(:func:`~diinn_napari.batch.partial_store.make_header` of a record with the
batch's compared keys: input content, output size, model file, intensity,
dtype, consistency, ...). So:

- a store of this work with finished blocks (a cancelled run) is resumed at
  its first missing block;
- a finished store of this work is shown as it is;
- a store of other work at the user's path is refused, each difference
  named; a temporary one the widget named is replaced.

No torch here until the model's weights are hashed (in the worker).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._planner import RunPlan


def default_memory_budget() -> int:
    """A quarter of the machine's RAM (bytes): psutil when installed, else ``os.sysconf``; 4 GiB if neither says."""
    try:
        import psutil

        return int(psutil.virtual_memory().total) // 4
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES")) // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def input_identity(plan: RunPlan, data, band_bytes: int = 1 << 20) -> dict:
    """The input by name, shape, dtype and a SHA-256 of its pixels, read in row bands of about ``band_bytes``
    (a lazy layer is read once, and no copy of a whole plane is made for the hash)."""
    from .batch.record import pixel_digest

    leading = tuple(data.shape[:-3] if plan.source.rgb else data.shape[:-2])
    row = int(np.prod(data.shape[len(leading) + 1:], dtype=np.int64)) * np.dtype(data.dtype).itemsize
    rows = max(1, band_bytes // max(1, row))
    height = int(data.shape[len(leading)])
    bands = (np.asarray(data[index + (slice(y, min(height, y + rows)),)])
             for index in np.ndindex(*leading) for y in range(0, height, rows))
    digest = pixel_digest(bands, count=int(np.prod(leading, dtype=np.int64)))
    nbytes = int(np.prod(data.shape, dtype=np.int64)) * np.dtype(data.dtype).itemsize
    return {"name": plan.source.name, "shape": list(data.shape), "dtype": str(np.dtype(data.dtype)),
            "bytes": nbytes, "sha256": digest["sha256"]}


def store_record(plan: RunPlan, data) -> dict:
    """The record that decides whether a store holds this work: the batch's compared keys
    (:data:`~diinn_napari.batch.record.COMPARED`), plus the widget's own record under ``"napari"``."""
    from .batch.plan import run_record  # hashes the weights file (imports torch)

    run = plan.run
    record = {"input": input_identity(plan, data), "output_yx": list(plan.out_yx), "dtype": plan.dtype.name,
              **run_record(run, 3 if plan.source.rgb else 1)}
    if run.nodata is not None:
        record["nodata"] = repr(run.nodata)
    if plan.trust_map:  # a store with its trust map beside it is other work than one without
        record["trust_map"] = True
    if plan.self_adapt_steps:  # each plane by a copy of the model adapted to it (the batch's --self-adapt record)
        record["self_adapt"] = {"steps": plan.self_adapt_steps, "seed": 0, "each": "plane"}
    if plan.isotropic is not None:  # Z resampled: the Z steps, planes, fusion and the adaptation to the stack
        iso = plan.isotropic
        record["isotropic"] = {"z_step_in": iso.z_step, "z_step_out": iso.target, "planes": plan.record["z_planes"],
                               "fusion": "mean", "adapt_steps": plan.adapt_steps, "axial_sigma": plan.axial_sigma,
                               "seed": 0}
    # JSON-clean (a model instance is its class name), so a record read back from the store compares equal
    record["napari"] = json.loads(json.dumps(plan.record, default=str))
    return record


def trust_path(path: str | Path) -> Path:
    """Where the trust map of the store at ``path`` goes: beside it, ``result.ome.zarr`` -> ``result.trust.ome.zarr``."""
    from .io.omezarr import zarr_stem

    path = Path(path)
    return path.with_name(f"{zarr_stem(path)}.trust.ome.zarr")


def store_info(plan: RunPlan, path: Path, *, trust: bool = False):
    """The :class:`~diinn_napari.io.ImageInfo` of the store: the result's shape and dtype, axes ``...ZYX``
    (NGFF's order; RGB / RGBA: ``...ZYXS``, the colour stored as NGFF's c axis), level 0 placed as the
    in-memory result layer (:func:`~diinn_napari._layers.placement`). ``trust``: of its trust map's store
    (float32, one value per output pixel: no colour axis)."""
    from ._layers import placement
    from .io import ImageInfo

    scale, translate = placement(plan, plan.plane if plan.plane_only else None)
    shape = tuple(int(n) for n in plan.shape)
    rgb = plan.source.rgb and not trust
    if trust and plan.source.rgb:
        shape = shape[:-1]
    if rgb:  # the c axis holds the colour: at most T, Z, Y, X besides
        axes = "TZYX"[5 - len(shape):] + "S" if len(shape) <= 5 else None
    else:
        axes = "TCZYX"[5 - len(shape):] if len(shape) <= 5 else None
    if axes is None:
        raise ValueError(f"a result of {len(shape)} axes has no OME-Zarr layout (at most T, C, Z, Y, X)")
    info = ImageInfo(Path(path), "ome-zarr", axes, shape, np.dtype("float32") if trust else plan.dtype,
                     pixel_size=(scale[-2], scale[-1]), z_spacing=scale[-3] if len(scale) >= 3 else None)
    translate = [float(v) for v in translate]
    if rgb:  # (per stored axis: the c axis, first or after t, has none)
        at = 1 if axes.startswith("T") else 0
        translate = translate[:at] + [0.0] + translate[at:]
    info.metadata["translation"] = translate
    return info


@dataclass
class OpenedStore:
    """A store ready for the engine: ``resumed`` blocks were there already (``complete``: all of them, finished).

    With a trust map, ``store`` is a :class:`~diinn_napari.io.omezarr.TrustedBlocks` over both stores and
    ``trust_path`` the map's."""

    store: object  # BlockStore, or TrustedBlocks
    path: Path
    record: dict
    resumed: int = 0
    complete: bool = False
    notes: list[str] = field(default_factory=list)
    trust_path: Path | None = None
    trust_record: dict | None = None


def open_store(plan: RunPlan, data) -> OpenedStore:
    """The plan's store with what it holds: resumed, finished, new, or refused (ValueError naming the differences).

    With a trust map, its store beside (:func:`trust_path`) is opened by the same
    rules; a new result gets a new map (replacing an earlier DIINN one there), and
    a finished result needs its finished map."""
    from .io.omezarr import TrustedBlocks

    path = Path(plan.store)
    record = store_record(plan, data)
    opened = _open_one(path, store_info(plan, path), record, replace=plan.store_named, chunks=store_chunks(plan))
    if not plan.trust_map:
        return opened
    tpath = trust_path(path)
    trecord = {**record, "dtype": "float32"}
    info = store_info(plan, tpath, trust=True)
    fresh = opened.store is not None and not opened.resumed  # a new result: a new map
    trust = _open_one(tpath, info, trecord, replace=plan.store_named, fresh=fresh)
    notes = opened.notes + trust.notes
    if opened.complete:
        if not trust.complete:
            raise ValueError(f"{path} is finished but its trust map {tpath} is missing or unfinished; delete "
                             f"{path} to make both again, or untick the trust map (Advanced)")
        return OpenedStore(None, path, record, opened.resumed, True, notes, tpath, trecord)
    if trust.complete:  # a map without its finished image (a crash between the two): made again with it
        trust = _open_one(tpath, info, trecord, replace=plan.store_named, fresh=True)
        notes += trust.notes
    both = TrustedBlocks(opened.store, trust.store)
    return OpenedStore(both, path, record, len(both.done), notes=notes, trust_path=tpath, trust_record=trecord)


def store_chunks(plan: RunPlan) -> tuple[int, int] | None:
    """The level-0 chunk (block) of the plan's store: the default (None) for the plane-wise modes; for isotropic
    voxels, bands of Y rows that :func:`~diinn_napari.isotropic.isotropic_steps` makes one at a time (about
    :data:`BAND_VOXELS` output voxels a band, over every output plane), 512 wide."""
    from .io.omezarr import BLOCK_CHUNK

    if plan.isotropic is None:
        return None
    planes, (height, width) = plan.shape[-3], plan.shape[-2:]
    return max(8, min(height, BAND_VOXELS // max(1, planes * width))), BLOCK_CHUNK


# Isotropic voxels into a store: output voxels of one band of Y rows (all planes, all X). 8 M: the resampling's
# peak is about 7 float32 copies of a band (benchmarks/bench_isotropic_band.py: 211 MiB for 7.6 M voxels); the
# in-memory block size (4 M) would make twice the chunk files and fsyncs, and napari read XY planes in twice the
# chunks.
BAND_VOXELS = 1 << 23


def _open_one(path: Path, info, record: dict, *, replace: bool, fresh: bool = False,
              chunks: tuple[int, int] | None = None) -> OpenedStore:
    """One store at ``path`` for ``record``: resumed, finished, new, or refused. ``replace``: a store of other work
    there is replaced (a temporary one the widget named); ``fresh``: a new store is made even over this work's
    (a DIINN store there is replaced, anything else refused unless ``replace``)."""
    from .batch.partial_store import make_header
    from .io.omezarr import BlockStore

    compared = {k: v for k, v in record.items() if k != "napari"}
    header = make_header(compared, info)
    notes: list[str] = []
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):  # (an empty folder is new)
        found = None if fresh else BlockStore.open(path, info, header)
        if found is not None:
            return OpenedStore(found, path, record, resumed=len(found.done), notes=notes)
        why = _refusal(path, header, compared)
        if why is None and not fresh:  # a finished store of this work
            return OpenedStore(None, path, record, resumed=blocks_in(path), complete=True, notes=notes)
        ours = why is None or not why.startswith(NOT_OURS)
        if not (replace or (fresh and ours)):
            raise ValueError(f"{path} {why}; pick another path (Advanced > OME-Zarr store) or delete it")
        notes.append(f"replaced {'the temporary store ' if replace else ''}{path.name}"
                     + (f": it {why}" if why else ": an earlier trust map"))
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    store = BlockStore.create(path, info, header, {**record, "partial": True}, chunks=chunks)
    return OpenedStore(store, path, record, notes=notes)


NOT_OURS = "exists and is not a DIINN OME-Zarr result"


def _refusal(path: Path, header: bytes, compared: dict) -> str | None:
    """What keeps the store at ``path`` from being this work; None when it is this work, finished."""
    from .batch.partial_store import why_other
    from .batch.record import differences
    from .io.omezarr import OME_ZARR, BlockStore

    if (path / BlockStore.HEADER).exists():  # a partial store of other work
        return f"holds a partial result made with other settings ({why_other(path, header)})"
    try:
        old = OME_ZARR.read_record(path) if path.is_dir() and OME_ZARR.read_info(path) is not None else None
    except Exception:  # not a readable OME-Zarr image (another folder, a file): not a result of this work
        old = None
    if not isinstance(old, dict):
        return NOT_OURS
    found = differences(old, compared)
    if found:
        return f"holds a result made with other settings ({'; '.join(found)})"
    return None


def blocks_in(path: Path) -> int:
    """The number of level-0 chunks (blocks) of the OME-Zarr image at ``path``."""
    from .io.omezarr import open_levels

    level0 = open_levels(path)[0]
    chunks = [-(-int(n) // int(c)) for n, c in zip(level0.shape, level0.chunks)]
    return int(np.prod(chunks, dtype=np.int64))
