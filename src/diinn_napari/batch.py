"""Batch super-resolution of image files, keeping axes, dtype and metadata.

    python -m diinn_napari.batch INPUT... (--scale S | --scale SY,SX | --pixel-size P) --out DIR
        [--model M] [--device D] [--tile-size T] [--intensity I] [--dtype T] [--overwrite]
        [--workers N] [--scheduler ADDRESS]
    python -m diinn_napari.batch STACK.tif... --isotropic [--z-step DZ] [--target DZ_OUT] --out DIR [...]

Reads one YX plane at a time and writes frame by frame. Never writes over an
input. Each finished plane goes to a hidden partial file in the output folder
(``.<name>.<host>-<pid>.partial``, flushed to disk plane by plane); the output
is written from it to a temporary file and renamed into place, so an
interrupted run leaves no half-written output, and a rerun resumes a killed
file from its last finished plane. Every output records the settings it was
made with; a rerun skips outputs made with the same settings and refuses
(that file fails) to replace ones made with others unless --overwrite. One bad
file is reported and the batch goes on; the exit code is 1 when any file
failed.

--isotropic resamples the Z axis of TIFF stacks to their XY pixel size (or
--target) with diinn_napari.isotropic, one (Z, Y, X) volume at a time; the
output's Z spacing (ImageJ spacing, OME PhysicalSizeZ) is the new Z step.
"""

from __future__ import annotations

import argparse
import functools
import glob
import hashlib
import json
import math
import os
import re
import socket
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import __version__
from .intensity import INTENSITY_MODES
from .settings import DEFAULT_CONSISTENCY, OUTPUT_DTYPES, PRECISIONS, RunSettings, output_size
from .images import SUFFIXES, TIFF_SUFFIXES, ImageInfo, PlaneReader, read_info, read_record, write_planes

# Keys of the settings record that decide whether an existing output or partial file is the same work.
# "isotropic" (Z steps in and out, output planes) is in the record of --isotropic runs only, so plane-wise
# records and partial-file headers stay those of earlier versions.
# "precision" is recorded only when it is not the exact fp32, so records of earlier versions still match.
COMPARED = ("input", "output_yx", "model", "intensity", "dtype", "consistency", "outlier_clamp", "isotropic",
            "precision")
_LABELS = {"input": "input file", "output_yx": "output size (Y, X)", "model": "model", "intensity": "intensity",
           "dtype": "output dtype", "consistency": "data consistency steps", "outlier_clamp": "outlier clamp",
           "isotropic": "isotropic Z resampling", "precision": "precision"}
_MAGIC = b"DIINN-PARTIAL/1\n"


@dataclass(frozen=True)
class Settings:
    """What to do to every file (picklable: it travels to worker processes and dask workers).

    out_dir: output folder (created when the first output is written).
    run: the engine's :class:`~diinn_napari.settings.RunSettings` (model,
        device, tile size, intensity, output dtype, data consistency, threads,
        ...). Its size is ``scale`` (sy, sx) or ``pixel_size`` (the target XY
        pixel size in each file's own unit); with ``isotropic=True`` it has no
        size (Y and X keep their pixels).
    isotropic: resample Z instead, to each file's XY pixel size or ``target``.
    z_step, target: with isotropic, the input Z step (default: each file's
        ImageJ spacing / OME PhysicalSizeZ) and the output Z step (default:
        each file's XY pixel size), in the file's unit.
    overwrite: replace existing outputs even when they were made with other settings.
    show_progress: a progress bar on stderr (only when stderr is a terminal).
    """

    out_dir: Path
    run: RunSettings = RunSettings()
    isotropic: bool = False
    z_step: float | None = None
    target: float | None = None
    overwrite: bool = False
    show_progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if not isinstance(self.run, RunSettings):
            raise TypeError(f"run must be a diinn_napari.RunSettings, got {type(self.run).__name__}")
        if self.run.output_shape is not None:
            raise ValueError("a batch sizes each file by scale or pixel_size, not by one output_shape")
        if (self.run.scale is not None) + (self.run.pixel_size is not None) + bool(self.isotropic) != 1:
            raise ValueError("give exactly one of scale (sy, sx), pixel_size or isotropic=True")
        for name in ("z_step", "target"):
            value = getattr(self, name)
            if value is None:
                continue
            if not self.isotropic:
                raise ValueError(f"{name} is an option of isotropic resampling (isotropic=True, --isotropic)")
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a number > 0 (in the files' unit), got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.run.out_dtype is not None and self.run.out_dtype not in OUTPUT_DTYPES:
            raise ValueError(f"the output dtype must be one of {OUTPUT_DTYPES} or None (the input's), got {self.run.out_dtype!r}")


@dataclass
class Result:
    """What happened to one input file."""

    path: Path
    status: str  # "done", "skipped", "failed"
    output: Path | None = None
    shape: tuple[int, ...] | None = None
    seconds: float = 0.0
    message: str = ""


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their image files, not recursive) and glob patterns -> sorted unique paths.

    Files named explicitly are kept whatever their type (a wrong one is reported
    as failed); inside folders only image suffixes count.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += [p for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in SUFFIXES]
        elif path.exists():
            found.append(path)
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no such file, folder or matching pattern: {item}")
            found += [Path(m) for m in matches if Path(m).is_file()]
    return list(dict.fromkeys(p.resolve() for p in found))


