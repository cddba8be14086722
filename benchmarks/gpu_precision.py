"""Low precision (fp16 / bf16 autocast) against fp32: agreement, PSNR cost and bias on a folder of HR images.

    python benchmarks/gpu_precision.py ../shared/data/benchmarks/Set5                    # CUDA: fp16, bf16
    python benchmarks/gpu_precision.py ../shared/data/benchmarks/Set14 --device cpu      # CPU: bf16
    python benchmarks/gpu_precision.py DIR --channels 1 --scales 2,4 --json out.json

Protocol of ``python -m diinn_napari.evaluate --protocol diinn``: each HR image
(first plane, [0, 1]) is downsampled with the training degradation to
round(H / s), upscaled back to the HR size by the engine (default data
consistency), and scored on all channels with no shave. For every image and
scale it reports, for each low precision against fp32: the largest and mean
absolute difference of the outputs, the mean signed difference (bias), the
PSNR of the low-precision output against fp32's (agreement), and the PSNR
change against the HR image (the quality cost; <= 0.02 dB is the bar).
Needs only torch, numpy, scikit-image (and tifffile for TIFF): runs with
``PYTHONPATH=src`` on a machine without napari.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _images(folder: Path, limit: int | None) -> list[Path]:
    from diinn_napari.io import find_images

    return (find_images(folder) if folder.is_dir() else [folder])[:limit]


def compare(files: list[Path], scales: list[float], precisions: list[str], device: str, channels: int,
            consistency: int) -> dict:
    from diinn_napari import upscale
    from diinn_napari.engine import get_model
    from diinn_napari.evaluate import load_hr, scores
    from diinn_napari.quality import downsample, psnr

    net = get_model("default", channels, device)
    rows = []
    for path in files:
        hr = load_hr(path, channels)
        if hr is None:
            print(f"skip {path.name}: no {channels}-channel plane", file=sys.stderr)
            continue
        for scale in scales:
            H, W = hr.shape[-2:]
            lr = downsample(torch.from_numpy(hr)[None], (max(1, round(H / scale)), max(1, round(W / scale))))[0].numpy()
            lr = lr.transpose(1, 2, 0) if channels == 3 else lr[0]
            outputs, seconds = {}, {}
            for precision in ["fp32"] + precisions:
                start = time.perf_counter()
                sr = upscale(lr, output_shape=(H, W), model=net, rgb=channels == 3, intensity="none",
                             consistency=consistency, device=device, precision=precision)
                seconds[precision] = time.perf_counter() - start
                outputs[precision] = sr.transpose(2, 0, 1) if channels == 3 else sr[None]
            exact = outputs["fp32"]
            base = scores(hr, exact, "diinn", scale)["psnr"]
            row = {"image": path.name, "scale": scale, "psnr_fp32": base, "seconds_fp32": seconds["fp32"]}
            for precision in precisions:
                diff = outputs[precision] - exact
                row[precision] = {
                    "max_abs": float(np.abs(diff).max()), "mean_abs": float(np.abs(diff).mean()),
                    "bias": float(diff.mean()),
                    "psnr_vs_fp32": psnr(np.clip(outputs[precision], 0, 1), np.clip(exact, 0, 1), 1.0),
                    "psnr_change_db": scores(hr, outputs[precision], "diinn", scale)["psnr"] - base,
                    "seconds": seconds[precision],
                }
            rows.append(row)
            text = "  ".join(f"{p}: max {row[p]['max_abs']:.4f} mean {row[p]['mean_abs']:.5f} bias {row[p]['bias']:+.6f}"
                             f" agree {row[p]['psnr_vs_fp32']:.1f} dB dPSNR {row[p]['psnr_change_db']:+.4f} dB"
                             for p in precisions)
            print(f"{path.name:<16} x{scale:g}  fp32 {base:.2f} dB  {text}", flush=True)
    summary = {}
    for precision in precisions:
        for scale in scales:
            sel = [r[precision] for r in rows if r["scale"] == scale]
            if not sel:
                continue
            summary[f"{precision} x{scale:g}"] = {
                "max_abs": max(r["max_abs"] for r in sel),
                "mean_abs": float(np.mean([r["mean_abs"] for r in sel])),
                "mean_bias": float(np.mean([r["bias"] for r in sel])),
                "min_psnr_vs_fp32": min(r["psnr_vs_fp32"] for r in sel),
                "mean_psnr_change_db": float(np.mean([r["psnr_change_db"] for r in sel])),
                "worst_psnr_change_db": min(r["psnr_change_db"] for r in sel),
                "speedup": float(sum(r2["seconds_fp32"] for r2 in rows if r2["scale"] == scale)
                                 / sum(r["seconds"] for r in sel)),
            }
    return {"device": device, "channels": channels, "consistency": consistency, "rows": rows, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("folder", type=Path, help="folder of HR images (e.g. Set5) or one image")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precisions", default=None, help="comma-separated; default fp16,bf16 on CUDA, bf16 on the CPU")
    p.add_argument("--scales", default="2,3,4")
    p.add_argument("--channels", type=int, default=3, choices=[1, 3], help="3: bundled RGB model; 1: gray on luminance")
    p.add_argument("--consistency", type=int, default=None, help="engine default when not given")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--json", default=None, help="write rows and summary here")
    a = p.parse_args(argv)
    from diinn_napari.settings import DEFAULT_CONSISTENCY

    if not a.folder.exists():
        print(f"error: {a.folder} does not exist (pass the Set5 folder, e.g. ../shared/data/benchmarks/Set5)",
              file=sys.stderr)
        return 2
    precisions = (a.precisions or ("fp16,bf16" if a.device.startswith("cuda") else "bf16")).split(",")
    consistency = DEFAULT_CONSISTENCY if a.consistency is None else a.consistency
    print(f"torch {torch.__version__}, device {a.device}"
          + (f" ({torch.cuda.get_device_name(a.device)})" if a.device.startswith("cuda") else
             f", {torch.get_num_threads()} threads") + f", {a.channels}-channel bundled model, consistency {consistency}")
    result = compare(_images(a.folder, a.limit), [float(s) for s in a.scales.split(",")], precisions, a.device,
                     a.channels, consistency)
    print("== summary (quality cost bar: worst dPSNR >= -0.02 dB)")
    ok = True
    for key, s in result["summary"].items():
        good = s["worst_psnr_change_db"] >= -0.02
        ok &= good
        print(f"{key:<10} max|d| {s['max_abs']:.4f}  mean|d| {s['mean_abs']:.5f}  bias {s['mean_bias']:+.6f}"
              f"  agreement >= {s['min_psnr_vs_fp32']:.1f} dB  dPSNR mean {s['mean_psnr_change_db']:+.4f}"
              f" worst {s['worst_psnr_change_db']:+.4f} dB  speed-up {s['speedup']:.2f}x  {'ok' if good else 'ABOVE BAR'}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {a.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
