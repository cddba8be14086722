"""Many files: in this process, in a process pool, or on a dask.distributed cluster; one progress bar."""

from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

from .. import io
from .inputs import check_output_names
from .job import Result, Settings
from .process import process_file
from .stale import remove_stale_files


def run_batch(paths: list[Path], settings: Settings, workers: int = 1, scheduler: str | None = None) -> list[Result]:
    """Process every file: in this process, in ``workers`` processes, or on a dask.distributed cluster.

    Results come in the order of ``paths``. The output folder is created when
    a file starts writing, and removed again if the run left nothing in it.
    One progress bar (planes of all files) is shown on stderr when
    ``settings.show_progress`` and stderr is a terminal. Raises ValueError
    when two inputs would share an output, ImportError when ``scheduler`` is
    given without dask.distributed installed.
    """
    check_output_names(paths, settings.out_dir, settings.out_format)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    remove_stale_files(settings.out_dir)
    created = not settings.out_dir.exists()
    try:
        if scheduler:
            return run_on_cluster(paths, settings, scheduler)
        return run_here(paths, settings, workers)
    finally:
        if created and settings.out_dir.is_dir() and not any(settings.out_dir.iterdir()):
            settings.out_dir.rmdir()  # every file failed before writing: leave nothing behind


def run_on_cluster(paths: list[Path], settings: Settings, scheduler: str) -> list[Result]:
    """The files on the dask.distributed scheduler at ``scheduler`` (no progress bar).

    A file with an OME-Zarr output is split: its blocks are tasks, written by
    the workers into one partial store that this process claims and publishes
    (:mod:`.cluster`); any other file is one task. The split files are made one
    after another while the other files' tasks run.
    """
    try:
        from distributed import Client
    except ImportError as err:
        raise ImportError("--scheduler needs dask.distributed: pip install 'diinn-napari[distributed]'") from err
    from .cluster import ClusterBlocks, splits

    remote = replace(settings, show_progress=False)
    inputs = frozenset(paths)
    whole = [p for p in paths if not splits(p, settings)]
    with Client(scheduler) as client:
        futures = client.map(process_file, whole, settings=remote, inputs=inputs, pure=False)
        try:
            split = {p: process_file(p, remote, inputs, blocks=ClusterBlocks(client)) for p in paths if p not in whole}
            done = dict(zip(whole, client.gather(futures)))
        except BaseException:  # Ctrl-C, SIGTERM: the files not started are not started; running ones keep their partials
            client.cancel(futures, force=True)
            raise
    return [split[p] if p in split else done[p] for p in paths]


def run_here(paths: list[Path], settings: Settings, workers: int) -> list[Result]:
    """The files in this process (``workers`` 1) or a pool of ``workers`` processes, with one progress bar."""
    from tqdm import tqdm

    inputs = frozenset(paths)
    show = settings.show_progress and sys.stderr.isatty()  # no bar, and no escape codes, in a redirected log
    bar = tqdm(total=sum(_count_planes(p) for p in paths), unit="plane", dynamic_ncols=True) if show else None
    try:
        if workers > 1:
            # cores / workers threads each unless told otherwise: oversubscribed torch threads thrash
            threads = settings.run.threads or max(1, (os.cpu_count() or 1) // workers)
            per_worker = replace(settings, show_progress=False, run=settings.run.replace(threads=threads))
            results: list[Result | None] = [None] * len(paths)
            pool = ProcessPoolExecutor(workers, initializer=_worker_start)
            try:
                futures = {pool.submit(process_file, p, per_worker, inputs): i for i, p in enumerate(paths)}
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = future.result()
                    if bar is not None:
                        bar.update(_count_planes(paths[i]))
            except BaseException:  # Ctrl-C, SIGTERM (cli), or a broken pool: stop now, not after the queue
                stop_pool(pool)
                raise
            pool.shutdown(wait=True)
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


def _worker_start() -> None:
    """In each pool worker: the main process alone answers Ctrl-C (it stops the pool), SIGTERM ends the worker
    at once (its partial file holds every finished plane), and the worker ends when the main process does, even
    when that one is killed (Linux: PR_SET_PDEATHSIG)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
            if os.getppid() == 1:  # the main process ended before the line above
                os._exit(1)
        except (OSError, AttributeError):
            pass


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a process pool now: queued files are not started, running workers are terminated (partials kept)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


def _count_planes(path: Path) -> int:
    try:
        return io.read_info(path).n_planes
    except Exception:  # an unreadable file fails later, with its message
        return 0
