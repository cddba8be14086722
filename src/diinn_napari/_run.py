"""The widget's run controller: one run at a time in a thread worker, with a typed update and a state.

The worker is a generator of :class:`RunUpdate` (one per tile, network call,
or 50 ms of adaptation); a finished plane (or block of Y rows) rides on its
update as the whole output array filled so far. Out of memory (the plan has
a ``store``: :func:`store_updates`), the result is an OME-Zarr store instead,
and the updates say how many of its blocks are in (:class:`Stored`). The
controller shows it through :class:`~diinn_napari._layers.ResultLayers` and moves through
:class:`RunState`::

    IDLE -> RUNNING -> FINISHED | FAILED | CANCELLED
              \\-> CANCELLING (Cancel pressed) -> CANCELLED | FINISHED (every unit had arrived)

Drawing a layer or a progress bar can run Qt's event loop, which then
delivers the worker's later signals, the end of the run included, inside the
call. So the signal handlers only record what happened; one re-entrancy-safe
``_sync`` brings the layers and the progress bar up to date with it, and
runs again when a nested signal arrived meanwhile.

torch is imported inside the worker (by the engine), not when napari starts.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error
from psygnal import Signal

from ._layers import ResultLayers, level0
from ._planner import RunPlan
from .core import Cancelled
from .settings import RunSettings

if TYPE_CHECKING:
    import napari
    from napari.layers import Image
    from superqt.utils import GeneratorWorker


class RunState(enum.Enum):
    """Where the widget's last run stands."""

    IDLE = "idle"  # nothing run yet
    RUNNING = "running"
    CANCELLING = "cancelling"  # Cancel pressed: the worker stops at its next update
    FINISHED = "finished"  # the whole result is there
    CANCELLED = "cancelled"  # stopped early; the finished units are kept in a layer marked partial
    FAILED = "failed"  # an error (shown as a notification); finished units are kept as for a cancel

    @property
    def busy(self) -> bool:
        return self in (RunState.RUNNING, RunState.CANCELLING)


class Phase(enum.Enum):
    """The parts of a run, as the progress bar names them."""

    ADAPTING = "adapting to the stack"  # isotropic voxels with adaptation
    ADAPTING_PLANE = "adapting to the plane"  # plane-wise modes with "adapt to each plane first"
    UPSCALING = "super-resolution"


@dataclass(frozen=True)
class Stored:
    """A result being written to an OME-Zarr store (out of memory): where, and how far.

    blocks_done of blocks_total level-0 chunks are in the store; resumed: the
    blocks it held when the run began (a cancelled run's); notes: what the
    opening did (e.g. a temporary store of other work replaced); trust_path:
    the store of its trust map, when asked for (filled block by block with it).
    """

    path: str
    blocks_done: int
    blocks_total: int
    resumed: int = 0
    notes: tuple[str, ...] = ()
    trust_path: str | None = None


@dataclass(frozen=True)
class RunUpdate:
    """One progress report of the worker.

    done, total: steps of the current phase (tiles, network calls or adaptation steps);
    units_done: planes (or, isotropic voxels, Y rows) finished so far;
    result: the whole output array, filled so far, when a unit has just finished (else None);
    trust: its trust map, when asked for;
    stored: out of memory, the store and its blocks done (the result is there, not in ``result``).
    """

    phase: Phase
    done: int
    total: int
    units_done: int = 0
    result: np.ndarray | None = None
    trust: np.ndarray | None = None
    stored: Stored | None = None


@dataclass(frozen=True)
class RunResult:
    """What a finished worker returns: the output and its trust map (or None), or the finished store."""

    image: np.ndarray | None
    trust: np.ndarray | None = None
    stored: Stored | None = None


Updates = Generator[RunUpdate, None, RunResult]
WorkerFactory = Callable[[Updates], "GeneratorWorker"]


