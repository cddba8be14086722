"""Peak memory of the napari widget's out-of-memory mode: Run writes the result into an OME-Zarr store.

A real napari viewer (run it under ``xvfb-run -a`` on a machine without a
display) with the widget; a small random DIINN (speed is not the point)
saved as a weights file and picked in the model list; one random uint8 (or
``--dtype uint16``) plane; *write to OME-Zarr* on (``--mode store``,
default) or off (``--mode memory``, the in-memory result, for comparison).
Run is pressed and the Qt event loop turns until the run has ended, so the
worker, the multiscale layer over the store and its refreshes as blocks
finish are all measured. The figure is the growth of the process's peak RSS
(VmHWM) from just before Run to the end, against the size of the result,
printed too as blocks 0, 1, 2, 4, 8, ... arrive; before it, a warm-up run of
the same pipeline on a small crop (model, torch kernels, zarr codecs, the
layer drawing). The widget's settings live in a file of the run's own
(``DIINN_NAPARI_SETTINGS``), never in the user's config folder.

``--cancel-after N`` presses Cancel once N blocks are in, then Run again:
the second run resumes at the first missing block (both phases are timed).
``--part`` measures a part of the store path (the breakdown below);
``--lean-heap`` and ``--zarr-threads N`` are the process-wide allocator and
zarr knobs; ``--smaps`` says which mappings hold the growth at the end (its
own reading of /proc/self/smaps before Run leaves free memory in the main
heap: the growth printed beside it reads 2-3 MiB low); ``--tracemalloc``
traces Python and numpy allocations (about 3 times slower).

    nice -n 10 xvfb-run -a python benchmarks/bench_widget_ooc.py --size 2048 --scale 4 [--dtype uint16]
    nice -n 10 xvfb-run -a python benchmarks/bench_widget_ooc.py --size 2048 --scale 4 --part no-layer
    nice -n 10 xvfb-run -a python benchmarks/bench_widget_ooc.py --size 2048 --scale 4 --mode memory
    nice -n 10 xvfb-run -a python benchmarks/bench_widget_ooc.py --size 4096 --scale 8

Measured (2048 x 2048 at x4: an 8192 x 8192 result, 64 MiB in uint8, 128 MiB
in uint16; 1 torch thread; a 2-core machine shared with a training job and
other benchmarks, load average 4-7; "CPU" is the process's CPU time during
the run, comparable between runs made side by side; one run per line unless
several figures are given). The same command gives figures about 1.5 MiB
apart from run to run.

Where the growth went, before this breakdown's fixes (the package at
f409cbf, put first on ``PYTHONPATH`` from ``git archive f409cbf src``), uint8:

- ``--part no-thread`` (the widget's plan drained in the main thread, no
  viewer run): 6.8 MiB; ``--part no-layer`` (worker and controller, no
  layer): 6.0 and 5.7 MiB, 0.6 MiB at the first update, then growing with the
  blocks (2.0 at block 8, 3.7 at 64, 5.5 at 128): the engine and the store,
  as the batch tool (``bench_zarr_memory.py``);
- ``--part no-refresh`` (the layer added, refreshed only at the end): 11.9
  MiB, CPU 30.6 s; the whole path: 12.0 MiB, CPU 40.3 s (12.0 and 11.4 MiB
  with the spaced refreshes below alone). So
  the layer costs about 6 MiB: 3.4 MiB when it is added over the empty store
  (napari holds the displayed level's region, 1024 x 1024 at level 3 for an
  800 x 600 canvas, and the thumbnail level twice: tracemalloc), 1.2-1.9 MiB
  more at the first refresh; how often it is refreshed changes nothing in
  the peak, but refreshing once per block was a quarter of the CPU time;
- uint16: 14.9 MiB (11.6 % of 128 MiB) whole, 8.7 MiB (6.8 %) with
  ``--part no-layer``;
- what did not help: ``--lean-heap`` 11.8 MiB, CPU 57.0 s (not side by side);
  with the spaced refreshes, through options since removed: glibc's
  ``malloc_trim(0)`` after every block or every 16 blocks, 15.6 and 10.6 MiB;
  ``mallopt(M_ARENA_MAX)`` 1 or 2, 10.9 and 10.6 MiB;
- what did: ``--zarr-threads 1`` (zarr's shared pool at one thread,
  process-wide; with the spaced refreshes): 7.6 MiB, the growth with the blocks nearly gone. zarr 3
  encodes each chunk and writes its file in a thread of its pool, up to six
  here, each with a malloc arena of its own that keeps what it freed.

The fixes: the store's writes encode in the writing thread
(:func:`diinn_napari.io.omezarr.write_here`; measured side by side with
the refresh fix alone: 6.4 against 11.4 MiB, CPU 41.3 against 42.6 s), the
layer's refreshes spaced in time (``STORE_REFRESH_SHARE``; side by side
with the package at f409cbf: CPU 42.0 against 53.6 s in uint8, 43.2 against
52.7 s in uint16), and the input's hash without a bytes copy of each band.
After them: uint8 7.5, 7.3 and 7.1 MiB (11.8, 11.5 and 11.0 %: above the
10 % target by under 1 MiB; napari's display of the layer, about 4-5 MiB
here, does not shrink with the result), CPU 41.5, 41.2 and 43.7 s; the last
run beside the package at f409cbf: 11.9 MiB (18.6 %), CPU 56.5 s (0.77 x
the CPU time); ``--part no-layer``: 3.0 MiB (4.6 %; 0.7 at the first
update, 2.7 at block 128), so the layer is about 4-4.5 MiB of it.
uint16: 10.0 MiB (7.8 %, within the target), CPU 42.5 s,
against 14.2 MiB (11.1 %), CPU 53.1 s, at f409cbf (not side by side).
``--size 4096 --cancel-after 300`` (16384 x 16384, 256 MiB): 14.7 MiB (5.8 %),
9.0 until the Cancel, about 5 MiB more when the resumed run adds its layer
beside the cancelled one; 50.5 + 231.8 s wall, CPU 152.6 s.

The layer's reads (load average 2-3): napari reads the displayed level's
region and the thumbnail level through zarr's thread pool, whose threads'
malloc arenas kept the chunk buffers (``bench_layer_reads.py``: the layer
over an 8192 x 8192 uint8 store, added and refreshed 20 times, 10.8-11.5 MiB
that way, 6.5 MiB with the levels read in the main thread one chunk at a time,
:class:`diinn_napari.io.omezarr.ReadHere`). Here the warm-up run's layer has
already grown those arenas before the measured run, so the whole path barely
moves, within the run-to-run spread: uint8 at d6f6ff4 (before) 7.4 MiB
(11.5 %), CPU 36.3 s; reads in the main thread (a76c0aa) 6.7, 8.4, 7.2 MiB
(10.5, 13.1, 11.3 %), CPU 37.1-38.0 s; one chunk at a time too (62fa17b) 7.8,
7.5, 8.0, 8.0, 8.1 MiB (12.1-12.7 %), CPU 33.8-39.0 s (two of them alternated
with two of a76c0aa's); at a76c0aa ``--part no-refresh`` 6.6 MiB (10.3 %;
5.7 before the last block's refresh), ``--part no-layer`` 2.5 MiB (3.9 %).
uint16 at 62fa17b: 10.1 and 9.9 MiB (7.9 and 7.8 %). What the layer holds
(``bench_layer_reads.py``): about 1.8 MiB that any layer costs (a 16 x 16
one), the 1024 x 1024 level-3 region and the 512 x 512 thumbnail level
(1.25 MiB in uint8), and during a refresh the previous two until the new ones
are read (napari's slice holds them; its vispy layer holds the same buffer,
not a copy): about 4.3 MiB,
6.7 % of 64 MiB, whatever the result's size. So the 10 % target is missed in
uint8 at 8192 x 8192 by the engine's 2.5 MiB beside napari's part.
``--size 4096 --scale 8`` (32768 x 32768, 1024 MiB, 4096 blocks): finished,
991.1 s wall, CPU 656.0 s, peak RSS growth 21.8 MiB (2.1 %; 10.1 at the
first block, 15.6 by block 687, 21.8 from block 2048 on), peak RSS 520 MiB.

The engine's part (``--part no-layer``) against the batch store path, at
1c05585 (load average about 2; one run per figure; ``nice -n 5``): the batch
benchmark's 0.8 MiB is one low draw of a wide spread (0.5-3.9 MiB in 14 runs of
the same code, its docstring) and of its own settings, the smallest model (2 x 4
decoder, 4 features) and ``consistency=0``. With this benchmark's model and the
widget's default ``consistency=2`` (``bench_zarr_memory.py --size 8192
--scale 4 --model widget --consistency 2``, the same 256 tile) the batch path
grows 2.7, 2.0, 2.8, 2.0, 2.6, 2.4 MiB (CPU 33-35 s, as the widget's); with the
model alone (``--model widget``) 2.1 and 1.3 MiB. The widget at the same
time: ``--part no-layer`` 3.6, 2.7, 2.6 MiB (CPU 33.9, -, 35.2 s; 2.3 with ``--smaps``,
which reads low), ``--part no-thread`` (main thread) 3.4 MiB. So the widget's store path keeps
nothing the batch path does not: the figure is the engine's at this model and
back-projection, in the worker thread or not. Nothing accumulates from block
to block: glibc's bytes in use over all malloc arenas (mallinfo2, here
``--mallinfo``) are the same at the first and the last block (133.3-133.5
MiB; the batch path's 88.1 MiB at every block it was read); what grows is
free memory inside the arenas (about 1-2 MiB over the run: 141.0 -> 143.2,
141.3 -> 142.3 MiB of arenas), the fragments that the windows' and blocks'
temporaries of varying shapes (edge windows, halos, the pyramid's regions)
leave, plus the largest transient working set of a window met so far (the
peak creeps up as more window shapes meet one another). tracemalloc
(``--tracemalloc``, no-layer) holds 0.7 MiB of Python and numpy objects at
the end, 2.5 MiB at its peak (the largest lines held, under 0.2 MiB each:
model/decoder.py:151, engine.py:623, io/omezarr.py:893; traced, the RSS grew
9.3 MiB). What did not cut it
(measured, each change reverted): one output block buffer reused for every
block (no-layer 2.6 and 3.1 MiB against 3.6 and 2.7, the second pair side by
side; arenas +1.4 and +0.5 against +2.2 and +1.1 MiB over the run); the back-projection with the encoder's features freed first,
the untrusted run holding no copy of the first output, and its update in
place (bit-identical output; batch path at the widget's settings 3.6, 2.4, 2.1
MiB against 2.0, 2.6, 2.4 alternated); windows of 128 instead of
``BLOCK_WINDOW`` 256 (no-layer 3.1 MiB, CPU 53.6 against 35 s);
``--lean-heap`` (no-layer 4.6 MiB: every window's buffers mapped afresh);
a fixed 32 MiB mmap threshold and 256 MiB trim threshold in the environment
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``; batch path 2.5 MiB).
The whole path at 1c05585 then: uint8 8.7, 7.7, 7.0 MiB (13.6, 12.1, 10.9 %;
4.3-4.6 MiB already at block 0, the layer over the empty store), CPU 36.7-37.6
s, 37-38 s wall; uint16 9.8 MiB (7.7 %), CPU 38.1 s. napari's layer (about
4.3 MiB, above) and the engine's 2-3 MiB at this model and back-projection
are where the bytes are; the uint8 target (6.4 MiB) is missed by about the
engine's part.

A refresh held the displayed region twice (napari's slice keeps the last read
until the new one is in); :class:`diinn_napari.io.omezarr.ReadHere` now refills
a region read again in place while it is held (load average about 1, one run
per figure): uint8 6.9, 7.3, 6.8, 6.9, 7.5 MiB (10.6-11.7 %; napari's
``add_image`` of the layer 4.1-4.4 MiB of it, timed by wrapping it), CPU
37.6-39.6 s, against 8.4, 8.5 MiB (13.2, 13.3 %) just before at 3948c51;
``--size 1024 --scale 8`` (the same result size) 6.6 MiB (10.4 %); uint16
9.8 MiB (7.6 %); ``--part no-layer`` 2.7 MiB. Tried beside it, not kept: a
smallest level of 256 pixels (6.8, 7.0 MiB) and Blosc-LZ4 chunks (6.6-6.9 MiB),
both within the spread.
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


def malloc_state() -> str:
    """glibc's heap over all malloc arenas (mallinfo2): bytes in use, free inside the arenas, mapped on their own."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):  # not glibc 2.33+
        return "no mallinfo2"
    mallinfo2.restype = MallInfo2
    m = mallinfo2()
    return (f"malloc: arenas {m.arena / 2**20:.1f} MiB (in use {m.uordblks / 2**20:.1f}, free "
            f"{m.fordblks / 2**20:.1f}), mapped chunks {m.hblkhd / 2**20:.1f} MiB")


