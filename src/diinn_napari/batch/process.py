"""One file, start to finish: plan -> skip or claim a partial file -> compute units -> write the output -> clean up.

The steps are the same for every file; what a *unit* is differs, in one
place: :class:`PlaneWork` upscales Y and X plane by plane with the engine,
:class:`VolumeWork` (``--isotropic``) resamples Z one whole (Z, Y, X) volume
at a time, after adapting the model to the stack if asked. Each finished
unit is flushed to the partial file, so a killed run resumes at the next
unit; the output is written from the partial file to a temporary file and
published atomically.
"""

from __future__ import annotations

import errno
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .. import io
from . import stale
from .job import Result, Settings
from .partial import PartialFile
from .partial_store import PartialStore
from .plan import FilePlan, VolumePlan, plan_file
from .record import differences, pixel_digest

Progress = Callable[[int], object]
# writes the missing blocks of a claimed partial store (OME-Zarr outputs): (plan, settings, partial) -> None
BlockRunner = Callable[[FilePlan, Settings, PartialStore], object]


def process_file(path: Path, settings: Settings, inputs: frozenset[Path] = frozenset(),
                 progress: Progress | None = None, blocks: BlockRunner | None = None) -> Result:
    """Upscale one file (or, with ``settings.isotropic``, resample its Z axis) into ``settings.out_dir``.

    Never raises for a bad file; returns a Result. ``inputs``: every input of
    the batch (no output may replace one). ``progress(n)`` is called with the
    number of input planes finished (or skipped) since the last call.
    ``blocks``: what writes the blocks of an OME-Zarr output into its partial
    store (default: this process, :func:`write_blocks`; a cluster run sends
    them to workers, ``batch.cluster``); this process claims, checks and
    publishes the store either way.

    The output is locked (:class:`~.stale.OutputLock`) from the check of an
    existing output to the rename of the new one, so one process at a time
    writes it; another one waits, then skips or refuses it as usual.
    """
    started = time.time()
    plan = None
    try:
        plan = plan_file(path, settings, inputs)
        out = plan.output.path
        out.parent.mkdir(parents=True, exist_ok=True)
        with stale.OutputLock(out, on_wait=_say):
            return _process(plan, settings, progress, started, blocks)
    except Exception as err:  # one bad file must not stop the batch
        message = disk_full_message(err, plan) or f"{type(err).__name__}: {err}"
        return Result(path, "failed", None, None, time.time() - started, message)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _process(plan: FilePlan, settings: Settings, progress: Progress | None, started: float,
             blocks: BlockRunner | None = None) -> Result:
    path, out = plan.source, plan.output.path
    notes = list(plan.info.warnings)
    if out.exists() and not settings.overwrite:
        damage = check_same_work(plan)
        if damage is None:
            stale.remove_stale(out)  # e.g. killed between the final rename and removing its partial file
            if progress:
                progress(plan.info.n_planes)
            return Result(path, "skipped", out, plan.output.shape, time.time() - started,
                          "; ".join(["output exists, same settings, pixels verified", *notes]))
        notes.append(f"the existing output {damage}: recomputed")
        _say(f"{out}: {damage}; recomputing it")
    if plan.output.kind == "ome-zarr" and plan.volumes is None:
        if settings.self_adapt:  # the block path decodes with the run's model only: refuse, never record it unmet
            raise ValueError(f"--self-adapt is not available for OME-Zarr outputs ({out.name} is written block by "
                             "block with the bundled model); write this input as TIFF with --format tiff")
        return _process_store(plan, settings, progress, started, notes, blocks)
    work = VolumeWork(plan, settings) if plan.volumes is not None else PlaneWork(plan, settings)
    per_unit = plan.info.n_planes // plan.count
    with io.open_planes(plan.info) as reader:  # refuses an unreadable layout before a partial file exists
        partial = PartialFile.claim(out, plan.header_record, plan.unit_shape, plan.output.dtype, plan.count, plan.unit)
        if partial.discarded:
            notes.append("a partial file of other work (another input content or other settings) was discarded")
        if progress and partial.start:
            progress(partial.start * per_unit)
        try:
            for unit in work.units(reader, partial):
                partial.append(unit)
                if progress:
                    progress(per_unit)
            work.finish(partial)
        except BaseException:
            partial.discard_if_empty()
            raise
    notes += work.notes
    # the pixels' checksum, read back from the CRC-checked partial file, goes into the record the output carries;
    # a later skip verifies it
    record = dict(plan.record, pixels=pixel_digest(work.output_planes(partial)))
    # publish: the file is flushed, renamed into place and the folder flushed before the partial file goes
    with io.atomic_write(out, stale.tmp_path(out)) as tmp:
        io.format_of(plan.output).write(tmp, plan.output, work.output_planes(partial), record)
    partial.delete()
    if partial.start:
        notes.insert(0, f"resumed at {plan.unit} {partial.start + 1} of {plan.count}")
    return Result(path, "done", out, plan.output.shape, time.time() - started, "; ".join(notes))


