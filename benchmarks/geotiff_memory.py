"""Memory of GeoTIFF reading and writing: peak allocations while every band is read and the output is written.

    nice -n 10 python benchmarks/geotiff_memory.py --size 2000 --bands 6 --scale 2

A synthetic uint16 scene (``--bands`` bands of ``--size`` squared pixels,
EPSG:32614) is written by rasterio pixel-interleaved and band-separate,
deflate-compressed in strips. Then, as the batch tool does:

1. read: the bands through ``io.open_planes``, one after the other, each
   dropped before the next (the engine holds one input plane at a time);
2. write: ``io.write_planes`` of an output ``--scale`` times larger, the
   planes made one at a time (as the batch reads them from its partial file).

Printed: the peak of numpy/Python allocations (tracemalloc) in MiB and as a
multiple of one band and of the whole scene (input) or output. Run it with
``PYTHONPATH`` pointing at another checkout to compare versions.
"""

from __future__ import annotations

import argparse
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine

from diinn_napari import io

MIB = 1 << 20


def write_scene(path: Path, bands: int, size: int, interleave: str) -> None:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=bands, dtype="uint16",
                       crs="EPSG:32614", transform=Affine(10.0, 0, 500000.0, 0, -10.0, 4200000.0),
                       interleave=interleave, compress="deflate") as dst:
        for b in range(bands):
            dst.write((1000 + 800 * np.sin(7 * x + b) * np.cos(5 * y) + 1000).astype(np.uint16), b + 1)


def peak(run) -> float:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=2000)
    p.add_argument("--bands", type=int, default=6)
    p.add_argument("--scale", type=float, default=2.0)
    a = p.parse_args()
    band = a.size * a.size * 2
    out_size = round(a.size * a.scale)
    out_band = out_size * out_size * 2
    print(f"scene {a.bands} x {a.size} x {a.size} uint16: band {band / MIB:.1f} MiB, scene {a.bands * band / MIB:.1f} MiB; "
          f"output {a.bands} x {out_size} x {out_size}: band {out_band / MIB:.1f} MiB, all {a.bands * out_band / MIB:.1f} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        for interleave in ("pixel", "band"):
            path = Path(tmp) / f"{interleave}.tif"
            write_scene(path, a.bands, a.size, interleave)
            info = io.read_info(path)

            def read_every_band(info=info):
                with io.open_planes(info) as planes:
                    for index in np.ndindex(*info.leading):
                        planes[index]

            def write_output(info=info, path=path):
                def planes():
                    for b in range(a.bands):
                        yield np.full((out_size, out_size), 1000 + b, np.uint16)
                io.write_planes(path.with_suffix(".out.tif"), info, (out_size, out_size), np.uint16, planes())

            read_peak, write_peak = peak(read_every_band), peak(write_output)
            print(f"{interleave:>5}-interleaved  read every band: peak {read_peak / MIB:7.1f} MiB = "
                  f"{read_peak / band:4.2f} bands = {read_peak / (a.bands * band):4.2f} scenes   "
                  f"write output: peak {write_peak / MIB:7.1f} MiB = {write_peak / out_band:4.2f} output bands = "
                  f"{write_peak / (a.bands * out_band):4.2f} outputs")


if __name__ == "__main__":
    main()