def run_widget(widget, app, cancel_after: int | None = None, base: int | None = None, heap: bool = False) -> float:
    """Press Run (and Cancel after ``cancel_after`` blocks); turn the event loop until the run has ended; seconds.

    ``base``: the RSS before Run; then the peak's growth is printed as blocks 0, 1, 2, 4, 8, ... arrive
    (``heap``: with :func:`malloc_state`).
    """
    said = [time.perf_counter(), -1]

    def on_update(update):
        stored = update.stored
        if cancel_after is not None and stored is not None and stored.blocks_done >= cancel_after:
            widget.cancel()
        if stored is None:
            return
        power = stored.blocks_done & (stored.blocks_done - 1) == 0 and stored.blocks_done > said[1]
        if (base is not None and power) or time.perf_counter() - said[0] > 60:  # (a sign of life on long runs)
            said[0], said[1] = time.perf_counter(), stored.blocks_done
            grown = "" if base is None else f" (grown {(peak_rss() - base) / 2**20:.1f} MiB)"
            print(f"  {stored.blocks_done} of {stored.blocks_total} blocks, peak RSS {peak_rss() / 2**20:.0f} MiB"
                  f"{grown}" + (f"; {malloc_state()}" if heap else ""), flush=True)

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


PARTS = {
    "all": "the whole path (default)",
    "no-refresh": "the layer is added but never refreshed as blocks arrive",
    "no-layer": "no layer: the worker thread and the controller only",
    "no-thread": "no viewer run: the widget's plan drained in the main thread (store_updates)",
}