def _process_store(plan: FilePlan, settings: Settings, progress: Progress | None, started: float,
                   notes: list[str], blocks: BlockRunner | None = None) -> Result:
    """An OME-Zarr output: blocks written by the engine straight into a partial store, resumed block by block.

    No output plane is held (a result larger than memory works): the engine
    decodes one level-0 chunk at a time into the hidden store, which lists
    every flushed block; a killed or interrupted run goes on at the first
    missing block. ``blocks`` writes the missing blocks (default: here, with
    ``progress``). The pixel checksum is read back from the store in row
    bands, then the folder is renamed into place.
    """
    path, out, info = plan.source, plan.output.path, plan.info
    with io.open_planes(info) as reader:  # refuses an unreadable layout before a partial store exists
        partial = PartialStore.claim(plan.output, plan.header_record)
        for why in partial.discarded:
            notes.append(f"a partial store of other work was discarded ({why})")
        store = partial.store
        try:
            if blocks is None:
                write_blocks(plan, settings, reader, store, progress)
            else:
                blocks(plan, settings, partial)
                store.refresh()  # the blocks other processes wrote
        except BaseException:
            partial.discard_if_empty()
            raise
    record = dict(plan.record, pixels=store_digest(store.array, plan.output))
    partial.publish(record)
    if partial.start:
        notes.insert(0, f"resumed at block {partial.start + 1} of {store.blocks_total}")
    return Result(path, "done", out, plan.output.shape, time.time() - started, "; ".join(notes))


def store_digest(array, output: io.ImageInfo) -> dict:
    """The pixel checksum of an OME-Zarr output's level-0 ``array``, read as stored in row bands (an RGB / RGBA
    output's colour planes on its c axis), for the ``output.n_planes`` planes it holds: the one rule for the
    checksum recorded when the store is published and the one a rerun verifies before it skips."""
    from ..io.omezarr import stored_bands

    return pixel_digest(stored_bands(array), count=output.n_planes)


def write_blocks(plan: FilePlan, settings: Settings, reader: io.PlaneSource, sink,
                 progress: Progress | None = None) -> None:
    """The engine writes the blocks ``sink`` lacks: a :class:`~diinn_napari.io.omezarr.BlockStore`, or some of its
    blocks (:meth:`~diinn_napari.io.omezarr.BlockStore.only`, a cluster task's share). One code path for both,
    so a block has the same bits whichever process decodes it."""
    from .. import engine  # torch loads here, in the worker

    info = plan.info
    per_plane = len(sink.block_windows())
    blocks_done = sum(sink.is_done(index, b) for index in np.ndindex(*info.leading) for b in sink.block_windows())
    reported = blocks_done // per_plane if per_plane else 0
    if progress and reported:
        progress(reported)
    run = settings.run.replace(output_shape=plan.output.yx, out_dtype=plan.output.dtype.name)
    if info.nodata is not None and run.nodata is None:
        run = run.replace(nodata=info.nodata)
    mask = io.data_mask(reader)  # a GeoTIFF's internal mask, as for plane outputs
    for step in engine.Engine(run).steps(_Planes(reader), rgb=info.rgb, out=sink, mask=mask):
        finished = step.done * info.n_planes // step.total if step.total else info.n_planes
        if progress and finished > reported:
            progress(finished - reported)
        reported = max(reported, finished)


class _Planes:
    """A reader as the (leading..., Y, X[, S]) array-like the engine reads one plane of at a time."""

    def __init__(self, reader: io.PlaneSource):
        self.reader, self.shape, self.dtype = reader, tuple(reader.info.shape), reader.info.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        return self.reader[tuple(int(i) for i in index)]