def output_path(path: Path, out_dir: Path) -> Path:
    """TIFFs keep their name; PNG and JPEG become PNG (no second lossy compression)."""
    name = path.name if path.suffix.lower() in (".tif", ".tiff", ".png") else path.stem + ".png"
    return out_dir / name


def check_output_names(paths: list[Path], out_dir: Path) -> None:
    """Raise ValueError when two inputs would be written to the same output file."""
    seen: dict[Path, Path] = {}
    for path in paths:
        out = output_path(path, out_dir)
        if out in seen:
            raise ValueError(f"{seen[out]} and {path} would both be written to {out}; process them into separate --out folders")
        seen[out] = path


def scale_for(info: ImageInfo, settings: Settings) -> tuple[float, float]:
    """Per-axis factor from --scale, or from --pixel-size and the file's own pixel size."""
    if settings.run.pixel_size is not None and info.pixel_size is None:
        raise ValueError(f"{info.path.name} has no pixel size in its metadata; use --scale instead of --pixel-size")
    return settings.run.factors(info.pixel_size)


def isotropic_plan(info: ImageInfo, settings: Settings) -> dict:
    """How ``--isotropic`` resamples one file: its axes, Z steps and output shape; a ValueError naming the file.

    Returns ``order`` (the file's axes -> (..., Z, Y, X)), ``spacing`` (dz, dy,
    dx), ``target``, ``volumes`` (the leading shape, in file order, of the
    (Z, Y, X) volumes), ``shape`` (the output in the file's axis order),
    ``z_step_in``, ``z_step_out`` and ``z_planes`` ([Z in, Z out]).
    """
    from .isotropic import _volume_axes, isotropic_shape, output_spacing  # torch-free

    name = info.path.name
    if info.path.suffix.lower() not in TIFF_SUFFIXES:
        raise ValueError(f"{name}: --isotropic needs a TIFF Z stack (ImageJ, OME or multi-page TIFF); "
                         f"a {info.kind.upper()} file holds one plane")
    order = _volume_axes(info.axes, name)
    dz = settings.z_step if settings.z_step is not None else info.z_spacing
    if dz is None:
        raise ValueError(f"{name} has no Z calibration (no ImageJ 'spacing', no OME PhysicalSizeZ); "
                         "pass --z-step with its Z step, in the unit of its XY pixel size")
    if not (math.isfinite(dz) and dz > 0):
        raise ValueError(f"{name}: its Z step {dz!r} is not a number > 0; pass --z-step with the right one")
    if info.pixel_size is not None:
        dy, dx = info.pixel_size
    elif settings.target is not None:
        dy = dx = settings.target  # only target / dz matters then
    else:
        raise ValueError(f"{name} has no XY pixel size (resolution tags or OME PhysicalSizeX) to make Z match; "
                         "pass --target with the output Z step")
    spacing = (float(dz), float(dy), float(dx))
    if settings.target is None and dz <= min(dy, dx):
        raise ValueError(f"{name}: its Z step {dz:g} is not larger than its pixel size {min(dy, dx):g}: its voxels "
                         "are isotropic already (or finer in Z); --target gives a smaller Z step if you want one")
    shape_zyx = tuple(info.shape[i] for i in order)
    try:
        out_zyx = isotropic_shape(shape_zyx, spacing, settings.target)
        z_out = output_spacing(spacing, settings.target)[0]
    except ValueError as err:
        raise ValueError(f"{name} (Z step {dz:g}, pixel size {dy:g} x {dx:g}): {err}") from None
    if shape_zyx[-3] < 2:
        raise ValueError(f"{name} has {shape_zyx[-3]} Z plane: isotropic resampling needs at least 2")
    z_axis = order[-3]
    shape = list(info.shape)
    shape[z_axis] = out_zyx[-3]
    return {"order": order, "spacing": spacing, "target": settings.target, "z_axis": z_axis,
            "volumes": tuple(info.shape[i] for i in order[:-3]), "shape": tuple(shape),
            "z_step_in": spacing[0], "z_step_out": z_out, "z_planes": [shape_zyx[-3], out_zyx[-3]], "fusion": "mean"}