def resident_by_mapping() -> dict[tuple[str, str], int]:
    """Resident bytes per mapping of this process, keyed by (start address, what it is)."""
    found, key = {}, None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            start = int(head[0].split("-")[0], 16)
            name = head[5] if len(head) > 5 else ("anonymous, 64 MiB aligned (a thread's malloc arena?)"
                                                  if start % (64 << 20) == 0 else "anonymous")
            key = (head[0].split("-")[0], name)
        elif head[0] == "Rss:" and key is not None:
            found[key] = int(head[1]) * 1024
    return found


def grown_mappings(before: dict, after: dict) -> list[str]:
    """What grew between two :func:`resident_by_mapping`, summed by kind, largest first."""
    kinds: dict[str, int] = {}
    for key, rss in after.items():
        kind = key[1] if key[1].startswith(("[", "anonymous")) else "files: " + Path(key[1]).name
        kinds[kind] = kinds.get(kind, 0) + rss - before.get(key, 0)
    for key, rss in before.items():
        if key not in after:
            kind = key[1] if key[1].startswith(("[", "anonymous")) else "files: " + Path(key[1]).name
            kinds[kind] = kinds.get(kind, 0) - rss
    return [f"{kind}: {grown / 2**20:+.1f} MiB" for kind, grown in sorted(kinds.items(), key=lambda kv: -abs(kv[1]))
            if abs(grown) >= 1 << 18]


