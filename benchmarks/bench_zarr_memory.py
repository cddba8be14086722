"""Peak memory while a large result is written into an OME-Zarr store tile by tile (results larger than memory).

A small random DIINN (speed is not the point) upscales one random uint8
plane into a multiscale OME-Zarr image with ``upscale(..., out=path)``; the
figure is the growth of the process's peak RSS during that run (read from
/proc/self/status VmHWM after the model, the input and the store exist),
against the size of the result. Target: growth <= 10 % of the result.

    nice -n 10 python benchmarks/bench_zarr_memory.py --size 8192 --scale 4
    nice -n 10 python benchmarks/bench_zarr_memory.py --size 32768 --scale 8   # long
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=8192, help="output side (pixels)")
    p.add_argument("--scale", type=float, default=4.0)
    p.add_argument("--tile", type=int, default=256, help="LR tile side")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dir", type=Path, default=None, help="where the store goes (default: a temporary folder)")
    a = p.parse_args()

    import torch

    from diinn_napari import upscale
    from diinn_napari.model import DIINN

    torch.manual_seed(0)
    net = DIINN(1, variant="f", skip="bicubic", decoder_width=8, encoder_args={"n_resblocks": 1, "features": 8}).eval()
    side = round(a.size / a.scale)
    image = np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)
    folder = Path(tempfile.mkdtemp(dir=a.dir))
    try:
        # warm-up (model, torch kernels, zarr codecs), so the peak below is the run's own
        upscale(image[:64, :64], a.scale, model=net, tile_size=a.tile, threads=a.threads, consistency=0,
                out=folder / "warm.ome.zarr")
        reset_peak()
        base = peak_rss()
        started = time.perf_counter()
        level0 = upscale(image, a.scale, model=net, tile_size=a.tile, threads=a.threads, consistency=0,
                         out=folder / "result.ome.zarr")
        seconds = time.perf_counter() - started
        growth = peak_rss() - base
        result_bytes = int(np.prod(level0.shape)) * level0.dtype.itemsize
        print(f"input {side} x {side} uint8 -> result {level0.shape[0]} x {level0.shape[1]} uint8 "
              f"({result_bytes / 2**20:.0f} MiB), x{a.scale:g}, tile {a.tile}, {a.threads} threads")
        print(f"time {seconds:.1f} s; RSS before {base / 2**20:.0f} MiB; peak RSS growth {growth / 2**20:.1f} MiB "
              f"= {100 * growth / result_bytes:.1f} % of the result (target <= 10 %)")
        from ome_zarr.io import parse_url
        from ome_zarr.reader import Reader

        levels = list(Reader(parse_url(str(folder / "result.ome.zarr")))())[0].data
        print("levels read by ome-zarr-py:", [tuple(lv.shape) for lv in levels])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
