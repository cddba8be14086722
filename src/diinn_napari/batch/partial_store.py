"""The partial store: an OME-Zarr output being made, block by block, in a hidden folder beside the output.

The store format's counterpart of :mod:`.partial`: the folder
``.<output>.<host>-<pid>.partial`` is a complete multiscale OME-Zarr image
whose finished blocks (level-0 chunks and their lower-level regions) are
flushed and listed in its ledger (:class:`~diinn_napari.io.omezarr.BlockStore`).
A rerun with the same work (the same header: compared settings, input
content, shape, dtype) takes a stale one over and goes on at the first
missing block; one of other work is discarded, each difference named. When
every block is in, the final record (with the pixel checksum) is stored,
the ledger removed and the folder renamed into place (:func:`~diinn_napari.io.publish`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import io
from . import stale
from .record import differences


def make_header(record: dict, info: io.ImageInfo) -> bytes:
    """The header of a partial store for this work: equal headers, same work and layout."""
    layout = {"record": record, "shape": list(info.shape), "dtype": info.dtype.str}
    return b"DIINN-PARTIAL-STORE/1\n" + json.dumps(layout, sort_keys=True).encode() + b"\n"


class PartialStore:
    """This process's partial store for one output (make it with :meth:`claim`).

    ``store``: the :class:`~diinn_napari.io.omezarr.BlockStore` to hand to the engine;
    ``start``: blocks it held when claimed; ``discarded``: notes on the stale
    partial stores of other work that were deleted (each naming its differences).
    """

    def __init__(self, path: Path, store, start: int, discarded: list[str]):
        self.path, self.store, self.start, self.discarded = path, store, start, discarded

    @classmethod
    def claim(cls, plan_output: io.ImageInfo, record: dict) -> PartialStore:
        """The partial store of output ``plan_output.path`` holding the blocks already finished.

        Called with the output's lock held. A stale partial store of the same
        work is taken over (the one with most blocks if several), others deleted;
        a stale partial *file* of this output name (an earlier TIFF-style run) is other work too.
        """
        from ..io.omezarr import BlockStore

        out = plan_output.path
        header = make_header(record, plan_output)
        mine = stale.partial_path(out)
        best, best_path, discarded = None, None, []
        for hidden in stale.hidden_files(out):
            if not hidden.stale or hidden.kind not in ("partial", "tmp", "companion"):
                continue
            if hidden.kind == "partial" and hidden.path.is_dir():
                found = BlockStore.open(hidden.path, dataclass_at(plan_output, hidden.path), header)
                if found is not None:
                    if best is None or len(found.done) > len(best.done):
                        if best_path is not None:
                            stale.remove(best_path)
                        best, best_path = found, hidden.path
                    else:
                        stale.remove(hidden.path)
                    continue
                discarded.append(why_other(hidden.path, header))
            stale.remove(hidden.path)
        if best is not None and best_path != mine:
            os.replace(best_path, mine)
            best = BlockStore.open(mine, dataclass_at(plan_output, mine), header)
        if best is None:
            best = BlockStore.create(mine, dataclass_at(plan_output, mine), header, record)
        return cls(mine, best, len(best.done), discarded)

    def publish(self, record: dict) -> None:
        """Store the final ``record``, drop the ledger, flush everything and rename the folder into place."""
        out = self.path.with_name(stale.classify(self.path).out_name)
        self.store.finish(record)
        io.publish(self.path, out)

    def discard_if_empty(self) -> None:
        """Delete the partial store when it holds no finished block: there is nothing to resume."""
        if self.path.is_dir() and not self.store.done:
            stale.remove(self.path)


def dataclass_at(info: io.ImageInfo, path: Path) -> io.ImageInfo:
    """``info`` of an output as written at the hidden ``path``; its image keeps the output's name (the
    multiscale ``name`` viewers show), not the partial store's."""
    import dataclasses

    return dataclasses.replace(info, path=Path(path), metadata={**info.metadata, "image_name": info.path.name})


def why_other(path: Path, header: bytes) -> str:
    """What makes a stale partial store other work, for the note: its differences in the compared settings."""
    from ..io.omezarr import BlockStore

    old = BlockStore.stored_header(path)
    try:
        old_layout = json.loads(old.split(b"\n", 1)[1]) if old else None
        new_layout = json.loads(header.split(b"\n", 1)[1])
    except (ValueError, IndexError):
        old_layout = None
    if not old_layout:
        return f"{path.name} (unreadable or unfinished header)"
    found = differences(old_layout.get("record", {}), new_layout["record"])
    for key in ("shape", "dtype"):
        if old_layout.get(key) != new_layout[key]:
            found.append(f"{key}: {old_layout.get(key)} there, {new_layout[key]} now")
    return "; ".join(found) or "another layout"