def check_same_work(plan: FilePlan) -> str | None:
    """Whether an existing output is this plan's work, complete: None if so.

    Refuses (ValueError) an output without a record or made with other
    settings or from another input (each difference named); returns what is
    wrong with an output of this work that is incomplete or damaged (its
    pixels do not match the checksum it recorded when written), which is then
    recomputed.
    """
    out = plan.output.path
    old = io.read_record(out)
    if old is None:
        raise ValueError(f"{out} exists but has no record of the settings it was made with; "
                         "use --overwrite to replace it, or another --out")
    found = differences(old, plan.record)
    if found:
        raise ValueError(f"{out} exists, made with other settings ({'; '.join(found)}); "
                         "use --overwrite to replace it, or another --out")
    expected = old.get("pixels")
    if not isinstance(expected, dict) or "sha256" not in expected:
        return "has no pixel checksum (written by an earlier version or cut short)"
    try:
        info = io.read_info(out)
        shape = tuple(plan.output.shape)
        if info.kind == "ome-zarr":  # as stored: an RGB / RGBA output's colour is its c axis
            from ..io.omezarr import stored_shape

            shape = stored_shape(plan.output)
        if tuple(info.shape) != shape or info.dtype != plan.output.dtype:
            return (f"holds {tuple(info.shape)} {info.dtype}, not the {shape} {plan.output.dtype} it records "
                    "(cut short)")
        if info.kind == "ome-zarr":  # a store: read in row bands, never a whole plane
            from ..io.omezarr import level0

            found_digest = store_digest(level0(info), plan.output)
        else:
            with io.open_planes(info) as reader:
                found_digest = pixel_digest(reader[index] for index in np.ndindex(*info.leading))
    except Exception as err:  # a torn file fails in many ways (tifffile, zlib, numpy): all mean "not complete"
        return f"cannot be read whole ({type(err).__name__}: {err}; cut short or damaged)"
    if found_digest != expected:
        return "does not match the pixel checksum it recorded (damaged or partly written)"
    return None


def disk_full_message(err: BaseException, plan: FilePlan | None) -> str | None:
    """What to say when ``err`` is a full disk (or quota): the folder, the space needed and the space free."""
    text = str(err)
    full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
    full = full or ("requested and" in text and "written" in text)  # numpy's tofile on a short write
    if not full or plan is None:
        return None
    folder = plan.output.path.parent
    output = math.prod(plan.output.shape) * plan.output.dtype.itemsize
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    return (f"no space left in {folder} ({free}): this file needs about {_size(2 * output)} there while it is "
            f"written (its partial file and the output, {_size(output)} each, uncompressed); free some space or "
            "choose another --out and rerun: finished planes are kept and resumed")


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class PlaneWork:
    """Units are output planes: the input's planes upscaled in Y and X by the engine, in file order."""

    def __init__(self, plan: FilePlan, settings: Settings):
        self.plan, self.settings = plan, settings
        self.adapted: list[bool] = []  # --self-adapt: per plane, whether the adapted copy beat the start on its strip

    @property
    def notes(self) -> list[str]:
        if not self.adapted:
            return []
        kept = self.adapted.count(False)
        return [f"self-adapted to {len(self.adapted)} plane(s), {self.settings.self_adapt} steps each"
                + (f"; on {kept} the adaptation did not beat the start on its check strip, so the start was used"
                   if kept else "")]

    def units(self, reader: io.PlaneSource, partial: PartialFile) -> Iterator[np.ndarray]:
        """The output planes from ``partial.start`` on."""
        from .. import engine  # torch loads here, in the worker

        info, output = self.plan.info, self.plan.output
        if partial.start >= info.n_planes:
            return
        run = self.settings.run.replace(output_shape=output.yx, out_dtype=output.dtype.name)
        if info.nodata is not None and run.nodata is None:  # the file's own (GDAL_NODATA)
            run = run.replace(nodata=info.nodata)
        mask = io.data_mask(reader)  # a GeoTIFF's internal mask: its pixels without data, for every plane
        planes = _PlanesFrom(reader, partial.start)
        if self.settings.self_adapt:
            yield from self._adapted(planes, run, mask)
            return
        for _, plane in engine.Engine(run).planes(planes, rgb=info.rgb, mask=mask):
            yield plane

    def _adapted(self, planes: _PlanesFrom, run, mask: np.ndarray | None) -> Iterator[np.ndarray]:
        """Each plane upscaled by a copy of the model adapted to that plane (``--self-adapt``).

        Plane by plane, so a resumed file adapts its next plane as a fresh run would.
        """
        from .. import engine
        from ..train.self_adapt import adapt_plane

        info, steps = self.plan.info, self.settings.self_adapt
        # the real output/input ratio, as the widget adapts: the same plane gets the same copy from either
        factors = tuple(o / i for o, i in zip(self.plan.output.yx, info.yx))
        for i in range(planes.shape[0]):
            plane = np.asarray(planes[i])
            adapted = adapt_plane(plane, factors, run, steps, rgb=info.rgb, mask=mask)
            self.adapted.append(adapted.improved)
            (_, out), = engine.Engine(run.replace(model=adapted.model)).planes(plane, rgb=info.rgb, mask=mask)
            yield out

    def finish(self, partial: PartialFile) -> None:
        pass

    def output_planes(self, partial: PartialFile) -> Iterator[np.ndarray]:
        for i in range(self.plan.count):
            yield partial.read(i)


