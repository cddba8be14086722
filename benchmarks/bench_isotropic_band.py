"""Peak memory of one band of the isotropic Z resampling (what the widget's store writes at a time).

The widget's store for isotropic voxels takes one band of Y rows (every
output plane, every X) from :func:`~diinn_napari.isotropic.isotropic_steps` at
a time (``_store.BAND_VOXELS``); this measures the growth of the process's
peak RSS while making bands of ``--rows`` rows of a random uint16 volume with
a small random DIINN (speed is not the point), after a warm-up on 16 rows.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_isotropic_band.py --rows 256
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_isotropic_band.py --rows 64
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_zarr_memory import peak_rss, reset_peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=256, help="Y rows of a band")
    p.add_argument("--shape", type=int, nargs=3, default=(20, 256, 1024), help="input Z, Y, X")
    p.add_argument("--dz", type=float, default=3.0, help="Z step in XY pixels (the output's is 1)")
    a = p.parse_args()

    import torch

    from diinn_napari.isotropic import isotropic_steps
    from diinn_napari.model import DIINN

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = DIINN(1, variant="f", skip="bicubic", decoder_width=8, encoder_args={"n_resblocks": 1, "features": 8}).eval()
    volume = np.random.default_rng(0).integers(0, 3000, tuple(a.shape), dtype=np.uint16)
    spacing = (a.dz, 1.0, 1.0)
    for _ in isotropic_steps(volume[:, :16], spacing, model=net, device="cpu", block_rows=16):  # warm-up
        pass
    reset_peak()
    base = peak_rss()
    bands, shape = 0, None
    for step in isotropic_steps(volume, spacing, model=net, device="cpu", block_rows=a.rows):
        if step.rows is not None:
            bands, shape = bands + 1, step.block.shape
    growth = peak_rss() - base
    voxels = shape[0] * min(a.rows, a.shape[1]) * shape[2]
    print(f"{bands} bands of {shape[0]} x {min(a.rows, a.shape[1])} x {shape[2]} = {voxels / 1e6:.1f} M output voxels; "
          f"peak RSS growth {growth / 2**20:.0f} MiB = {growth / (voxels * 4):.1f} float32 bands")


if __name__ == "__main__":
    main()
