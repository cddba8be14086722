"""The settings record of one output: what it holds and how two records compare.

An output and its partial file carry the record (stored by the output's
format, :mod:`diinn_napari.io.record`); a rerun compares the keys in
:data:`COMPARED` and skips, resumes or refuses accordingly, naming each
difference.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

# Keys that decide whether an existing output or partial file is the same work. "isotropic" (Z steps in and out,
# output planes, fusion, adaptation) is in the record of --isotropic runs only, and "precision" only when it is not
# the exact fp32, "ensemble" only when it is on, "nodata" only for files that declare one, "cog" only with --cog
# and "self_adapt" only with --self-adapt ("trust_map" only in the widget's stores that have one), so the records
# of earlier versions still match.
COMPARED = ("input", "output_yx", "model", "intensity", "dtype", "consistency", "outlier_clamp", "isotropic",
            "precision", "ensemble", "nodata", "cog", "self_adapt", "trust_map")
LABELS = {"input": "input file", "output_yx": "output size (Y, X)", "model": "model", "intensity": "intensity",
          "dtype": "output dtype", "consistency": "data consistency steps", "outlier_clamp": "outlier clamp",
          "isotropic": "isotropic Z resampling", "precision": "precision", "ensemble": "geometric self-ensemble",
          "nodata": "nodata", "cog": "Cloud-Optimized GeoTIFF", "self_adapt": "self-adaptation to each plane",
          "trust_map": "trust map"}


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int, ctime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_files(path: Path) -> list[tuple[str, Path]]:
    """The files of a folder (a store: OME-Zarr) by relative POSIX path, sorted; links are followed as the reader does."""
    return sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())


@functools.lru_cache(maxsize=16)
def _folder_sha256(path: str, stats: tuple) -> str:
    digest = hashlib.sha256()
    for name, file in _folder_files(Path(path)):
        digest.update(name.encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def content_size(path: Path) -> int:
    """The bytes of a file, or of every file in a folder (a store)."""
    if path.is_dir():
        return sum(file.stat().st_size for _, file in _folder_files(path))
    return path.stat().st_size


def file_identity(path: Path) -> dict:
    """A file by name and content hash (hashed once per size, modification and change time in a process).

    A folder (an OME-Zarr store) is hashed over its files' relative names and
    contents in sorted order, so a chunk rewritten in place is other content.
    """
    path = path.resolve()
    if path.is_dir():
        stats = tuple((name, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                      for name, st in ((n, f.stat()) for n, f in _folder_files(path)))
        return {"file": path.name, "sha256": _folder_sha256(str(path), stats)}
    stat = path.stat()
    return {"file": path.name, "sha256": _sha256(str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)}


def pixel_digest(planes: Iterable[np.ndarray], count: int | None = None) -> dict:
    """The checksum of an output's pixels: SHA-256 of its planes in file order, each as C-order native-endian bytes.

    ``planes`` may also be row bands of the planes, in order (the same bytes,
    the same checksum: a store is checked without holding a plane); then
    ``count`` gives the number of planes.

    Recorded in the output when it is written and verified before an existing
    output is skipped, so a torn file (cut short, or partly zeroed by a crash
    of the disk's cache) is never taken as done.
    """
    digest, seen = hashlib.sha256(), 0
    for plane in planes:
        plane = np.asarray(plane)
        # hashed through the buffer protocol: no bytes copy of the plane (or band)
        digest.update(np.ascontiguousarray(plane, dtype=plane.dtype.newbyteorder("=")))
        seen += 1
    return {"sha256": digest.hexdigest(), "planes": seen if count is None else count}


def compared(record: dict) -> dict:
    """The part of a record that decides whether two runs make the same file."""
    return {k: record[k] for k in COMPARED if k in record}


def differences(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two records in the compared keys (empty: the same work)."""
    def show(key, value):
        if key == "input" and isinstance(value, dict):
            sha = value.get("sha256")
            return (f"{value.get('name')} ({value.get('bytes')} bytes, "
                    f"{'content sha256 ' + str(sha)[:12] if sha else 'no content checksum'})")
        if key == "model" and isinstance(value, dict):
            return f"{value.get('file')} (sha256 {str(value.get('sha256'))[:12]})"
        if key == "output_yx" and isinstance(value, list):
            return " x ".join(map(str, value))
        return json.dumps(value) if isinstance(value, (dict, list)) else str(value)

    return [f"{LABELS[k]}: {show(k, old.get(k))} there, {show(k, new.get(k))} now"
            for k in COMPARED if old.get(k) != new.get(k)]
