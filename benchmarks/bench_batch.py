"""Batch tool: time and peak memory for a 100-plane and a 25-plane 512x512 uint16 stack at x2.

    python benchmarks/bench_batch.py                 # the bundled-size network (random weights)
    python benchmarks/bench_batch.py --small-model   # a 2-block, width-32 network: same I/O path, minutes faster

Each run is a fresh `python -m diinn_napari.batch` process; its peak memory is
its max RSS. Streaming means the two peaks should be about the same.
"""

from __future__ import annotations

import argparse
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
import resource, sys
from diinn_napari.batch import main
code = main(sys.argv[1:])
print("PEAK_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small-model", action="store_true")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--planes", default="100,25")
    a = p.parse_args()
    torch.manual_seed(0)
    args = dict(decoder_width=32, encoder_args={"n_resblocks": 2, "features": 16}) if a.small_model else {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = save_weights(DIINN(1, skip="bicubic", **args), tmp / "model.safetensors")
        rng = np.random.default_rng(0)
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


if __name__ == "__main__":
    main()
