"""Batch tool: time and peak memory for a 100-plane and a 25-plane 512x512 uint16 stack at x2.

    python benchmarks/bench_batch.py                 # the bundled-size network (random weights)
    python benchmarks/bench_batch.py --small-model   # a 2-block, width-32 network: same I/O path, minutes faster
    python benchmarks/bench_batch.py --small-model --planes 40 --kill-at 0.5   # kill -9 half-way, then resume

Each run is a fresh `python -m diinn_napari.batch` process; its peak memory is
its max RSS. Streaming means the two peaks should be about the same. With
--kill-at F, a second run of each stack is killed with SIGKILL once its partial
file holds a fraction F of the planes, and the rerun's time and resume point
are printed next to the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from diinn_napari.model import DIINN
from diinn_napari.weights import save_weights


# the batch CLI in a fresh process, reporting that process's own peak RSS
RUN = """
import os, resource, sys
import numpy as np
import diinn_napari.engine as engine

def nearest(self, image, **kwargs):  # --io-only: no network, nearest-neighbour x2
    H, W = self.settings.output_shape
    for index in np.ndindex(*image.shape[:-2]):
        plane = np.asarray(image[index])
        yield index, plane[np.arange(H) * plane.shape[0] // H][:, np.arange(W) * plane.shape[1] // W]

if os.environ.get("DIINN_BENCH_IO_ONLY"):
    engine.Engine.planes = nearest
from diinn_napari.batch import main
code = main(sys.argv[1:])
print("PEAK_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small-model", action="store_true")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--planes", default="100,25", help="stack sizes to run, comma-separated")
    p.add_argument("--io-only", action="store_true",
                   help="replace the network by nearest-neighbour resizing: times the reading and writing path alone")
    p.add_argument("--kill-at", type=float, default=None,
                   help="also kill a run with SIGKILL at this fraction of the planes (0..1) and time the resuming rerun")
    a = p.parse_args()
    torch.manual_seed(0)
    args = dict(decoder_width=32, encoder_args={"n_resblocks": 2, "features": 16}) if a.small_model else {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = save_weights(DIINN(1, skip="bicubic", **args), tmp / "model.safetensors")
        rng = np.random.default_rng(0)
        if a.io_only:
            os.environ["DIINN_BENCH_IO_ONLY"] = "1"
            print("io-only: the engine is replaced by nearest-neighbour resizing (reading, partial file, writing)")
        print(f"model: {'small (2 blocks, width 32)' if a.small_model else 'EDSR-baseline + 4 x 256 decoder'}, CPU threads {torch.get_num_threads()}")
        for n in (int(v) for v in a.planes.split(",")):
            src = tmp / f"stack{n}.tif"
            with tifffile.TiffWriter(src, imagej=True) as tif:  # written plane by plane too
                tif.write((rng.integers(0, 4096, (a.size, a.size), dtype=np.uint16) for _ in range(n)),
                          shape=(n, a.size, a.size), dtype=np.uint16, metadata={"axes": "ZYX"})
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", RUN, str(src), "--scale", "2", "--out",
                                   str(tmp / f"out{n}"), "--model", str(weights)], capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode:
                raise SystemExit(done.stdout + done.stderr)
            peak = int(done.stdout.split("PEAK_KIB")[-1]) / 1024
            out_mb = (tmp / f"out{n}" / src.name).stat().st_size / 2**20
            print(f"{n:4d} planes {a.size}x{a.size} uint16 -> x2: {seconds:7.1f} s, {seconds / n:5.2f} s/plane, "
                  f"peak RSS {peak:7.0f} MiB, output {out_mb:6.0f} MiB")
            if a.kill_at is not None:
                kill_and_resume(src, tmp / f"killed{n}", weights, n, round(a.kill_at * n), (2 * a.size) ** 2 * 2, seconds)


def kill_and_resume(src: Path, out: Path, weights: Path, n: int, kill_at: int, plane_bytes: int, full: float) -> None:
    """Run the batch, SIGKILL it once its partial file holds ``kill_at`` planes, rerun, compare with ``full`` s."""
    args = [sys.executable, "-c", RUN, str(src), "--scale", "2", "--out", str(out), "--model", str(weights)]
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while child.poll() is None:
        partials = list(out.glob(".*.partial")) if out.is_dir() else []
        # header (under plane_bytes) + whole planes, each with a 4-byte checksum
        if partials and partials[0].stat().st_size // (plane_bytes + 4) >= kill_at:
            os.kill(child.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    child.wait()
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stdout + done.stderr)
    resumed = re.search(r"resumed at plane (\d+) of (\d+)", done.stdout)
    where = f"resumed at plane {resumed[1]} of {resumed[2]}" if resumed else "started over"
    print(f"     killed (SIGKILL) after {kill_at} of {n} planes; rerun {seconds:7.1f} s ({where}); "
          f"uninterrupted run {full:7.1f} s")


if __name__ == "__main__":
    main()