class VolumeWork:
    """Units are output volumes (Z_out, Y, X): each input volume's Z resampled, optionally by an adapted model.

    The adapted weights are a companion of the partial file, so a resumed
    file goes on with the same model; ``--save-model`` gets a copy.
    """

    def __init__(self, plan: FilePlan, settings: Settings):
        self.plan, self.settings = plan, settings
        self.volumes: VolumePlan = plan.volumes
        self.notes: list[str] = []

    def units(self, reader: io.PlaneSource, partial: PartialFile) -> Iterator[np.ndarray]:
        """The output volumes from ``partial.start`` on, one input volume in memory at a time."""
        from ..isotropic import isotropic

        volumes, z = self.volumes, self.volumes.z
        if partial.start >= volumes.count:
            return
        run = self.settings.run.replace(out_dtype=self.plan.output.dtype.name, model=self._model(reader, partial))
        for flat in range(partial.start, volumes.count):
            index = volumes.volume_index(flat)
            data = np.stack([reader[volumes.file_index(index, k)] for k in range(z.shape[-3])])
            yield isotropic(data, z.spacing, z.target, settings=run, fusion=volumes.fusion)

    def _model(self, reader: io.PlaneSource, partial: PartialFile):
        """The run's model, or one adapted to this stack (made once, kept beside the partial file)."""
        adapt = self.volumes.adapt
        if adapt is None:
            return self.settings.run.model
        from ..weights import load_weights, save_weights

        weights = partial.companion("safetensors")
        if not weights.exists():
            from ..adapt import adapt as adapt_model

            z = self.volumes.z
            net = adapt_model(StackVolumes(reader, self.volumes), z.spacing, z.target, model=self.settings.run.model,
                              steps=adapt["steps"], axial_sigma=adapt["axial_sigma"], seed=adapt["seed"],
                              device=self.settings.run.device, intensity=self.settings.run.intensity)
            save_weights(net, weights, {"adapted_on": self.plan.info.path.name, "spacing": list(z.spacing),
                                        "target": z.target, **adapt})
        # the stored weights (float16), also right after adapting: every volume, resumed or not, and the
        # --save-model copy then agree to the bit
        return load_weights(weights)

    def finish(self, partial: PartialFile) -> None:
        """Copy the adapted weights to ``--save-model`` (before the output appears, so a skip later misses nothing)."""
        weights = partial.companion("safetensors")
        if self.plan.save_model is None or not weights.exists():
            return
        self.plan.save_model.parent.mkdir(parents=True, exist_ok=True)
        with io.atomic_write(self.plan.save_model) as tmp:
            shutil.copyfile(weights, tmp)

    def output_planes(self, partial: PartialFile) -> Iterator[np.ndarray]:
        """The output's planes in the file's axis order, sliced out of the volumes (all CRC-checked first)."""
        partial.check()
        for volume, k in self.volumes.output_order(self.plan.output.leading):
            yield partial.read_slice(volume, k)


class _PlanesFrom:
    """The planes of ``reader`` from flat number ``start`` on, as a (n, *plane) array-like for the engine."""

    def __init__(self, reader: io.PlaneSource, start: int):
        info = reader.info
        self.reader, self.start, self.leading = reader, start, info.leading
        self.shape = (info.n_planes - start, *info.plane_shape)
        self.dtype = info.dtype

    def __getitem__(self, index):
        flat = self.start + int(index[0] if isinstance(index, tuple) else index)
        return self.reader[tuple(int(i) for i in np.unravel_index(flat, self.leading))] if self.leading else self.reader[()]


class StackVolumes:
    """A file's (Z, Y, X) volumes as a (..., Z, Y, X) array-like that reads one plane per ``[volume][z]``.

    What adaptation needs (it reads every XY plane once) without holding the stack twice.
    """

    def __init__(self, reader: io.PlaneSource, volumes: VolumePlan, index: tuple[int, ...] | None = None):
        self.reader, self.volumes, self.index = reader, volumes, index
        self.shape = volumes.z.shape if index is None else volumes.z.shape[-3:]
        self.dtype = reader.info.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        if self.index is None and self.volumes.volumes:  # a leading index: one volume
            return StackVolumes(self.reader, self.volumes, tuple(int(i) for i in np.atleast_1d(key)))
        return self.reader[self.volumes.file_index(self.index or (), int(key))]
