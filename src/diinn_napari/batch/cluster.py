"""One large OME-Zarr output on a dask.distributed cluster: its blocks written by the workers into one store.

With ``--scheduler``, every OME-Zarr output (not ``--isotropic``) is made
here rather than as one task: this process plans the file, takes the output's
lock, claims the hidden partial store (creating it and its header, or taking
over a stale one of the same work) and sends one task per *block group*
(:meth:`~diinn_napari.io.omezarr.BlockStore.block_groups`: blocks that share
no chunk file of any pyramid level, so no two workers ever rewrite one chunk).
Each task opens the store, decodes the group's missing blocks with the engine
(:func:`~.process.write_blocks`, the single-process code path), writes them and
records each as a marker file (safe with many writers, also on NFS). When
every task is back, this process checks that every block is recorded,
computes the pixel checksum and renames the store into place, as a run in one
process does. A killed run leaves the store; a rerun (on a cluster or not)
goes on at the blocks it lacks. The result is the single-process result, bit
for bit (the same windows of the same blocks are decoded).

The workers must see the output folder at the same path (a shared file system).
"""

from __future__ import annotations

from pathlib import Path

from .. import io
from .inputs import output_path
from .job import Settings
from .partial_store import PartialStore, dataclass_at
from .plan import FilePlan


def splits(path: Path, settings: Settings) -> bool:
    """Whether the output of ``path`` is written block by block across the cluster (an OME-Zarr output of planes)."""
    if settings.isotropic:
        return False
    return output_path(path, settings.out_dir, settings.out_format).name.lower().endswith(".zarr")


class ClusterBlocks:
    """The blocks of one claimed partial store written by the workers of ``client``, one task per block group."""

    def __init__(self, client):
        self.client = client

    def __call__(self, plan: FilePlan, settings: Settings, partial: PartialStore) -> None:
        store = partial.store
        groups = [group for group in store.block_groups() if not store.done.issuperset(group)]
        futures = self.client.map(write_block_group, groups, plan=plan, settings=settings, path=partial.path,
                                  header=store.header, pure=False)
        try:
            self.client.gather(futures)
        except BaseException:  # a failed task, Ctrl-C, SIGTERM: the rest are cancelled, finished blocks are kept
            self.client.cancel(futures, force=True)
            raise


def write_block_group(numbers: list[int], plan: FilePlan, settings: Settings, path: Path, header: bytes) -> int:
    """On a worker: write the blocks ``numbers`` of the partial store at ``path`` that it lacks; how many it had to."""
    from ..io.omezarr import BlockStore
    from .process import write_blocks

    store = BlockStore.open(path, dataclass_at(plan.output, path), header, shared=True)
    if store is None:
        raise RuntimeError(f"{path} is not the partial store of this work any more (removed or replaced)")
    selection = store.only(numbers)
    missing = selection.missing
    if missing:
        with io.open_planes(plan.info) as reader:
            write_blocks(plan, settings, reader, selection)
    return missing