def upscale_updates(data, plan: RunPlan, cancel: threading.Event | None = None) -> Updates:
    """The plane-wise run: :meth:`Engine.steps <diinn_napari.engine.Engine.steps>` as updates.

    ``data``: what the plan covers (the whole layer, or its one plane for
    ``plane_only``); the output fills in plane by plane, zeros until then.
    With ``plan.self_adapt_steps``, each plane is first adapted to
    (:func:`self_adapted_updates`).
    """
    from .core import Assembly
    from .engine import Engine

    if plan.self_adapt_steps:
        return (yield from self_adapted_updates(data, plan, cancel if cancel is not None else threading.Event()))
    rgb = plan.source.rgb
    image = Assembly(plan.shape, fill=0)
    trust = Assembly(plan.shape[:-1] if rgb else plan.shape, fill=0) if plan.trust_map else None
    planes_done = 0
    for step in Engine(plan.run).steps(data, rgb=rgb, return_trust=plan.trust_map, mask=plan.source.mask):
        if not image.add(step):
            yield RunUpdate(Phase.UPSCALING, step.done, step.total, planes_done)
            continue
        if trust is not None:
            trust.place(step.index, step.trust)
        planes_done += 1
        yield RunUpdate(Phase.UPSCALING, step.done, step.total, planes_done, image.result,
                        None if trust is None else trust.result)
    return RunResult(image.result, None if trust is None else trust.result)


