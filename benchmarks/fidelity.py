"""Fidelity of the gray model on held-aside scientific images: bias, clipping, PSNR vs bicubic, LR-consistency.

    python benchmarks/fidelity.py ../shared/data/domains [--scales 2,3,4] [--consistency 0,2] [--crop 256]
        [--model default] [--json fidelity.json]

Images: the files of ``DOMAINS/*`` that the model's weights metadata lists as
held aside (``val_files``, matched by folder and file name), first plane of
each (luminance for RGB files, rounded to their dtype), a centre crop of
``--crop`` pixels; plus a synthetic sparse fluorescence plane
(:func:`diinn_napari.quality.sparse_fluorescence`: Poisson spots on a dark,
noisy background).

Two checks per image, scale and consistency setting, all in the image's own
dtype and units, through the engine with its default intensity handling
(the path a user takes):

* ground truth: LR = the crop downsampled with the training degradation and
  cast back to the dtype; the model and bicubic (cast likewise) upscale it
  to the crop's size. PSNR on the crop's robust range (p99.9 - p0.1), mean
  bias in % of it, and the fraction of pixels clipped at the dtype's limits
  where the crop is not.
* real use: the crop itself upscaled, downsampled back, compared with the
  crop (LR-consistency PSNR and bias; :func:`diinn_napari.evaluate.real_scores`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diinn_napari.engine import get_model, upscale
from diinn_napari.core import cast
from diinn_napari.evaluate import load_native, real_scores
from diinn_napari.quality import (clipped_fraction, downsample_array, mean_bias_percent, psnr, robust_range,
                                  sparse_fluorescence)
from diinn_napari.weights import read_metadata, resolve


def held_aside(domains: Path, model: str) -> list[Path]:
    """Files under ``domains`` that the weights' metadata lists in ``val_files`` (matched by folder/name)."""
    listed = read_metadata(resolve(model, 1)).get("val_files", [])
    keys = {tuple(Path(f).parts[-2:]) for f in listed}
    return sorted(p for p in domains.glob("*/*") if p.is_file() and tuple(p.parts[-2:]) in keys)


def centre_crop(plane: np.ndarray, size: int) -> np.ndarray:
    h, w = plane.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return plane[y : y + size, x : x + size]


def ground_truth_scores(hr: np.ndarray, scale: float, net, consistency: int) -> dict:
    """Degrade ``hr`` (Y, X) in its dtype, upscale back with the model and bicubic, compare with ``hr``."""
    H, W = hr.shape
    lr = cast(downsample_array(hr, (max(1, round(H / scale)), max(1, round(W / scale)))), hr.dtype)
    sr = upscale(lr, output_shape=(H, W), model=net, consistency=consistency)
    bic = F.interpolate(torch.from_numpy(lr.astype(np.float32))[None, None], (H, W), mode="bicubic",
                        align_corners=False)[0, 0].numpy()
    bic = cast(bic, hr.dtype)
    value_range = robust_range(hr)
    return {
        "psnr": psnr(sr, hr, value_range), "bicubic_psnr": psnr(bic, hr, value_range),
        "bias": mean_bias_percent(sr, hr, value_range), "bicubic_bias": mean_bias_percent(bic, hr, value_range),
        "clipped": clipped_fraction(sr, hr), "bicubic_clipped": clipped_fraction(bic, hr),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("domains", type=Path, help="folder with the domain folders (microscopy, thermal, satellite)")
    p.add_argument("--scales", default="2,3,4", help="comma-separated scales")
    p.add_argument("--consistency", default="0,2", help="comma-separated back-projection settings to compare")
    p.add_argument("--crop", type=int, default=256, help="centre crop of each plane, in pixels")
    p.add_argument("--model", default="default", help="gray model: 'default', a bundled name or a weights file")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="write all rows here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    scales = [float(s) for s in a.scales.split(",")]
    settings = [int(k) for k in a.consistency.split(",")]
    net = get_model(a.model, 1, "cpu")
    files = held_aside(a.domains, a.model)
    if not files:
        print(f"error: no held-aside files of the model under {a.domains}", file=sys.stderr)
        return 2
    images = [(f"{f.parent.name}/{f.name}", centre_crop(load_native(f, 1), a.crop)) for f in files]
    images.append(("synthetic/sparse_fluorescence", sparse_fluorescence((a.crop, a.crop))))
    rows = []
    head = (f"{'image':<52} {'dtype':>7} {'scale':>5} {'cons':>4} {'bicubic':>8} {'model':>7} {'gain':>6} "
            f"{'bias %':>7} {'bic bias %':>10} {'clip %':>7} {'bic clip %':>10} {'real LR-PSNR':>12} {'real bias %':>11}")
    print(head)
    for name, plane in images:
        for scale in scales:
            for k in settings:
                gt = ground_truth_scores(plane, scale, net, k)
                real = real_scores(plane, scale, net, consistency=k)
                row = {"image": name, "dtype": str(plane.dtype), "scale": scale, "consistency": k, **gt,
                       "gain": gt["psnr"] - gt["bicubic_psnr"], "real_lr_psnr": real["lr_psnr"],
                       "real_bias": real["bias"], "real_bicubic_lr_psnr": real["bicubic_lr_psnr"],
                       "real_clipped": real["clipped"]}
                rows.append(row)
                print(f"{name[:52]:<52} {row['dtype']:>7} {scale:>5g} {k:>4} {gt['bicubic_psnr']:8.2f} {gt['psnr']:7.2f} "
                      f"{row['gain']:+6.2f} {gt['bias']:+7.3f} {gt['bicubic_bias']:+10.3f} {100 * gt['clipped']:7.3f} "
                      f"{100 * gt['bicubic_clipped']:10.3f} {real['lr_psnr']:12.2f} {real['bias']:+11.3f}", flush=True)
    print("\nworst over images, per scale and consistency setting:")
    print(f"{'scale':>5} {'cons':>4} {'min gain':>8} {'max |bias| %':>12} {'max clip %':>10} {'min real LR-PSNR':>16}")
    for scale in scales:
        for k in settings:
            sel = [r for r in rows if r["scale"] == scale and r["consistency"] == k]
            print(f"{scale:>5g} {k:>4} {min(r['gain'] for r in sel):+8.2f} {max(abs(r['bias']) for r in sel):12.3f} "
                  f"{100 * max(r['clipped'] for r in sel):10.3f} {min(r['real_lr_psnr'] for r in sel):16.2f}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
