"""Peak memory while a large result is written into an OME-Zarr store tile by tile (results larger than memory).

A small random DIINN (speed is not the point) upscales one random uint8
plane into a multiscale OME-Zarr image. ``--sink store`` (default): the
resumable block store the batch tool and the napari out-of-memory mode write
(:class:`diinn_napari.io.omezarr.BlockStore`, whole chunks, flushed, a
ledger); ``--sink library``: ``upscale(..., out=path)`` (tiles, equal to the
in-memory result). The figure is the growth of the process's peak RSS during
that run (read from /proc/self/status VmHWM after the model, the input and
the store exist), against the size of the result. Target: growth <= 10 % of
the result. ``--rows R`` (store sink) stops after R rows of blocks and
extrapolates the time to the whole result (the working set is one block's:
it is reached in the first row and does not grow with the result); ``--blocks N``
stops after N blocks.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_zarr_memory.py --size 8192 --scale 4
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_zarr_memory.py --size 32768 --scale 8   # tens of minutes
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/bench_zarr_memory.py --size 8192 --scale 4 --model widget --consistency 2

The last: the napari widget benchmark's model (``bench_widget_ooc.py``) and the widget's default
back-projection, so its figure compares with that benchmark's ``--part no-layer``. Measured at 1c05585 (load
average about 2): 8192 x 8192 uint8, the default 0.5-3.9 MiB in 14 runs (0.7, 3.4, 3.3, 1.3, 1.1, 1.0, 1.6,
1.9, 3.9, 0.5, 3.1, 2.9, 0.8, 1.1; CPU 13-14 s; the same code each time, this file or its copy at 1c05585
with or without these lines: the spread is the allocator's, not the code's); ``--model widget
--consistency 2`` 2.7, 2.0, 2.8, 2.0, 2.6, 2.4 MiB (CPU 33-35 s); ``--model widget`` 2.1 and 1.3 MiB (CPU 20-21 s).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def peak_rss() -> int:
    """The process's peak resident set (bytes), VmHWM."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def run_store(image, scale, net, a, path):
    """The resumable block store, as the batch tool and the napari widget write it; (level 0, share of blocks done)."""
    from diinn_napari import Engine, RunSettings
    from diinn_napari.io import ImageInfo
    from diinn_napari.io.omezarr import BlockStore

    settings = RunSettings(scale=scale, model=net, tile_size=a.tile, threads=a.threads, consistency=a.consistency)
    out_yx = settings.output_yx(image.shape)
    info = ImageInfo(path, "ome-zarr", "YX", out_yx, image.dtype)
    store = BlockStore.create(path, info, b"benchmark\n")
    per_row = -(-out_yx[1] // store.block[1])
    limit = a.blocks if getattr(a, "blocks", None) else (None if a.rows is None else a.rows * per_row)
    for step in Engine(settings).steps(image, out=store):
        if limit is not None and len(store.done) >= limit:
            break
    return store.array, len(store.done) / store.blocks_total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=8192, help="output side (pixels)")
    p.add_argument("--scale", type=float, default=4.0)
    p.add_argument("--tile", type=int, default=256, help="LR tile side")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dir", type=Path, default=None, help="where the store goes (default: a temporary folder)")
    p.add_argument("--sink", choices=("store", "library"), default="store")
    p.add_argument("--dtype", choices=("uint8", "uint16"), default="uint8", help="the input's (and the result's) dtype")
    p.add_argument("--warm", type=int, default=1024,
                   help="output side of the warm-up run: 1024 is 4 x 4 windows of 256, so torch has met every window "
                        "shape (edge and interior halos; its first interior window costs about 7.5 MiB once)")
    p.add_argument("--rows", type=int, default=None,
                   help="store sink: stop after this many block rows and extrapolate the time to the whole result")
    p.add_argument("--blocks", type=int, default=None, help="store sink: stop after this many blocks (as --rows)")
    p.add_argument("--model", choices=("tiny", "widget"), default="tiny",
                   help="tiny: the smallest DIINN (2 x 4 decoder, 4 features); widget: bench_widget_ooc.py's "
                        "(decoder width 8, 8 features), to compare with the napari widget's store path")
    p.add_argument("--consistency", type=int, default=0,
                   help="back-projection steps (store sink; the widget's default is 2)")
    p.add_argument("--lean-heap", action="store_true",
                   help="call diinn_napari.io.omezarr.lean_heap() first: glibc's mmap threshold kept at 128 KiB "
                        "(less peak memory, more system CPU)")
    a = p.parse_args()
    if a.lean_heap:
        from diinn_napari.io.omezarr import lean_heap

        print("lean heap:", lean_heap())

    import torch

    from diinn_napari import upscale
    from diinn_napari.model import DIINN

    torch.manual_seed(0)
    # the smallest DIINN the package builds (2 x 4 decoder, 4 features, one residual block): the memory is the
    # pipeline's (windows, blocks, zarr), not the model's, and the 32768 x 32768 run then ends in minutes of CPU
    if a.model == "tiny":
        net = DIINN(1, variant="f", skip="bicubic", decoder_layers=2, decoder_width=4,
                    encoder_args={"n_resblocks": 1, "features": 4}).eval()
    else:  # bench_widget_ooc.py's model
        net = DIINN(1, variant="f", skip="bicubic", decoder_width=8, encoder_args={"n_resblocks": 1, "features": 8}).eval()
    side = round(a.size / a.scale)
    image = np.random.default_rng(0).integers(0, np.iinfo(a.dtype).max + 1, (side, side), dtype=a.dtype)
    folder = Path(tempfile.mkdtemp(dir=a.dir))
    try:
        # warm-up: the same pipeline on 2 x 2 blocks of output (model, torch kernels and their state for every
        # window shape, zarr codecs, the allocator's pools), so the peak below is what the result itself costs
        warm = max(16, round(min(a.size, a.warm) / a.scale))
        if a.sink == "library":
            upscale(image[:warm, :warm], a.scale, model=net, tile_size=a.tile, threads=a.threads, consistency=0,
                    out=folder / "warm.ome.zarr")
        else:
            run_store(image[:warm, :warm], a.scale, net, argparse.Namespace(**{**vars(a), "rows": None, "blocks": None}),
                      folder / "warm.ome.zarr")
        shutil.rmtree(folder / "warm.ome.zarr")
        reset_peak()
        base = peak_rss()
        started = time.perf_counter()
        fraction = 1.0
        if a.sink == "library":
            level0 = upscale(image, a.scale, model=net, tile_size=a.tile, threads=a.threads, consistency=0,
                             out=folder / "result.ome.zarr")
        else:
            level0, fraction = run_store(image, a.scale, net, a, folder / "result.ome.zarr")
        seconds = time.perf_counter() - started
        cpu = time.process_time()
        growth = peak_rss() - base
        result_bytes = int(np.prod(level0.shape)) * level0.dtype.itemsize
        print(f"sink {a.sink}: input {side} x {side} {a.dtype} -> result {level0.shape[0]} x {level0.shape[1]} {a.dtype} "
              f"({result_bytes / 2**20:.0f} MiB), x{a.scale:g}, tile {a.tile}, {a.threads} threads, model {a.model}, "
              f"consistency {a.consistency if a.sink == 'store' else 0}")
        done = "" if fraction == 1 else (f" for {100 * fraction:.1f} % of the blocks (extrapolated to the whole "
                                         f"result: {seconds / fraction / 3600:.1f} h wall)")
        print(f"time {seconds:.1f} s wall{done}; process CPU {cpu:.0f} s; RSS before {base / 2**20:.0f} MiB; "
              f"peak RSS growth {growth / 2**20:.1f} MiB = {100 * growth / result_bytes:.1f} % of the result "
              "(target <= 10 %)")
        if fraction < 1:
            return
        from ome_zarr.io import parse_url
        from ome_zarr.reader import Reader

        levels = list(Reader(parse_url(str(folder / "result.ome.zarr")))())[0].data
        print("levels read by ome-zarr-py:", [tuple(lv.shape) for lv in levels])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