def store_updates(data, plan: RunPlan, cancel: threading.Event | None = None) -> Updates:
    """The plane-wise run into the plan's OME-Zarr store (:mod:`~diinn_napari._store`), block by block.

    The first update names the store (and the blocks a cancelled run left
    there, which are skipped); one follows every decoded window; when every
    block is in, the store is finished (its ledger removed). A store of other
    work at the user's path is refused (ValueError, shown as the run's error).
    With the trust map, its store fills in with the result's; with
    ``plan.self_adapt_steps``, each plane is adapted to first (:func:`_adapted_into`).
    """
    from ._store import open_store
    from .engine import Engine

    opened = open_store(plan, data)
    store = opened.store
    trust = None if opened.trust_path is None else str(opened.trust_path)
    if store is None:  # finished before: nothing to decode
        stored = Stored(str(opened.path), opened.resumed, opened.resumed, opened.resumed, tuple(opened.notes), trust)
        yield RunUpdate(Phase.UPSCALING, 1, 1, plan.units_total, stored=stored)
        return RunResult(None, stored=stored)
    per_plane = len(store.block_windows())

    def stored() -> Stored:
        return Stored(str(opened.path), len(store.done), store.blocks_total, opened.resumed, tuple(opened.notes),
                      trust)

    def planes_done() -> int:  # the last one counts once the store is finished: a cancel before that is partial
        return min(len(store.done) // per_plane, plan.units_total - 1)

    yield RunUpdate(Phase.UPSCALING, 0, 1, planes_done(), stored=stored())
    total = 1
    if plan.self_adapt_steps:
        total = yield from _adapted_into(data, plan, store, cancel if cancel is not None else threading.Event(),
                                         lambda: RunUpdate(Phase.UPSCALING, 0, 1, planes_done(), stored=stored()))
    else:
        for step in Engine(plan.run).steps(data, rgb=plan.source.rgb, out=store, mask=plan.source.mask,
                                           return_trust=trust is not None):
            total = step.total
            yield RunUpdate(Phase.UPSCALING, step.done, step.total, planes_done(), stored=stored())
    if trust is None:
        store.finish(opened.record)
    else:
        store.finish(opened.record, opened.trust_record)
    yield RunUpdate(Phase.UPSCALING, total, total, plan.units_total, stored=stored())
    return RunResult(None, stored=stored())


def _adapted_into(data, plan: RunPlan, store, cancel: threading.Event, now: Callable[[], RunUpdate]
                  ) -> Generator[RunUpdate, None, int]:
    """Into a store, plane by plane: adapt a copy of the model to the plane (as :func:`self_adapted_updates`),
    then write the plane's blocks with it (:class:`~diinn_napari.io.omezarr.PlaneBlocks`); return the run's steps.

    A plane whose blocks are all in is neither read nor adapted to; a plane a
    cancel cut short is adapted to again (seed 0: the same copy on the same
    device) and only its missing blocks are made. ``now``: the update that says
    where the store stands (its planes and blocks done).
    """
    from dataclasses import replace

    from .engine import Engine
    from .io.omezarr import PlaneBlocks
    from .train.self_adapt import adapt_plane

    rgb, steps, mask = plan.source.rgb, plan.self_adapt_steps, plan.source.mask  # mask: (Y, X), every plane
    leading = tuple(data.shape[:-3] if rgb else data.shape[:-2])
    indices, windows = list(np.ndindex(*leading)), store.block_windows()
    total = 1
    for k, index in enumerate(indices):
        if all(store.is_done(index, window) for window in windows):
            continue
        plane = np.asarray(data[index])
        adapted = yield from in_thread(
            lambda progress, plane=plane: adapt_plane(plane, plan.ratio, plan.run, steps, rgb=rgb, mask=mask,
                                                      progress=progress, cancel=cancel),
            Phase.ADAPTING_PLANE, steps, now().units_done, cancel)
        for step in Engine(plan.run.replace(model=adapted.model)).steps(
                plane, rgb=rgb, out=PlaneBlocks(store, index), mask=mask, return_trust=plan.trust_map):
            total = step.total * len(indices)  # over the run, as upscale_updates counts
            yield replace(now(), done=k * step.total + step.done, total=total)
    return total


def in_thread(work: Callable[[Callable[[int, int, float], Any]], Any], phase: Phase, total: int, units_done: int,
              cancel: threading.Event) -> Generator[RunUpdate, None, Any]:
    """Run an adaptation ``work(progress)`` in a thread of its own, reporting its step every 50 ms; return its value.

    So that the worker's ``quit()`` is seen at the next update; ``cancel`` (set by the
    controller with it, or here when this generator is closed) stops the adaptation at its next step.
    """
    state: dict[str, Any] = {"step": 0}

    def target():
        try:
            state["value"] = work(lambda i, n, loss: state.update(step=i, loss=loss))
        except BaseException as err:  # re-raised in the worker, which turns it into a notification
            state["error"] = err

    thread = threading.Thread(target=target, name="diinn-adapt", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.05)
            yield RunUpdate(phase, state["step"], total, units_done)
    finally:
        if thread.is_alive():  # the worker was stopped (or this generator closed): stop the adaptation too
            cancel.set()
    if "error" in state:
        raise state["error"]
    return state["value"]


def self_adapted_updates(data, plan: RunPlan, cancel: threading.Event) -> Updates:
    """Plane by plane: adapt a copy of the model to the plane (:func:`~diinn_napari.train.self_adapt.adapt_plane`,
    what the batch's ``--self-adapt`` runs), then upscale the plane with it."""
    from .core import Assembly
    from .engine import Engine
    from .train.self_adapt import adapt_plane

    rgb, steps, mask = plan.source.rgb, plan.self_adapt_steps, plan.source.mask  # mask: (Y, X), every plane
    image = Assembly(plan.shape, fill=0)
    trust = Assembly(plan.shape[:-1] if rgb else plan.shape, fill=0) if plan.trust_map else None
    leading = tuple(data.shape[:-3] if rgb else data.shape[:-2])
    indices = list(np.ndindex(*leading))
    per_plane, planes_done = None, 0
    for k, index in enumerate(indices):
        plane = np.asarray(data[index])
        adapted = yield from in_thread(
            lambda progress, plane=plane: adapt_plane(plane, plan.ratio, plan.run, steps, rgb=rgb, mask=mask,
                                                      progress=progress, cancel=cancel),
            Phase.ADAPTING_PLANE, steps, planes_done, cancel)
        for step in Engine(plan.run.replace(model=adapted.model)).steps(plane, rgb=rgb, return_trust=plan.trust_map,
                                                                        mask=mask):
            per_plane = step.total
            done, total = k * per_plane + step.done, per_plane * len(indices)  # over the run, as upscale_updates
            if step.plane is None:
                yield RunUpdate(Phase.UPSCALING, done, total, planes_done)
                continue
            image.place(index, step.plane)
            if trust is not None:
                trust.place(index, step.trust)
            planes_done += 1
            yield RunUpdate(Phase.UPSCALING, done, total, planes_done, image.result,
                            None if trust is None else trust.result)
    return RunResult(image.result, None if trust is None else trust.result)


def isotropic_updates(data, plan: RunPlan, cancel: threading.Event) -> Updates:
    """Isotropic voxels: adapt to the stack (if asked), then resample Z block by block of Y rows.

    Adaptation runs in a thread of its own so that this generator can report
    every 50 ms: the worker's ``quit()`` is seen at the next update, and
    ``cancel`` (set by the controller with it) stops the adaptation at its
    next step.
    """
    from .adapt import adapt
    from .core import Assembly
    from .isotropic import isotropic_steps

    iso, run = plan.isotropic, plan.run
    model = run.model
    if plan.adapt_steps:
        model = yield from in_thread(
            lambda progress, start=model: adapt(data, iso.spacing, iso.target, model=start, steps=plan.adapt_steps,
                                   axial_sigma=plan.axial_sigma, device=run.device, intensity=run.intensity,
                                   cancel=cancel, progress=progress),
            Phase.ADAPTING, plan.adapt_steps, 0, cancel)
    volume = Assembly(plan.shape, fill=0)
    rows_done = 0
    for step in isotropic_steps(data, iso.spacing, iso.target, settings=run.replace(model=model), fusion="mean"):
        if not volume.add(step):
            yield RunUpdate(Phase.UPSCALING, step.done, step.total, rows_done)
            continue
        rows_done += step.rows[1] - step.rows[0]
        yield RunUpdate(Phase.UPSCALING, step.done, step.total, rows_done, volume.result)
    return RunResult(volume.result)


def isotropic_store_updates(data, plan: RunPlan, cancel: threading.Event) -> Updates:
    """Isotropic voxels into the plan's OME-Zarr store: adapt to the stack (if asked), then resample Z band by
    band of Y rows, each band written as the store's blocks of every output plane.

    The store's blocks are bands of Y rows (:func:`~diinn_napari._store.store_chunks`),
    so a band of the Z resampling fills whole blocks; a band whose blocks are all
    in (a cancelled run's) is neither read nor decoded, and the pixels of a band do
    not depend on which others were made, so a resumed run equals an uninterrupted
    one. A resumed run adapts to the stack again (seed 0: the same copy on the
    same device) unless every band is in.
    """
    from ._store import open_store
    from .adapt import adapt
    from .isotropic import isotropic_steps

    iso, run = plan.isotropic, plan.run
    opened = open_store(plan, data)
    store = opened.store
    if store is None:  # finished before: nothing to decode
        stored = Stored(str(opened.path), opened.resumed, opened.resumed, opened.resumed, tuple(opened.notes))
        yield RunUpdate(Phase.UPSCALING, 1, 1, plan.units_total, stored=stored)
        return RunResult(None, stored=stored)
    planes, windows = plan.shape[-3], store.block_windows()
    bands = sorted({(y0, y1) for y0, y1, _, _ in windows})

    def band_done(index: tuple[int, ...], rows: tuple[int, int]) -> bool:
        return all(store.is_done(index + (k,), w) for k in range(planes) for w in windows if w[:2] == rows)

    def stored() -> Stored:
        return Stored(str(opened.path), len(store.done), store.blocks_total, opened.resumed, tuple(opened.notes))

    rows_done = sum(y1 - y0 for index in np.ndindex(*plan.shape[:-3]) for y0, y1 in bands
                    if band_done(index, (y0, y1)))
    last = plan.units_total - 1  # the last row counts once the store is finished: a cancel before that is partial
    yield RunUpdate(Phase.UPSCALING, 0, 1, min(rows_done, last), stored=stored())
    model = run.model
    if plan.adapt_steps and rows_done < plan.units_total:
        model = yield from in_thread(
            lambda progress, start=model: adapt(data, iso.spacing, iso.target, model=start, steps=plan.adapt_steps,
                                   axial_sigma=plan.axial_sigma, device=run.device, intensity=run.intensity,
                                   cancel=cancel, progress=progress),
            Phase.ADAPTING, plan.adapt_steps, min(rows_done, last), cancel)
    total = 1
    for step in isotropic_steps(data, iso.spacing, iso.target, settings=run.replace(model=model), fusion="mean",
                                block_rows=store.block[0], skip=band_done):
        total = step.total
        if step.rows is not None:
            for window in windows:
                if window[:2] == step.rows:
                    for k in range(planes):
                        store.write_block(step.index + (k,), window, step.block[k, :, window[2]:window[3]])
            rows_done += step.rows[1] - step.rows[0]
        yield RunUpdate(Phase.UPSCALING, step.done, step.total, min(rows_done, last), stored=stored())
    store.finish(opened.record)
    yield RunUpdate(Phase.UPSCALING, total, total, plan.units_total, stored=stored())
    return RunResult(None, stored=stored())


def thread_worker_for(updates: Updates) -> GeneratorWorker:
    """The default worker factory: napari's generator thread worker over ``updates``, not started.

    Errors are not re-raised in the main thread (``ignore_errors``): the controller shows them.
    """
    from napari.qt.threading import thread_worker

    def drain() -> Updates:
        return (yield from updates)

    return thread_worker(drain, start_thread=False, ignore_errors=True)()


class _Run:
    """What one run has delivered so far; its handlers record it, ``RunController._sync`` shows it."""

    def __init__(self, plan: RunPlan, layers: ResultLayers, worker: GeneratorWorker, cancel: threading.Event):
        self.plan, self.layers, self.worker, self.cancel = plan, layers, worker, cancel
        self.result: np.ndarray | None = None
        self.trust: np.ndarray | None = None
        self.stored: Stored | None = None  # out of memory: the store and how far it is
        self.units_done = 0
        self.last: RunUpdate | None = None
        self.returned = False
        self.error: Exception | None = None
        self.end: RunState | None = None  # set when the worker has finished
        self.shown_end = False
        self.progress = None  # napari.utils.progress of the current phase
        self.phase: Phase | None = None
        self.phase_start: tuple[float, int] | None = None  # (time, steps done) when the phase's first update came
        self.syncing = self.again = False


def time_left(start: tuple[float, int] | None, now: float, done: int, total: int) -> str:
    """", about 12 s left" from the pace since ``start`` (time, steps done then); "" until there is a pace."""
    if start is None or done <= start[1] or total <= done:
        return ""
    seconds = (now - start[0]) / (done - start[1]) * (total - done)
    if seconds >= 90:
        return f", about {seconds / 60:.0f} min left"
    return f", about {max(1, round(seconds))} s left"


class RunController:
    """Runs plans in a thread worker, one at a time, and shows their results in the viewer.

    ``worker_factory`` turns a generator of :class:`RunUpdate` into a
    not-yet-started superqt ``GeneratorWorker`` (default :func:`thread_worker_for`);
    a test or a front end may wrap the generator, e.g. to hold it at an update.
    Signals, all emitted in the main thread: ``updated`` for each update once
    the layers show it; ``state_changed`` when :attr:`state` changes (an end
    state as soon as the worker has finished); ``ended`` with the end state
    once the result layer shows the end too (named partial or not; when the
    end arrives while napari draws the first layer, after that drawing).
    """

    updated = Signal(object)  # RunUpdate
    state_changed = Signal(object)  # RunState
    ended = Signal(object)  # RunState: FINISHED, CANCELLED or FAILED

    def __init__(self, viewer: napari.Viewer, worker_factory: WorkerFactory = thread_worker_for):
        self.viewer = viewer
        self.worker_factory = worker_factory
        self.state = RunState.IDLE
        self._run: _Run | None = None
        self.progress_text = ""  # what the activity bar says now (its description)

    @property
    def busy(self) -> bool:
        return self.state.busy

    @property
    def plan(self) -> RunPlan | None:
        """The plan of the last run."""
        return self._run.plan if self._run is not None else None

    @property
    def result(self) -> Image | None:
        """The output layer of the last run (None until its first plane or block is done)."""
        return self._run.layers.image if self._run is not None else None

    def start(self, plan: RunPlan, layer: Image) -> None:
        """Run ``plan`` on ``layer`` (the layer the plan was made from) in a thread worker."""
        if self.busy:
            raise RuntimeError("a run is in progress: cancel it first")
        data = level0(layer)
        cancel = threading.Event()
        if plan.isotropic is not None:
            store = plan.store is not None
            index, updates = None, (isotropic_store_updates if store else isotropic_updates)(data, plan, cancel)
        else:
            index = plan.plane if plan.plane_only else None
            if index is not None:
                data = data[tuple(slice(i, i + 1) for i in index)]
            updates = upscale_updates(data, plan, cancel) if plan.store is None else store_updates(data, plan, cancel)
        worker = self.worker_factory(updates)
        run = self._run = _Run(plan, ResultLayers(self.viewer, layer, plan, index), worker, cancel)
        worker.yielded.connect(lambda update: self._on_update(run, update))
        worker.returned.connect(lambda result: self._on_returned(run, result))
        worker.errored.connect(lambda err: self._on_errored(run, err))
        worker.finished.connect(lambda: self._on_finished(run))
        self._set_state(RunState.RUNNING)
        worker.start()

    def cancel(self) -> None:
        """Stop the running job at its next update (between tiles); the finished units are kept."""
        if self.state is not RunState.RUNNING:
            return
        self._run.worker.quit()
        self._run.cancel.set()  # and an adaptation in its own thread at its next step
        self._set_state(RunState.CANCELLING)

    def _set_state(self, state: RunState) -> None:
        if state is not self.state:
            self.state = state
            self.state_changed.emit(state)

    # ---- the worker's signals: record, then sync --------------------------------------------------
    def _on_update(self, run: _Run, update: RunUpdate) -> None:
        if update.result is not None:
            run.result, run.trust = update.result, update.trust
        if update.stored is not None and (run.stored is None or update.stored.blocks_done >= run.stored.blocks_done):
            run.stored = update.stored
        run.units_done = max(run.units_done, update.units_done)  # nested handling may deliver them out of order
        run.last = update
        self._sync(run)
        self.updated.emit(update)

    def _on_returned(self, run: _Run, result: RunResult) -> None:
        run.returned = True
        if result.stored is not None:
            run.stored = result.stored
        if run.result is None:
            run.result, run.trust = result.image, result.trust

    def _on_errored(self, run: _Run, err: Exception) -> None:
        if isinstance(err, Cancelled) and run.cancel.is_set():
            # The Cancel reached the work (an adaptation at its step, the engine between tiles) before
            # the worker's next yield, so the work raised: that is the cancel asked for, not a failure.
            return
        run.error = err
        show_error(f"DIINN super-resolution failed: {err}")

    def _on_finished(self, run: _Run) -> None:
        # A Cancel during the last step lets the generator end, and superqt then emits neither returned
        # nor aborted: every unit has arrived, and the result is whole.
        whole = run.returned or ((run.result is not None or run.stored is not None)
                                 and run.units_done >= run.plan.units_total)
        run.end = RunState.FAILED if run.error else RunState.FINISHED if whole else RunState.CANCELLED
        if run is self._run:
            self._set_state(run.end)
        self._sync(run)

    # ---- showing it ---------------------------------------------------------------------------------
    def _sync(self, run: _Run) -> None:
        """Bring the run's layers and progress bar up to date; re-entered calls are folded into the running one."""
        if run.syncing:
            run.again = True
            return
        run.syncing = True
        try:
            run.again = True
            while run.again:
                run.again = False
                self._sync_once(run)
        finally:
            run.syncing = False

    def _sync_once(self, run: _Run) -> None:
        if run.shown_end:  # (a bar drawn while the end was handled inside is closed here)
            self._close_progress(run)
            return
        if run.result is not None:
            run.layers.show(run.result, run.trust, run.units_done)
        elif run.stored is not None:
            run.layers.show_store(run.stored, run.units_done)
        if run.end is not None:
            run.shown_end = True
            whole = run.end is RunState.FINISHED
            run.layers.end(None if whole else run.end.value)
            self._close_progress(run)
            self.ended.emit(run.end)
        elif run.last is not None:
            self._show_progress(run, run.last)

    def _show_progress(self, run: _Run, update: RunUpdate) -> None:
        """The one place for progress: a bar of the current plane's tiles (of all steps for a single plane, of
        the whole run for isotropic voxels), named with the planes done of planes and an estimate of the time left."""
        from napari.utils import progress

        now = time.perf_counter()
        if run.progress is None or update.phase is not run.phase:
            self._close_progress(run)
            run.progress, run.phase = progress(total=1, desc=f"DIINN {update.phase.value}"), update.phase
            run.phase_start = (now, update.done)
        n, total = update.done, update.total
        planes = run.plan.units_total if run.plan.unit == "planes" and update.phase is Phase.UPSCALING else 1
        desc = f"DIINN {update.phase.value}"
        if planes > 1 and total % planes == 0:  # a stack: the bar counts the tiles of the current plane
            per_plane = total // planes
            current = min(n // per_plane, planes - 1) if n < total else planes - 1
            n, total = n - current * per_plane, per_plane
            desc += f", plane {current + 1} of {planes} ({run.units_done} done), tiles"
        elif update.phase is Phase.ADAPTING_PLANE and run.plan.units_total > 1:
            desc += f", plane {run.units_done + 1} of {run.plan.units_total}, steps"
        desc += time_left(run.phase_start, now, update.done, update.total)
        self.progress_text = desc
        if run.progress.total != total:
            run.progress.total = total
        run.progress.set_description(desc)
        run.progress.update(n - run.progress.n)

    @staticmethod
    def _close_progress(run: _Run) -> None:
        if run.progress is not None:
            run.progress.close()
        run.progress = run.phase = None