def _file_index(plan: dict, volume: tuple[int, ...], z: int) -> tuple[int, ...]:
    """The leading index, in the file's axis order, of plane ``z`` of volume ``volume``."""
    index = [0] * (len(plan["order"]) - 2)
    for axis, i in zip(plan["order"][:-3], volume):
        index[axis] = int(i)
    index[plan["z_axis"]] = int(z)
    return tuple(index)


def output_dtype(info: ImageInfo, settings: Settings) -> np.dtype:
    """The output's dtype: --dtype, else the input's own (float16 and float64 included)."""
    dtype = settings.run.output_dtype(info.dtype)
    if info.kind in ("png", "jpeg") and dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{info.path.name}: the output is a PNG, which holds uint8 or uint16, not {dtype}; use --dtype uint8 or uint16")
    return dtype


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_identity(model: str, channels: int) -> dict:
    """The weights file ``model`` resolves to for ``channels``, by name and content hash."""
    from .weights import resolve  # imports torch: only where the work happens

    path = resolve(model, channels).resolve()
    stat = path.stat()
    return {"file": path.name, "sha256": _sha256(str(path), stat.st_size, stat.st_mtime_ns)}


def run_record(info: ImageInfo, settings: Settings, out_yx: tuple[int, int], dtype: np.dtype,
               isotropic: dict | None = None) -> dict:
    """The settings an output is made with, stored in the output and in its partial file.

    The keys in ``COMPARED`` decide whether two runs make the same file; the
    rest (how the size was asked for, the software version) is information.
    ``isotropic``: the Z resampling of an isotropic run (:func:`isotropic_plan`).
    """
    if settings.isotropic:
        request = {"isotropic": True, "z_step": settings.z_step, "target": settings.target}
    else:
        request = {"scale": list(settings.run.scale)} if settings.run.scale else {"pixel_size": list(settings.run.pixel_size)}
    record = {
        "input": {"name": info.path.name, "shape": list(info.shape), "dtype": str(info.dtype),
                  "bytes": info.path.stat().st_size},
        "output_yx": list(out_yx),
        "model": model_identity(settings.run.model, 3 if info.rgb else 1),
        "intensity": settings.run.intensity,
        "dtype": np.dtype(dtype).name,
        "consistency": settings.run.consistency,
        "outlier_clamp": None if settings.run.outlier_clamp is None else list(settings.run.outlier_clamp),
        "request": {**request, "device": str(settings.run.device), "tile_size": settings.run.tile_size},
        "software": f"diinn-napari {__version__}",
    }
    if isotropic is not None:
        record["isotropic"] = {k: isotropic[k] for k in ("z_step_in", "z_step_out", "z_planes", "fusion")}
    if settings.run.precision != "fp32":
        record["precision"] = settings.run.precision
    return record


