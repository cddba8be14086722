"""The widget's preview: decode the visible window of the current plane in a worker, show it over the source.

The window (:func:`~diinn_napari._planner.visible_window`) holds at most as
many output pixels per axis as the canvas has screen pixels; its pixels are
exactly those of the full run (:meth:`Engine.window <diinn_napari.engine.Engine.window>`).
A newer request supersedes an older one: the older worker is stopped at its
next strip of rows, and only the latest result is shown.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_error
from psygnal import Signal

from ._layers import level0, show_preview
from ._planner import RunPlan
from .settings import RunSettings

if TYPE_CHECKING:
    import napari
    from napari.layers import Image
    from superqt.utils import GeneratorWorker


# A preview is decoded in strips of this many output rows: a newer request stops an older one between strips.
STRIP_ROWS = 256


def decode_window_steps(plane, window: tuple[int, int, int, int], run: RunSettings, rgb: bool, strip: int = STRIP_ROWS,
                        mask=None):
    """:func:`decode_window` as a generator: yields after every strip of output rows (where a worker can be
    stopped); returns (image, seconds). Each strip is decoded on the global output grid, so the strips make
    exactly the window's pixels. ``mask``: the plane's pixels with data (a GeoTIFF's internal mask), or None."""
    from .engine import Engine

    start = time.perf_counter()
    plane = np.asarray(plane)
    engine = Engine(run)
    y0, y1, x0, x1 = window
    parts = []
    for a in range(y0, y1, strip):
        parts.append(engine.window(plane, (a, min(a + strip, y1), x0, x1), rgb=rgb, mask=mask))
        yield len(parts)
    return np.concatenate(parts, axis=0), time.perf_counter() - start


def decode_window(plane, window: tuple[int, int, int, int], run: RunSettings, rgb: bool) -> tuple[np.ndarray, float]:
    """Decode one window (y0, y1, x0, x1) of the output grid of one (Y, X[, C]) plane; returns (image, seconds)."""
    steps = decode_window_steps(plane, window, run, rgb)
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return end.value


class PreviewController:
    """Previews in a generator worker (one per request; a newer request stops the older); ``shown`` is emitted with the preview layer once it is in the viewer."""

    shown = Signal(object)  # the preview layer

    def __init__(self, viewer: napari.Viewer):
        self.viewer = viewer
        self._latest = 0  # serial number of the newest request
        self._running = 0  # requests whose worker has not finished
        self._worker = None  # the newest request's worker
        self._worker_done = True
        self.stopped = 0  # older workers a newer request stopped

    @property
    def busy(self) -> bool:
        return self._running > 0

    def request(self, plan: RunPlan, layer: Image, window: tuple[int, int, int, int]) -> GeneratorWorker:
        """Decode ``window`` of the plan's current plane of ``layer`` and show it (unless a newer request came)."""
        from napari.qt.threading import thread_worker

        if self._worker is not None and not self._worker_done:
            self._worker.quit()  # superseded: it stops at its next strip
            self.stopped += 1
        self._latest += 1
        serial = self._latest
        plane = level0(layer)[plan.plane]
        worker = thread_worker(decode_window_steps, start_thread=False, ignore_errors=True)(
            plane, window, plan.run, plan.source.rgb, mask=plan.source.mask)
        self._worker, self._worker_done = worker, False
        worker.finished.connect(lambda: self._finished_worker(worker))
        worker.returned.connect(lambda result: self._on_returned(serial, plan, layer, window, *result))
        worker.errored.connect(lambda err: show_error(f"DIINN preview failed: {err}"))
        worker.finished.connect(self._on_finished)
        self._running += 1
        worker.start()
        return worker

    def _on_returned(self, serial: int, plan: RunPlan, layer: Image, window, image: np.ndarray, seconds: float) -> None:
        if serial != self._latest or layer not in self.viewer.layers:  # superseded, or its source was closed
            return
        self.shown.emit(show_preview(self.viewer, layer, plan, window, image, seconds))

    def _finished_worker(self, worker) -> None:
        if worker is self._worker:
            self._worker_done = True

    def _on_finished(self) -> None:
        self._running -= 1
