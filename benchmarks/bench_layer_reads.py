"""RSS of a napari multiscale layer over a zarr store: what adding it and refreshing it cost, by how it is read.

A hidden napari viewer (run it under ``xvfb-run -a`` on a machine without a
display) shows a 2048 x 2048 plane; a store of 8192 x 8192 random pixels
(``--dtype``; 512 x 512 chunks, levels down to 512 x 512, as the widget's
out-of-memory store) is made in a temporary folder by a process of its own. Measured, each as the
growth of peak RSS (VmHWM) and of RSS over the step: adding a 16 x 16 layer
(what any layer costs: napari's, vispy's and Qt's objects for it), adding
the multiscale layer over the store at x0.25 (the widget's placement of an
x4 result; napari shows level 3, 1024 x 1024, for its 800 x 600 canvas, and
reads level 4 for the thumbnail), then ``--refreshes`` refreshes (napari
reads both again while it holds the previous ones).

``--reads here``: the levels as the widget gives them to napari
(:func:`diinn_napari.io.omezarr.open_levels`' :class:`~diinn_napari.io.omezarr.ReadHere`:
reads in the calling thread, one chunk at a time); ``--reads zarr``: the
zarr arrays themselves (reads through zarr's thread pool, every chunk of a
selection read before it is decoded); ``--zarr-threads N`` sets that pool's
size (process-wide).

    nice -n 10 xvfb-run -a python benchmarks/bench_layer_reads.py --reads here
    nice -n 10 xvfb-run -a python benchmarks/bench_layer_reads.py --reads zarr

Measured (2-core machine shared with a training job, load average 2-3; peak RSS growth over the layer's
add and 20 refreshes, against the RSS before the add; each figure one run):

- uint8: ``--reads here`` 6.54, 6.50, 6.51 MiB (the add +3.42, the first refresh +1.75-1.98, the second
  +0.9, then nothing); the package at a76c0aa (reads in the calling thread, a selection in one read):
  7.76, 7.55 MiB (the first refresh +2.9); ``--reads zarr`` 11.52, 10.83, 10.85 MiB (the add +5.0-5.5,
  still +0.3 MiB at the second refresh);
- uint16: ``--reads here`` 10.30 MiB, ``--reads zarr`` 18.94 MiB;
- a region read again refilled in place while napari still holds it (``ReadHere``, load average about 1):
  ``--reads here`` uint8 4.52 MiB (the add +3.43, the first refresh +0.74, the second +0.05), uint16 6.30 MiB;
- a 16 x 16 layer added: +1.82-1.85 MiB (tracemalloc: about 1.4 MiB of it Python objects, freed when the
  layer is removed: weak references, events, vispy's shader objects and kernel textures), so of the
  store layer's 3.4 MiB about 1.8 MiB is what any layer costs and 1.25 MiB the level-3 region and the
  thumbnail level napari holds; a refresh holds the previous ones until the new ones are read, 1.25 MiB
  more.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from bench_zarr_memory import peak_rss, reset_peak


def rss() -> int:
    """The process's resident set now (bytes), VmRSS."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def make_levels(path: Path, dtype: str, side: int = 8192, chunk: int = 512, smallest: int = 512) -> None:
    """A zarr group of random levels at ``path``, halving from ``side`` down to ``smallest``."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    rng = np.random.default_rng(0)
    top = int(np.iinfo(dtype).max) + 1
    k = 0
    while True:
        array = group.create_array(str(k), shape=(side, side), dtype=dtype, chunks=(min(chunk, side),) * 2,
                                   fill_value=0)
        array[:] = rng.integers(0, top, (side, side), dtype=dtype)
        if side <= smallest:
            return
        side, k = side // 2, k + 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reads", choices=("here", "zarr"), default="here")
    p.add_argument("--dtype", choices=("uint8", "uint16"), default="uint8")
    p.add_argument("--refreshes", type=int, default=20)
    p.add_argument("--zarr-threads", type=int, default=None, help="zarr's thread pool at most this many threads")
    p.add_argument("--make", type=Path, default=None, help=argparse.SUPPRESS)  # (the store, in a process of its own)
    a = p.parse_args()
    if a.make is not None:
        make_levels(a.make, a.dtype)
        return
    import zarr

    if a.zarr_threads is not None:
        zarr.config.set({"threading.max_workers": a.zarr_threads})
    import napari
    from qtpy.QtWidgets import QApplication

    from diinn_napari.io.omezarr import ReadHere

    folder = Path(tempfile.mkdtemp())
    try:
        # made in a process of its own: writing it here would leave zarr's pool threads with grown malloc arenas
        # that the reads then reuse (the widget's worker writes in its own thread, io.omezarr.write_here)
        subprocess.run([sys.executable, __file__, "--make", str(folder / "levels.zarr"), "--dtype", a.dtype],
                       check=True)
        group = zarr.open_group(str(folder / "levels.zarr"), mode="r")
        levels = [group[k] for k in sorted(group.array_keys(), key=int)]
        if a.reads == "here":
            levels = [ReadHere(level) for level in levels]
        top = float(np.iinfo(a.dtype).max)
        viewer = napari.Viewer(show=False)
        app = QApplication.instance()
        viewer.add_image(np.random.default_rng(1).integers(0, 256, (2048, 2048)).astype(a.dtype), name="plane")

        peaks: list[int] = []  # each step's peak RSS (each step starts the peak again)

        def step(name: str, do):
            app.processEvents()
            reset_peak()
            peak0, rss0 = peak_rss(), rss()
            out = do()
            app.processEvents()
            peaks.append(peak_rss())
            grown = ((peaks[-1] - peak0) / 2**20, (rss() - rss0) / 2**20)
            if name:
                print(f"{name}: peak RSS +{grown[0]:.2f} MiB, RSS +{grown[1]:.2f} MiB", flush=True)
            return out

        # warm-up: a layer of each kind added and removed (layer classes, shaders, Qt widgets, zarr codecs)
        for warm in (np.zeros((16, 16), a.dtype), [level for level in levels[-2:]]):
            layer = step("", lambda: viewer.add_image(warm, multiscale=isinstance(warm, list), name="warm",
                                                      contrast_limits=(0, top)))
            step("", lambda: viewer.layers.remove(layer))
        tiny = step("a 16 x 16 layer added", lambda: viewer.add_image(np.zeros((16, 16), a.dtype), name="tiny",
                                                                      contrast_limits=(0, top)))
        step("", lambda: viewer.layers.remove(tiny))
        app.processEvents()
        base_rss, peaks[:] = rss(), []
        layer = step("the store layer added", lambda: viewer.add_image(
            levels, multiscale=True, name="store", scale=(0.25, 0.25), contrast_limits=(0, top)))
        shown = layer._slice.image.raw
        print(f"  napari shows level {layer.data_level}: {shown.shape} {shown.dtype}; thumbnail level "
              f"{layer._thumbnail_level}: {layer._slice.thumbnail.raw.shape}")
        for k in range(a.refreshes):
            step(f"refresh {k + 1}" if k in (0, 1, a.refreshes - 1) else "", layer.refresh)
        print(f"reads {a.reads}, {a.dtype}: over the layer's add and {a.refreshes} refreshes, peak RSS "
              f"+{(max(peaks) - base_rss) / 2**20:.2f} MiB, RSS +{(rss() - base_rss) / 2**20:.2f} MiB")
        viewer.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