def settings_differences(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two records in the compared keys (empty: the same work)."""
    def show(key, value):
        if key == "model" and isinstance(value, dict):
            return f"{value.get('file')} (sha256 {str(value.get('sha256'))[:12]})"
        if key == "output_yx" and isinstance(value, list):
            return " x ".join(map(str, value))
        return json.dumps(value) if isinstance(value, (dict, list)) else str(value)

    return [f"{_LABELS[k]}: {show(k, old.get(k))} there, {show(k, new.get(k))} now"
            for k in COMPARED if old.get(k) != new.get(k)]


# ---- partial files -------------------------------------------------------------------------------
# A partial file is a header line (magic), a JSON line (the settings record and the plane layout),
# then one record per finished plane: its bytes and their CRC-32. A killed run leaves whole planes
# followed by at most one torn record, which the CRC rejects.
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_PARTIAL = re.compile(r"^\.(?P<out>.+)\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.(?P<kind>partial|tmp)(?P<suffix>\.\w+)?$")
_OLD_PARTIAL = re.compile(r"^\.(?P<stem>.+)\.partial-(?P<pid>\d+)(?P<suffix>\.\w+)$")  # versions before 0.2


def partial_path(out: Path) -> Path:
    """This process's partial file for output ``out``."""
    return out.with_name(f".{out.name}.{_HOST}-{os.getpid()}.partial")


def _tmp_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.{_HOST}-{os.getpid()}.tmp{out.suffix}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by another user
        return True
    return True


def _stale(name: str, out_name: str | None = None) -> tuple[str, bool] | None:
    """(kind, stale) of a partial/temporary file name; None if it is not one (or not for ``out_name``).

    Stale: made on this machine by a process that no longer runs, or by this
    process itself (left by an earlier failure of the same file). Files from
    other machines are left alone: their processes cannot be checked from here.
    """
    match = _PARTIAL.match(name)
    if match:
        if out_name is not None and match["out"] != out_name:
            return None
        pid = int(match["pid"])
        mine = match["host"] == _HOST and pid == os.getpid()
        return match["kind"], match["host"] == _HOST and (mine or not pid_alive(pid))
    match = _OLD_PARTIAL.match(name)
    if match:
        if out_name is not None and match["stem"] + match["suffix"] != out_name:
            return None
        return "old", not pid_alive(int(match["pid"]))
    return None


def remove_stale_files(out_dir: Path) -> list[Path]:
    """Delete the temporary files and the old-style partial files of processes that no longer run.

    Partial files of the current format are kept: they are resumed when their
    input is processed again.
    """
    removed = []
    if not out_dir.is_dir():
        return removed
    for path in out_dir.iterdir():
        state = _stale(path.name)
        if state is not None and state[0] in ("tmp", "old") and state[1]:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _remove_stale_partials(out: Path) -> None:
    for path in out.parent.iterdir():
        state = _stale(path.name, out.name)
        if state is not None and state[1]:
            path.unlink(missing_ok=True)


def _header(record: dict, plane_shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    layout = {"record": {k: record[k] for k in COMPARED if k in record}, "plane_shape": list(plane_shape),
              "dtype": np.dtype(dtype).str}
    return _MAGIC + json.dumps(layout, sort_keys=True).encode() + b"\n"


def _complete_planes(path: Path, header: bytes, plane_bytes: int) -> int:
    """Whole planes (CRC checked) in a partial file whose header is ``header``; -1 if the header differs."""
    with open(path, "rb") as fh:
        if fh.read(len(header)) != header:
            return -1
        count = 0
        while True:
            data = fh.read(plane_bytes + 4)
            if len(data) < plane_bytes + 4 or zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
                return count
            count += 1


def claim_partial(out: Path, header: bytes, plane_bytes: int) -> tuple[Path, int]:
    """This process's partial file for ``out`` and how many planes it already holds.

    A stale partial file with the same header (same settings and layout) is
    taken over, the one with most planes if several; other stale ones are
    deleted.
    """
    mine = partial_path(out)
    candidates = []
    for path in out.parent.iterdir():
        state = _stale(path.name, out.name)
        if state is None or not state[1]:
            continue
        planes = _complete_planes(path, header, plane_bytes) if state[0] == "partial" else -1
        if planes > 0:
            candidates.append((planes, path))
        else:
            path.unlink(missing_ok=True)
    candidates.sort(key=lambda c: (c[0], c[1] == mine))
    best = candidates.pop() if candidates else None
    for _, path in candidates:
        path.unlink(missing_ok=True)
    if best is None:
        with open(mine, "wb") as fh:
            fh.write(header)
        return mine, 0
    if best[1] != mine:
        os.replace(best[1], mine)
    with open(mine, "r+b") as fh:  # drop a torn last record
        fh.truncate(len(header) + best[0] * (plane_bytes + 4))
    return mine, best[0]


def _read_partial(path: Path, header: bytes, plane_shape: tuple[int, ...], dtype: np.dtype, count: int) -> Iterator[np.ndarray]:
    plane_bytes = math.prod(plane_shape) * dtype.itemsize
    with open(path, "rb") as fh:
        fh.seek(len(header))
        for i in range(count):
            data = fh.read(plane_bytes + 4)
            if len(data) < plane_bytes + 4 or zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
                raise OSError(f"{path.name}: plane {i + 1} is damaged on disk; delete this partial file and rerun")
            yield np.frombuffer(data[:-4], dtype).reshape(plane_shape)


class _PlanesFrom:
    """The planes of ``reader`` from flat number ``start`` on, as a (n, *plane) array-like for the engine."""

    def __init__(self, reader: PlaneReader, start: int):
        info = reader.info
        self.reader, self.start, self.leading = reader, start, info.leading
        self.shape = (info.n_planes - start, *info.plane_shape)
        self.dtype = info.dtype

    def __getitem__(self, index):
        flat = self.start + int(index[0] if isinstance(index, tuple) else index)
        return self.reader[tuple(int(i) for i in np.unravel_index(flat, self.leading))] if self.leading else self.reader[()]


def _compute_isotropic(reader: PlaneReader, partial: Path, start: int, settings: Settings, plan: dict,
                       dtype: np.dtype, progress: Callable[[int], object] | None) -> None:
    """Resample volumes ``start..`` of ``reader`` and append each to ``partial`` as soon as it is finished.

    One (Z, Y, X) input volume is read at a time (plane by plane) and its
    (Z_out, Y, X) output is one record of the partial file.
    """
    from .isotropic import isotropic

    n_z = plan["z_planes"][0]
    n_volumes = math.prod(plan["volumes"])
    with open(partial, "ab") as fh:
        for flat in range(start, n_volumes):
            volume = tuple(int(i) for i in np.unravel_index(flat, plan["volumes"])) if plan["volumes"] else ()
            data = np.stack([reader[_file_index(plan, volume, z)] for z in range(n_z)])
            out = isotropic(data, plan["spacing"], plan["target"], settings=settings.run.replace(out_dtype=dtype.name),
                            fusion=plan["fusion"])
            raw = np.ascontiguousarray(out).tobytes()  # the engine's rule gave it the output dtype
            fh.write(raw + struct.pack("<I", zlib.crc32(raw)))
            fh.flush()
            os.fsync(fh.fileno())  # a finished volume survives a crash or power loss
            if progress:
                progress(n_z)


def _isotropic_planes(path: Path, header: bytes, plan: dict, yx: tuple[int, int], dtype: np.dtype) -> Iterator[np.ndarray]:
    """The output planes in the file's order, read from a partial file of whole volumes (each CRC-checked first)."""
    n_out = plan["z_planes"][1]
    plane_bytes = math.prod(yx) * dtype.itemsize
    record = n_out * plane_bytes + 4
    n_volumes = math.prod(plan["volumes"])
    with open(path, "rb") as fh:
        for v in range(n_volumes):
            fh.seek(len(header) + v * record)
            data = fh.read(record)
            if len(data) < record or zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
                raise OSError(f"{path.name}: volume {v + 1} is damaged on disk; delete this partial file and rerun")
        out_leading = plan["shape"][:-2]
        zpos, lead_axes = plan["z_axis"], plan["order"][:-3]
        for index in np.ndindex(*out_leading):
            volume = tuple(index[a] for a in lead_axes)
            v = int(np.ravel_multi_index(volume, plan["volumes"])) if plan["volumes"] else 0
            fh.seek(len(header) + v * record + index[zpos] * plane_bytes)
            yield np.frombuffer(fh.read(plane_bytes), dtype).reshape(yx)


# ---- one file ------------------------------------------------------------------------------------
def _compute(engine, reader: PlaneReader, partial: Path, start: int, settings: Settings, info: ImageInfo,
             out_yx: tuple[int, int], dtype: np.dtype, progress: Callable[[int], object] | None) -> None:
    """Upscale planes ``start..`` of ``reader`` and append each to ``partial`` as soon as it is finished."""
    if start >= info.n_planes:
        return
    run = settings.run.replace(output_shape=out_yx, out_dtype=dtype.name)
    planes = engine.Engine(run).planes(_PlanesFrom(reader, start), rgb=info.rgb)
    with open(partial, "ab") as fh:
        for _, plane in planes:
            data = np.ascontiguousarray(plane).tobytes()
            fh.write(data + struct.pack("<I", zlib.crc32(data)))
            fh.flush()
            os.fsync(fh.fileno())  # a finished plane survives a crash or power loss
            if progress:
                progress(1)


def process_file(path: Path, settings: Settings, inputs: frozenset[Path] = frozenset(),
                 progress: Callable[[int], object] | None = None) -> Result:
    """Upscale one file (or, with ``settings.isotropic``, resample its Z axis) into ``settings.out_dir``.

    Never raises for a bad file; returns a Result. Isotropic runs keep one
    whole output volume per partial-file record, so they resume at the next
    (Z, Y, X) volume.

    ``progress(n)`` is called with the number of planes finished (or skipped) since the last call.
    """
    from . import engine  # torch loads here, in the worker

    started = time.time()
    out = output_path(path, settings.out_dir)
    try:
        if out.resolve() == path.resolve() or out.resolve() in inputs:
            raise ValueError(f"output {out} would overwrite an input; choose another --out folder")
        info = read_info(path)
        iso = isotropic_plan(info, settings) if settings.isotropic else None
        if iso is not None:
            H, W = info.yx
            shape = iso["shape"]
        else:
            H, W = output_size(info.yx, scale_for(info, settings))
            shape = info.upscaled_shape((H, W))
        dtype = output_dtype(info, settings)
        record = run_record(info, settings, (H, W), dtype, iso)
        if out.exists() and not settings.overwrite:
            old = read_record(out)
            if old is None:
                raise ValueError(f"{out} exists but has no record of the settings it was made with; "
                                 "use --overwrite to replace it, or another --out")
            differences = settings_differences(old, record)
            if differences:
                raise ValueError(f"{out} exists, made with other settings ({'; '.join(differences)}); "
                                 "use --overwrite to replace it, or another --out")
            _remove_stale_partials(out)  # e.g. killed between the final rename and removing its partial file
            if progress:
                progress(info.n_planes)
            return Result(path, "skipped", out, shape, time.time() - started, "output exists, same settings")
        if iso is not None:  # a partial-file record is a whole output volume
            plane_shape = (iso["z_planes"][1], H, W)
            count, unit = math.prod(iso["volumes"]), "volume"
        else:
            plane_shape = info.upscaled_shape((H, W))[len(info.leading):]
            count, unit = info.n_planes, "plane"
        plane_bytes = math.prod(plane_shape) * dtype.itemsize
        header = _header(record, plane_shape, dtype)
        with PlaneReader(info) as reader:  # refuses an unreadable layout before a partial file exists
            out.parent.mkdir(parents=True, exist_ok=True)
            partial, start = claim_partial(out, header, plane_bytes)
            note = f"resumed at {unit} {start + 1} of {count}" if start else ""
            if progress and start:
                progress(start * info.n_planes // count)
            try:
                if iso is not None:
                    _compute_isotropic(reader, partial, start, settings, iso, dtype, progress)
                else:
                    _compute(engine, reader, partial, start, settings, info, (H, W), dtype, progress)
            except BaseException:
                if partial.stat().st_size <= len(header):  # nothing finished: nothing to resume
                    partial.unlink(missing_ok=True)
                raise
        tmp = _tmp_path(out)
        try:
            if iso is not None:
                # Z spacing: the new step (ImageJ 'spacing', OME PhysicalSizeZ); per-plane labels no longer match
                imagej = {k: v for k, v in info.imagej.items() if k != "Labels"}
                if info.kind == "imagej":
                    imagej["spacing"] = iso["z_step_out"]
                out_info = replace(info, shape=shape, z_spacing=iso["z_step_out"], imagej=imagej)
                planes = _isotropic_planes(partial, header, iso, (H, W), dtype)
                write_planes(tmp, out_info, (H, W), dtype, planes, record)
            else:
                write_planes(tmp, info, (H, W), dtype, _read_partial(partial, header, plane_shape, dtype, info.n_planes),
                             record)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        partial.unlink()
        return Result(path, "done", out, shape, time.time() - started, note)
    except Exception as err:  # one bad file must not stop the batch
        return Result(path, "failed", None, None, time.time() - started, f"{type(err).__name__}: {err}")


# ---- many files ----------------------------------------------------------------------------------
def _count_planes(path: Path) -> int:
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        return 1
    try:
        return read_info(path).n_planes
    except Exception:  # an unreadable file fails later, with its message
        return 0


def run_batch(paths: list[Path], settings: Settings, workers: int = 1, scheduler: str | None = None) -> list[Result]:
    """Process every file: in this process, in ``workers`` processes, or on a dask.distributed cluster.

    Results come in the order of ``paths``. The output folder is created when
    a file starts writing, and removed again if the run left nothing in it. One progress bar (planes of all files) is
    shown on stderr when ``settings.show_progress`` and stderr is a terminal.
    Raises ValueError when two inputs would share an output, ImportError when
    ``scheduler`` is given without dask.distributed installed.
    """
    check_output_names(paths, settings.out_dir)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    remove_stale_files(settings.out_dir)
    created = not settings.out_dir.exists()
    try:
        return _run(paths, settings, workers, scheduler)
    finally:
        if created and settings.out_dir.is_dir() and not any(settings.out_dir.iterdir()):
            settings.out_dir.rmdir()  # every file failed before writing: leave nothing behind


def _run(paths: list[Path], settings: Settings, workers: int, scheduler: str | None) -> list[Result]:
    inputs = frozenset(paths)
    if scheduler:
        try:
            from distributed import Client
        except ImportError as err:
            raise ImportError("--scheduler needs dask.distributed: pip install 'diinn-napari[distributed]'") from err
        remote = replace(settings, show_progress=False)
        with Client(scheduler) as client:
            futures = client.map(process_file, paths, settings=remote, inputs=inputs, pure=False)
            return client.gather(futures)
    from tqdm import tqdm

    show = settings.show_progress and sys.stderr.isatty()  # no bar, and no escape codes, in a redirected log
    bar = tqdm(total=sum(_count_planes(p) for p in paths), unit="plane", dynamic_ncols=True) if show else None
    try:
        if workers > 1:
            # cores / workers threads each unless told otherwise: oversubscribed torch threads thrash
            threads = settings.run.threads or max(1, (os.cpu_count() or 1) // workers)
            per_worker = replace(settings, show_progress=False, run=settings.run.replace(threads=threads))
            results: list[Result | None] = [None] * len(paths)
            with ProcessPoolExecutor(workers) as pool:
                futures = {pool.submit(process_file, p, per_worker, inputs): i for i, p in enumerate(paths)}
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = future.result()
                    if bar is not None:
                        bar.update(_count_planes(paths[i]))
            return results
        results = []
        for path in paths:
            if bar is not None:
                bar.set_description(path.name)
            results.append(process_file(path, settings, inputs, bar.update if bar is not None else None))
        return results
    finally:
        if bar is not None:
            bar.close()


def summary(results: list[Result]) -> str:
    """The table printed at the end of a run: file, status, output shape, seconds, note; then the counts."""
    rows = [("file", "status", "output shape", "seconds", "note")]
    rows += [(r.path.name, r.status, "x".join(map(str, r.shape)) if r.shape else "-", f"{r.seconds:.1f}", r.message)
             for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + ("  " + row[4] if row[4] else "") for row in rows]
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    lines.append(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    return "\n".join(lines)


# ---- command line --------------------------------------------------------------------------------
def parse_scale(text: str) -> tuple[float, float]:
    """``"S"`` or ``"SY,SX"`` -> (sy, sx), each a finite number >= 1 (argparse type)."""
    message = f"--scale takes S or SY,SX with numbers >= 1 (DIINN only upscales), got {text!r}"
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not all(math.isfinite(v) and v >= 1 for v in values):
        raise argparse.ArgumentTypeError(message)
    return (values[0], values[1])


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m diinn_napari.batch``."""
    p = argparse.ArgumentParser(prog="python -m diinn_napari.batch", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", help="files, folders or glob patterns (TIFF, OME-TIFF, ImageJ, PNG, JPEG)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--scale", type=parse_scale, default=None,
                      help="output/input size ratio: S, or SY,SX for Y and X apart; each >= 1")
    size.add_argument("--pixel-size", type=_positive_float, default=None,
                      help="target XY pixel size in each file's own unit (the factor comes from its metadata)")
    size.add_argument("--isotropic", action="store_true",
                      help="resample Z instead: TIFF Z stacks (ZYX, ZCYX, TZCYX, ...) get Z planes at their XY pixel "
                           "size (or --target), point-sampled from the first plane; Y and X keep their pixels")
    p.add_argument("--z-step", type=_positive_float, default=None,
                   help="with --isotropic: the input Z step, for files without one (ImageJ spacing, OME "
                        "PhysicalSizeZ) or to override it; in the unit of the XY pixel size")
    p.add_argument("--target", type=_positive_float, default=None,
                   help="with --isotropic: the output Z step in each file's unit (None: its XY pixel size); "
                        "at most the input Z step")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (required; created when the first output is written)")
    p.add_argument("--model", default="default",
                   help="'default' (bundled gray or RGB model by the file's channels), a bundled name, or a weights file")
    p.add_argument("--device", default="auto", help="'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'")
    p.add_argument("--tile-size", type=_int_at_least(0), default=0,
                   help="LR tile edge in pixels; bounds memory per tile; 0 = automatic for the device")
    p.add_argument("--intensity", choices=INTENSITY_MODES, default="auto",
                   help="intensity mapping: auto (uint8 by range, others by robust percentiles of each plane), "
                        "percentile, dtype (the integer range) or none (values already 0..1)")
    # default None = the mode's own; "%(default).0s" prints nothing, so argparse adds no "(default: None)"
    p.add_argument("--consistency", type=_int_at_least(0), default=None,
                   help="data consistency: back-projection steps after the network, so that the output downsampled "
                        "with the training degradation gives back the input (0 = off; default: "
                        f"{DEFAULT_CONSISTENCY}, and 0 with --isotropic, whose planes may be axially blurred)"
                        "%(default).0s")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (exact); bf16: about 1.5x faster on CPUs with avx512_bf16/AMX and on CUDA, within "
                        "0.01 dB (README), slower on CPUs without them; fp16: CUDA only")
    p.add_argument("--dtype", choices=("input",) + OUTPUT_DTYPES, default="input",
                   help="output pixel type; 'input' keeps each file's own (float16 and float64 included)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs, also those made with other settings (same settings are skipped otherwise)")
    p.add_argument("--workers", type=_int_at_least(1), default=1,
                   help="files processed in parallel on this machine (each gets cores / N torch threads unless --threads)")
    p.add_argument("--threads", type=_int_at_least(1), default=None,
                   help="torch CPU threads per worker (default: all cores, or cores / --workers)%(default).0s")
    p.add_argument("--scheduler", default=None,
                   help="address of a dask.distributed scheduler to send the files to (e.g. tcp://10.0.0.5:8786)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the batch command line; returns the exit code (0 ok, 1 a file failed, 2 bad arguments, 130 interrupted)."""
    p = build_parser()
    a = p.parse_args(argv)
    try:
        paths = collect_inputs(a.inputs)
    except FileNotFoundError as err:
        p.error(str(err))
    if not paths:
        p.error("no input files found")
    # everything that would make every file fail is checked before anything is created
    from .devices import pick_device
    from .weights import BUNDLED, WeightsError, bundled_path

    try:
        pick_device(a.device)
    except ValueError as err:
        p.error(f"argument --device: {err}")
    try:
        if a.model in BUNDLED:
            bundled_path(a.model)
        elif a.model != "default" and not Path(a.model).expanduser().is_file():
            raise WeightsError(f"weights file not found: {a.model} (bundled models: {sorted(BUNDLED)})")
    except WeightsError as err:
        p.error(f"argument --model: {err}")
    if not a.isotropic and (a.z_step is not None or a.target is not None):
        p.error("--z-step and --target go with --isotropic (Z resampling); --scale and --pixel-size size Y and X")
    try:
        consistency = a.consistency if a.consistency is not None else 0 if a.isotropic else DEFAULT_CONSISTENCY
        run = RunSettings(scale=a.scale, pixel_size=a.pixel_size, model=a.model, device=a.device,
                          tile_size=a.tile_size or None, intensity=a.intensity, threads=a.threads, precision=a.precision,
                          out_dtype=None if a.dtype == "input" else a.dtype, consistency=consistency)
        settings = Settings(a.out, run, isotropic=a.isotropic, z_step=a.z_step, target=a.target, overwrite=a.overwrite)
        check_output_names(paths, settings.out_dir)
    except ValueError as err:
        p.error(str(err))
    try:
        results = run_batch(paths, settings, a.workers, a.scheduler)
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished files are kept and the file in progress keeps its finished planes; "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    print(summary(results))
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