def isolate(part: str) -> None:
    """Switch off what ``part`` leaves out of the measured path (a benchmark's monkeypatch, never the package's)."""
    from diinn_napari._layers import ResultLayers

    if part == "no-refresh":
        show_store = ResultLayers.show_store

        def without_refresh(self, stored, units_done):
            refresh, self.refresh = self.refresh, lambda: None
            try:
                show_store(self, stored, units_done)
            finally:
                self.refresh = refresh
        ResultLayers.show_store = without_refresh
    elif part == "no-layer":
        ResultLayers.show_store = lambda self, stored, units_done: None


def drain_here(widget) -> float:
    """The widget's next run drained in this thread, with no controller and no layer; seconds."""
    from diinn_napari._layers import level0
    from diinn_napari._run import store_updates

    started = time.perf_counter()
    updates = store_updates(level0(widget.layer.value), widget.plan())
    for _ in updates:
        pass
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=2048, help="input side (pixels)")
    p.add_argument("--scale", type=float, default=4.0)
    p.add_argument("--mode", choices=("store", "memory"), default="store")
    p.add_argument("--warm", type=int, default=256, help="input side of the warm-up run")
    p.add_argument("--cancel-after", type=int, default=None, help="store: Cancel after this many blocks, then resume")
    p.add_argument("--dir", type=Path, default=None, help="where the store goes (default: a temporary folder)")
    p.add_argument("--dtype", choices=("uint8", "uint16"), default="uint8", help="the input's (and the result's) dtype")
    p.add_argument("--part", choices=PARTS, default="all",
                   help="store: measure a part of the path (the breakdown): " + "; ".join(f"{k}: {v}" for k, v in PARTS.items()))
    p.add_argument("--lean-heap", action="store_true", help="call diinn_napari.io.omezarr.lean_heap() first")
    p.add_argument("--zarr-threads", type=int, default=None,
                   help="experiment: zarr's codec and I/O thread pool at most this many threads (threading.max_workers)")
    p.add_argument("--smaps", action="store_true",
                   help="also say which mappings (main heap, threads' arenas, other) hold the growth at the end")
    p.add_argument("--mallinfo", action="store_true",
                   help="also print glibc's heap (all malloc arenas: in use, free, mapped) as the blocks arrive")
    p.add_argument("--tracemalloc", action="store_true",
                   help="also trace Python and numpy allocations during the run (their peak; slower)")
    a = p.parse_args()
    if a.lean_heap:
        from diinn_napari.io.omezarr import lean_heap

        print("lean heap:", lean_heap())
    if a.zarr_threads is not None:
        import zarr

        zarr.config.set({"threading.max_workers": a.zarr_threads})

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
        # the widget starts from its defaults and remembers nothing in the user's config folder
        os.environ["DIINN_NAPARI_SETTINGS"] = str(folder / "widget.json")
        weights = save_weights(net, folder / "bench.safetensors")
        image = np.random.default_rng(0).integers(0, np.iinfo(a.dtype).max + 1, (a.size, a.size), dtype=a.dtype)
        viewer = napari.Viewer(show=False)
        app = QApplication.instance()
        widget = DIINNWidget(viewer)
        widget.add_model_file(str(weights))
        widget.factor_y.value = a.scale
        widget.to_zarr.value = a.mode == "store"

        # warm-up on a crop: the same widget, worker (or main thread), store and layer as the measured part
        part = a.part if a.mode == "store" else "all"
        isolate(part)
        warm = viewer.add_image(image[:a.warm, :a.warm], name="warm")
        widget.layer.value = warm
        widget.zarr_path.value = str(folder / "warm.ome.zarr")
        drain_here(widget) if part == "no-thread" else run_widget(widget, app)
        viewer.layers.clear()
        shutil.rmtree(folder / "warm.ome.zarr", ignore_errors=True)

        layer = viewer.add_image(image, name="plane")
        widget.layer.value = layer
        path = folder / "result.ome.zarr"
        widget.zarr_path.value = str(path)
        plan = widget.plan()
        app.processEvents()
        if a.tracemalloc:
            import tracemalloc

            tracemalloc.start()
        mappings = resident_by_mapping() if a.smaps else None
        reset_peak()
        base = peak_rss()
        cpu = time.process_time()
        phases = []
        if part == "no-thread":
            phases.append(("run (main thread)", drain_here(widget), "drained"))
        else:
            if a.cancel_after is not None and a.mode == "store":
                phases.append(("until Cancel", run_widget(widget, app, a.cancel_after, base, a.mallinfo),
                               widget.state.value))
            phases.append(("run" if not phases else "resumed run", run_widget(widget, app, None, base, a.mallinfo),
                           widget.state.value))
        growth = peak_rss() - base
        cpu = time.process_time() - cpu
        print(f"mode {a.mode}, part {part}: input {a.size} x {a.size} {a.dtype} -> result "
              f"{' x '.join(map(str, plan.shape))} {plan.dtype} ({plan.nbytes / 2**20:.0f} MiB), x{a.scale:g}, "
              f"torch threads {torch.get_num_threads()}")
        for name, seconds, state in phases:
            print(f"{name}: {seconds:.1f} s wall, {state}")
        print(f"process CPU during the run {cpu:.1f} s")
        if mappings is not None:
            print("resident memory grown by the end of the run, by mapping:", "; ".join(
                grown_mappings(mappings, resident_by_mapping())))
        if a.tracemalloc:
            current, peak = tracemalloc.get_traced_memory()
            print(f"tracemalloc (Python and numpy): peak {peak / 2**20:.1f} MiB, still held {current / 2**20:.1f} MiB")
            for stat in tracemalloc.take_snapshot().statistics("lineno")[:5]:
                print("  held:", stat)
            tracemalloc.stop()
        result = widget.result
        if a.mode == "store" and result is not None:
            meta = result.metadata["diinn"]
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
