"""The partial file: finished units of one output (planes, or whole volumes), checksummed, flushed one by one.

Layout: a magic line, a JSON line (the compared part of the settings record,
the unit shape and dtype), then one record per finished unit: its bytes and
their CRC-32. A killed run leaves whole units followed by at most one torn
record, which the CRC rejects; a rerun with the same header resumes after the
last whole unit. Companion files (``<partial>.<ext>``, e.g. the weights a
stack was adapted with) travel with the partial file when it is taken over.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from . import stale

MAGIC = b"DIINN-PARTIAL/1\n"


class PartialFile:
    """One output's partial file, owned by this process (make it with :meth:`claim`).

    ``start``: the units it held when claimed (the work resumes there);
    ``unit``: what one record is, for messages ("plane", "volume").
    """

    def __init__(self, path: Path, header: bytes, unit_shape: tuple[int, ...], dtype: np.dtype, count: int,
                 unit: str = "plane", start: int = 0):
        self.path, self.header, self.unit = path, header, unit
        self.unit_shape, self.dtype, self.count, self.start = tuple(unit_shape), np.dtype(dtype), count, start
        self.unit_bytes = math.prod(self.unit_shape) * self.dtype.itemsize
        self.discarded = 0  # stale partial files of other work deleted by claim

    @staticmethod
    def make_header(record: dict, unit_shape: tuple[int, ...], dtype) -> bytes:
        """The header line of a partial file for this work: equal headers, same work and layout."""
        layout = {"record": record, "plane_shape": list(unit_shape), "dtype": np.dtype(dtype).str}
        return MAGIC + json.dumps(layout, sort_keys=True).encode() + b"\n"

    @classmethod
    def claim(cls, out: Path, record: dict, unit_shape: tuple[int, ...], dtype, count: int,
              unit: str = "plane") -> PartialFile:
        """This process's partial file for output ``out``, holding the units already finished.

        Called with the output's lock held (:class:`~.stale.OutputLock`). A
        stale partial file with the same header (same compared settings, input
        content and layout) is taken over with its companions, the one with most units if
        several; other stale ones are deleted. The folder must exist.
        """
        header = cls.make_header(record, unit_shape, dtype)
        mine = stale.partial_path(out)
        probe = cls(mine, header, unit_shape, dtype, count, unit)
        candidates, companions = [], []
        for hidden in stale.hidden_files(out):
            if not hidden.stale:
                continue
            if hidden.kind == "tmp":  # a final write that never finished: its partial file holds the work
                stale.remove(hidden.path)
                continue
            if hidden.kind == "companion":
                companions.append(hidden)
                continue
            units = probe._whole_units(hidden.path) if hidden.kind == "partial" and hidden.path.is_file() else -1
            if units >= 0:
                candidates.append((units, hidden.path == mine, hidden.path))
            else:  # other work (another input's content, other settings, a store's folder): never resumed here
                stale.remove(hidden.path)
                probe.discarded += 1
        candidates.sort()
        best = candidates.pop() if candidates else None
        for _, _, path in candidates:
            path.unlink(missing_ok=True)
        for companion in companions:
            if best is not None and companion.owner == best[2]:
                os.replace(companion.path, mine.with_name(mine.name + companion.path.name[len(best[2].name):]))
            else:
                companion.path.unlink(missing_ok=True)
        if best is None:
            with open(mine, "wb") as fh:
                fh.write(header)
            return probe
        if best[2] != mine:
            os.replace(best[2], mine)
        with open(mine, "r+b") as fh:  # drop a torn last record
            fh.truncate(len(header) + best[0] * (probe.unit_bytes + 4))
        probe.start = min(best[0], count)
        return probe

    def _whole_units(self, path: Path) -> int:
        """Whole units (CRC checked) in the partial file ``path``; -1 if its header is not this one."""
        with open(path, "rb") as fh:
            if fh.read(len(self.header)) != self.header:
                return -1
            units = 0
            while _checked(fh.read(self.unit_bytes + 4), self.unit_bytes) is not None:
                units += 1
            return units

    def append(self, unit: np.ndarray) -> None:
        """Add the next finished unit and flush it to disk (it survives a crash or power loss)."""
        data = np.ascontiguousarray(unit, dtype=self.dtype).tobytes()
        if len(data) != self.unit_bytes:
            raise ValueError(f"a {self.unit} of shape {np.shape(unit)}; the partial file holds {self.unit_shape}")
        with open(self.path, "ab") as fh:
            fh.write(data + struct.pack("<I", zlib.crc32(data)))
            fh.flush()
            os.fsync(fh.fileno())

    def read(self, i: int) -> np.ndarray:
        """Unit ``i`` (0-based), CRC checked; an OSError names a damaged one."""
        with open(self.path, "rb") as fh:
            fh.seek(len(self.header) + i * (self.unit_bytes + 4))
            data = _checked(fh.read(self.unit_bytes + 4), self.unit_bytes)
        if data is None:
            raise OSError(f"{self.path.name}: {self.unit} {i + 1} is damaged on disk; delete this partial file and rerun")
        return np.frombuffer(data, self.dtype).reshape(self.unit_shape)

    def check(self) -> None:
        """CRC-check every unit (one in memory at a time); an OSError names the first damaged one."""
        for i in range(self.count):
            self.read(i)

    def read_slice(self, i: int, k: int) -> np.ndarray:
        """Element ``k`` along the first axis of unit ``i`` (e.g. one Z plane of a volume), read alone, unchecked
        (call :meth:`check` first)."""
        part = self.unit_bytes // self.unit_shape[0]
        with open(self.path, "rb") as fh:
            fh.seek(len(self.header) + i * (self.unit_bytes + 4) + k * part)
            return np.frombuffer(fh.read(part), self.dtype).reshape(self.unit_shape[1:])

    def companion(self, ext: str) -> Path:
        """The path of a companion file (``ext`` without the dot) that is taken over with this partial file."""
        return self.path.with_name(f"{self.path.name}.{ext}")

    def _companions(self) -> list[Path]:
        return [p for p in self.path.parent.glob(f"{self.path.name}.*")]

    def discard_if_empty(self) -> None:
        """Delete the partial file when it holds no unit and no companion: there is nothing to resume."""
        if self.path.exists() and self.path.stat().st_size <= len(self.header) and not self._companions():
            self.path.unlink(missing_ok=True)

    def delete(self) -> None:
        """Delete the partial file and its companions (once the output is in place)."""
        for path in self._companions():
            path.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)


def _checked(data: bytes, size: int) -> bytes | None:
    """The payload of one record, or None when it is short or its CRC does not match."""
    if len(data) < size + 4 or zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        return None
    return data[:-4]
