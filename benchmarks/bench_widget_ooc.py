"""Peak memory of the napari widget's out-of-memory mode: Run writes the result into an OME-Zarr store.

A real napari viewer (run it under ``xvfb-run -a`` on a machine without a
display) with the widget; a small random DIINN (speed is not the point)
saved as a weights file and picked in the model list; one random uint8
plane; *write to OME-Zarr* on (``--mode store``, default) or off
(``--mode memory``, the in-memory result, for comparison). Run is pressed
and the Qt event loop turns until the run has ended, so the worker, the
multiscale layer over the store and its refreshes as blocks finish are all
measured. The figure is the growth of the process's peak RSS (VmHWM) from
just before Run to the end, against the size of the result; before it, a
warm-up run of the same pipeline on a small crop (model, torch kernels, zarr
codecs, the layer drawing).

``--cancel-after N`` presses Cancel once N blocks are in, then Run again:
the second run resumes at the first missing block (both phases are timed).

    nice -n 10 xvfb-run -a python benchmarks/bench_widget_ooc.py --size 2048 --scale 4
    nice -n 10 xvfb-run -a python benchmarks/bench_widget_ooc.py --size 2048 --scale 4 --mode memory
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_zarr_memory import peak_rss, reset_peak


def run_widget(widget, app, cancel_after: int | None = None) -> float:
    """Press Run (and Cancel after ``cancel_after`` blocks); turn the event loop until the run has ended; seconds."""
    said = [time.perf_counter()]

    def on_update(update):
        if cancel_after is not None and update.stored is not None and update.stored.blocks_done >= cancel_after:
            widget.cancel()
        if update.stored is not None and time.perf_counter() - said[0] > 60:  # a sign of life on long runs
            said[0] = time.perf_counter()
            print(f"  {update.stored.blocks_done} of {update.stored.blocks_total} blocks, "
                  f"peak RSS {peak_rss() / 2**20:.0f} MiB", flush=True)

    widget.controller.updated.connect(on_update)
    started = time.perf_counter()
    try:
        assert widget.run(), "the widget refused to run"
        while widget.busy:
            app.processEvents()
            time.sleep(0.005)
        app.processEvents()
    finally:
        widget.controller.updated.disconnect(on_update)
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=2048, help="input side (pixels)")
    p.add_argument("--scale", type=float, default=4.0)
    p.add_argument("--mode", choices=("store", "memory"), default="store")
    p.add_argument("--warm", type=int, default=256, help="input side of the warm-up run")
    p.add_argument("--cancel-after", type=int, default=None, help="store: Cancel after this many blocks, then resume")
    p.add_argument("--dir", type=Path, default=None, help="where the store goes (default: a temporary folder)")
    a = p.parse_args()

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from diinn_napari._widget import DIINNWidget
    from diinn_napari.model import DIINN
    from diinn_napari.weights import save_weights

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    net = DIINN(1, variant="f", skip="bicubic", decoder_width=8, encoder_args={"n_resblocks": 1, "features": 8}).eval()
    folder = Path(tempfile.mkdtemp(dir=a.dir))
    try:
        weights = save_weights(net, folder / "bench.safetensors")
        image = np.random.default_rng(0).integers(0, 256, (a.size, a.size), dtype=np.uint8)
        viewer = napari.Viewer(show=False)
        app = QApplication.instance()
        widget = DIINNWidget(viewer)
        widget.add_model_file(str(weights))
        widget.factor_y.value = a.scale
        widget.to_zarr.value = a.mode == "store"

        # warm-up on a crop: the same widget, worker, store and layer
        warm = viewer.add_image(image[:a.warm, :a.warm], name="warm")
        widget.layer.value = warm
        widget.zarr_path.value = str(folder / "warm.ome.zarr")
        run_widget(widget, app)
        viewer.layers.clear()
        shutil.rmtree(folder / "warm.ome.zarr", ignore_errors=True)

        layer = viewer.add_image(image, name="plane")
        widget.layer.value = layer
        path = folder / "result.ome.zarr"
        widget.zarr_path.value = str(path)
        plan = widget.plan()
        app.processEvents()
        reset_peak()
        base = peak_rss()
        phases = []
        if a.cancel_after is not None and a.mode == "store":
            phases.append(("until Cancel", run_widget(widget, app, a.cancel_after), widget.state.value))
        phases.append(("run" if not phases else "resumed run", run_widget(widget, app), widget.state.value))
        growth = peak_rss() - base
        result = widget.result
        meta = result.metadata["diinn"]
        print(f"mode {a.mode}: input {a.size} x {a.size} uint8 -> result {' x '.join(map(str, plan.shape))} "
              f"{plan.dtype} ({plan.nbytes / 2**20:.0f} MiB), x{a.scale:g}, torch threads {torch.get_num_threads()}")
        for name, seconds, state in phases:
            print(f"{name}: {seconds:.1f} s wall, {state}")
        if a.mode == "store":
            print(f"store {meta['store']}: {meta['blocks_done']} of {meta['blocks_total']} blocks; "
                  f"the resumed run found {meta['blocks_resumed']} done")
        print(f"RSS before Run {base / 2**20:.0f} MiB; peak RSS growth {growth / 2**20:.1f} MiB = "
              f"{100 * growth / plan.nbytes:.1f} % of the result")
        if a.mode == "store":
            from ome_zarr.io import parse_url
            from ome_zarr.reader import Reader

            levels = list(Reader(parse_url(str(path)))())[0].data
            print("levels read by ome-zarr-py:", [tuple(level.shape) for level in levels])
        viewer.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
