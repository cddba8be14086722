"""Satellite bands: the gray model band by band versus the RGB model on the RGB triple, and a GeoTIFF through batch.

    nice -n 10 python benchmarks/geotiff_bands.py ../shared/data/domains/satellite/naip_m_4709963_se_14_1_20100629.tif \
        --crop 128 --scale 2

1. A crop of the file is the reference; its antialiased bicubic downsampling
   (the training degradation) the input. Per band: PSNR gain over bicubic of
   the gray model on every band, and of the RGB model on bands 1-3 (the
   declared or the first three), mean bias in % of the band's robust range.
2. The crop, written as a GeoTIFF with the file's georeferencing (rasterio),
   goes through ``python -m diinn_napari.batch --scale S``; its transform
   before and after is printed, and the output's per-band mean bias.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from diinn_napari import upscale
from diinn_napari.quality import downsample_array, mean_bias_percent, psnr, robust_range


def bicubic(lr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=size, mode="bicubic", align_corners=False)[0, 0].numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", type=Path)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--scale", type=int, default=2)
    a = p.parse_args()
    with rasterio.open(a.path) as src:
        y0, x0 = (src.height - a.crop) // 2, (src.width - a.crop) // 2
        window = Window(x0, y0, a.crop, a.crop)
        hr = src.read(window=window).astype(np.float32)
        profile = src.profile | {"width": a.crop, "height": a.crop, "transform": src.window_transform(window),
                                 "tiled": False}
        crop = src.read(window=window)
        print(f"{a.path.name}: {src.count} bands {src.dtypes[0]}, {src.crs}, crop {a.crop} x {a.crop} at ({y0}, {x0})")
    n = a.crop // a.scale
    lr = downsample_array(hr, (n, n))
    lr = np.clip(np.rint(lr), 0, 255).astype(np.uint8) if crop.dtype == np.uint8 else lr.astype(crop.dtype)
    gray = np.stack([upscale(lr[b], a.scale, model="gray", device="cpu").astype(np.float32) for b in range(len(lr))])
    rgb = upscale(np.moveaxis(lr[:3], 0, -1), a.scale, model="rgb", rgb=True, device="cpu").astype(np.float32)
    rgb = np.moveaxis(rgb, -1, 0)
    print("band  bicubic PSNR  gray-model gain  RGB-model gain  gray bias %  RGB bias %")
    for b in range(len(hr)):
        rng = robust_range(hr[b])
        base = psnr(bicubic(lr[b], hr.shape[1:]), hr[b], rng)
        gain_gray = psnr(gray[b], hr[b], rng) - base
        line = f"{b + 1:>4}  {base:12.2f}  {gain_gray:+15.2f}"
        if b < 3:
            line += f"  {psnr(rgb[b], hr[b], rng) - base:+14.2f}  {mean_bias_percent(gray[b], hr[b]):+11.3f}  " \
                    f"{mean_bias_percent(rgb[b], hr[b]):+10.3f}"
        else:
            line += f"  {'-':>14}  {mean_bias_percent(gray[b], hr[b]):+11.3f}  {'-':>10}"
        print(line)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with rasterio.open(a.path) as src:
            interpretation = src.colorinterp
        with rasterio.open(tmp / "crop.tif", "w", **profile) as dst:
            dst.write(crop)
            dst.colorinterp = interpretation  # the band meaning of the file, not GDAL's default for the crop
        command = [sys.executable, "-m", "diinn_napari.batch", str(tmp / "crop.tif"), "--scale", str(a.scale),
                   "--out", str(tmp / "up")]
        subprocess.run(command, check=True, capture_output=True)
        with rasterio.open(tmp / "crop.tif") as src, rasterio.open(tmp / "up" / "crop.tif") as out:
            print(f"transform before: {tuple(round(v, 4) for v in tuple(src.transform)[:6])}  ({src.width} x {src.height})")
            print(f"transform after:  {tuple(round(v, 4) for v in tuple(out.transform)[:6])}  ({out.width} x {out.height})")
            print(f"CRS {src.crs} -> {out.crs}; nodata {src.nodata} -> {out.nodata}; colour interpretation "
                  f"{[c.name for c in src.colorinterp]} -> {[c.name for c in out.colorinterp]}")
            biases = [100 * (out.read(b).mean() - src.read(b).mean()) / robust_range(src.read(b))
                      for b in range(1, src.count + 1)]
            print("batch output per-band mean bias %: " + ", ".join(f"{v:+.3f}" for v in biases))


if __name__ == "__main__":
    main()
