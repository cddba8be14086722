"""Gain and cost of the geometric self-ensemble (RunSettings.ensemble) on Set14 and held-aside domain files.

    nice -n 10 python benchmarks/ensemble.py [--data ../shared/data] [--scale 4] [--limit 14] [--crop 0]
        [--domain FILE ...]

For every image: the engine's result with and without ``ensemble=True``
(the evaluation protocol of ``python -m diinn_napari.evaluate``: HR -> training
degradation -> model, PSNR on the Y channel / gray with the border cropped),
its PSNR, mean bias and LR-PSNR (agreement of the downsampled output with the
input), and the wall time of each, measured in the same run. ``--crop N``
takes the central N x N pixels of each HR image (on a loaded machine).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from diinn_napari.engine import get_model
from diinn_napari.evaluate import compare, find_images, load_hr

SET14 = "benchmarks/Set14"  # under --data
DOMAIN = ["domains/thermal/tno_athena_apc_1_view_1.png",  # under --data: files the gray model held aside
          "domains/thermal/tno_triclobs_barbed_wire_1.png",
          "domains/microscopy/xy_16bit__autophagosomes.tif"]


def measure(files, scale: float, model, channels: int, crop: int = 0) -> list[dict]:
    net = get_model(model, channels, "cpu")
    rows = []
    for path in files:
        hr = load_hr(Path(path), channels)
        if hr is None:
            continue
        if crop:
            y, x = max(0, (hr.shape[1] - crop) // 2), max(0, (hr.shape[2] - crop) // 2)
            hr = np.ascontiguousarray(hr[:, y : y + crop, x : x + crop])
        row = {"image": Path(path).name}
        for ensemble in (False, True):
            start = time.perf_counter()
            scores = compare(hr, scale, net, device="cpu", ensemble=ensemble)
            key = "ens" if ensemble else "one"
            row[key] = {**scores, "seconds": time.perf_counter() - start}
        rows.append(row)
        one, ens = row["one"], row["ens"]
        print(f"  {row['image']:<36} {one['psnr']:7.3f} -> {ens['psnr']:7.3f} dB ({ens['psnr'] - one['psnr']:+.3f}), "
              f"bias {one['bias']:+.3f} -> {ens['bias']:+.3f} %, LR-PSNR {one['lr_psnr']:.1f} -> {ens['lr_psnr']:.1f}, "
              f"{one['seconds']:.1f} s -> {ens['seconds']:.1f} s (x{ens['seconds'] / one['seconds']:.1f})", flush=True)
    return rows


def summary(name: str, rows: list[dict]) -> None:
    gain = np.mean([r["ens"]["psnr"] - r["one"]["psnr"] for r in rows])
    cost = sum(r["ens"]["seconds"] for r in rows) / sum(r["one"]["seconds"] for r in rows)
    print(f"{name}: {len(rows)} images, mean PSNR gain {gain:+.3f} dB "
          f"({min(r['ens']['psnr'] - r['one']['psnr'] for r in rows):+.3f} .. "
          f"{max(r['ens']['psnr'] - r['one']['psnr'] for r in rows):+.3f}), time x{cost:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data folder")
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--limit", type=int, default=14, help="the first N images of Set14 (0: none)")
    parser.add_argument("--crop", type=int, default=0, help="central N x N of each HR image (0: whole)")
    parser.add_argument("--domain", nargs="*", default=None,
                        help="held-aside domain files (gray model); default: three under --data")
    args = parser.parse_args()
    domain = args.domain if args.domain is not None else [args.data / f for f in DOMAIN]
    crop = f", central {args.crop} x {args.crop}" if args.crop else ""
    if args.limit:
        print(f"Set14 x{args.scale:g} (RGB model, first {args.limit}{crop}):", flush=True)
        summary("Set14", measure(find_images(args.data / SET14)[: args.limit], args.scale, "default", 3, args.crop))
    print(f"held-aside domain files x{args.scale:g} (gray model{crop}):", flush=True)
    summary("domain", measure(domain, args.scale, "default", 1, args.crop))


if __name__ == "__main__":
    main()
