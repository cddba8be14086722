"""Fidelity of the gray model: bias, clipping, holes, PSNR vs bicubic and LR-consistency, per image.

    python benchmarks/fidelity.py ../shared/data/domains [--scales 2,3,4] [--consistency 2] [--crop 256]
        [--sets held,dark,synthetic] [--model default] [--json fidelity.json] [--baseline] [--no-real]

Images (first plane of each file, luminance for RGB files rounded to their
dtype, a centre crop of ``--crop`` pixels), in three sets:

* ``held``: the files of ``DOMAINS/*`` the model never trained on: those its
  weights metadata lists as held aside (``val_files``, matched by folder and
  file name) and every file of a domain folder that is not among its
  training ``data`` folders (e.g. ``transmitted/``);
* ``dark``: dark-background fluorescence of ``DOMAINS/microscopy`` (median
  within 10 % of the robust range above p0.1), trained on or not; the
  hole checks need no generalisation;
* ``synthetic``: :func:`~diinn_napari.quality.dark_fluorescence` (uint8 and
  uint16), :func:`~diinn_napari.quality.sparse_fluorescence` and
  :func:`~diinn_napari.quality.few_levels` planes (8 and 13 levels, 16-bit;
  32 levels, 8-bit).

Two checks per image, scale and consistency setting, in the image's own
dtype and units, through the engine with its default intensity handling
(the path a user takes):

* ground truth: LR = the crop downsampled with the training degradation and
  cast back to the dtype; the model and bicubic (cast likewise) upscale it
  to the crop's size. PSNR on the crop's robust range (p99.9 - p0.1), mean
  bias in % of it, and the fraction of pixels clipped at the dtype's limits
  where the crop is not.
* real use: the crop itself upscaled (in its dtype, and as float32), then
  downsampled back and compared with the crop: LR-consistency PSNR and bias;
  undershoot (output below the crop's minimum minus 1 % of its robust range)
  and new zeros (output at or below 0 where the input is above 0), for the
  model and for bicubic (:func:`diinn_napari.evaluate.real_scores`).

``--baseline`` also scores the ground truth with the step as it was before
the data bounds (the projection onto the dtype's range only, no few-level
handling: :func:`dtype_bounds_only`) and prints the gain's change; the gate
is a change of no more than -0.02 dB. ``--no-real`` skips the real-use checks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import diinn_napari.engine as engine
from diinn_napari.engine import get_model, upscale
from diinn_napari.core import cast
from diinn_napari.evaluate import load_native, real_scores
from diinn_napari.quality import (clipped_fraction, dark_fluorescence, downsample_array, few_levels,
                                  mean_bias_percent, psnr, robust_range, sparse_fluorescence)
from diinn_napari.weights import read_metadata, resolve


@contextlib.contextmanager
def dtype_bounds_only():
    """The engine as it was before the data bounds: every plane's bounds unknown, so the back-projection is
    projected onto the dtype's range only and few-level planes are not treated (``_render`` with ``bounds=None``)."""
    saved = engine.data_bounds
    engine.data_bounds = lambda *args: None
    try:
        yield
    finally:
        engine.data_bounds = saved


def held_aside(domains: Path, model: str) -> list[Path]:
    """Files under ``domains`` the model never trained on: its ``val_files`` and untrained domain folders."""
    meta = read_metadata(resolve(model, 1))
    keys = {tuple(Path(f).parts[-2:]) for f in meta.get("val_files", [])}
    trained = {Path(d).name for d in meta.get("data", [])}
    return sorted(p for p in domains.glob("*/*") if p.is_file() and p.suffix.lower() in (".tif", ".tiff", ".png")
                  and (tuple(p.parts[-2:]) in keys or p.parent.name not in trained))


def is_dark_background(plane: np.ndarray) -> bool:
    """Most pixels near the floor: median within 10 % of the robust range above p0.1."""
    lo, median, hi = np.percentile(plane, (0.1, 50, 99.9))
    return hi > lo and (median - lo) <= 0.1 * (hi - lo)


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


def collect(domains: Path, model: str, sets: list[str], crop: int) -> list[tuple[str, str, np.ndarray]]:
    """(set, name, plane) of every image of ``sets``."""
    images = []
    held = held_aside(domains, model)
    if "held" in sets:
        images += [("held", f"{f.parent.name}/{f.name}", centre_crop(load_native(f, 1), crop)) for f in held]
    if "dark" in sets:
        for f in sorted((domains / "microscopy").glob("*")):
            plane = load_native(f, 1) if f.suffix.lower() in (".tif", ".tiff", ".png") else None
            if plane is not None and is_dark_background(plane):
                images.append(("dark" if f not in held else "dark,held", f"microscopy/{f.name}", centre_crop(plane, crop)))
    if "synthetic" in sets:
        images += [("synthetic", "dark_fluorescence uint16", dark_fluorescence((crop, crop), np.uint16, 1)),
                   ("synthetic", "dark_fluorescence uint8", dark_fluorescence((crop, crop), np.uint8, 2)),
                   ("synthetic", "sparse_fluorescence", sparse_fluorescence((crop, crop))),
                   ("synthetic", "few_levels 8, uint16", few_levels((crop, crop), 8, np.uint16, 3)),
                   ("synthetic", "few_levels 13, uint16", few_levels((crop, crop), 13, np.uint16, 4)),
                   ("synthetic", "few_levels 32, uint8", few_levels((crop, crop), 32, np.uint8, 5))]
    return images


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("domains", type=Path, help="folder with the domain folders (microscopy, thermal, satellite, transmitted)")
    p.add_argument("--scales", default="2,3,4", help="comma-separated scales")
    p.add_argument("--consistency", default="2", help="comma-separated back-projection settings to compare")
    p.add_argument("--crop", type=int, default=256, help="centre crop of each plane, in pixels")
    p.add_argument("--sets", default="held,dark,synthetic", help="comma-separated: held, dark, synthetic")
    p.add_argument("--no-ground-truth", action="store_true", help="real-use checks only (faster)")
    p.add_argument("--model", default="default", help="gray model: 'default', a bundled name or a weights file")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="write all rows here")
    p.add_argument("--baseline", action="store_true",
                   help="also score the ground truth with the step before the data bounds (dtype range only)")
    p.add_argument("--no-real", action="store_true", help="ground-truth checks only (faster)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    scales = [float(s) for s in a.scales.split(",")]
    settings = [int(k) for k in a.consistency.split(",")]
    net = get_model(a.model, 1, "cpu")
    images = collect(a.domains, a.model, a.sets.split(","), a.crop)
    if not images:
        print(f"error: no images of the sets {a.sets} under {a.domains}", file=sys.stderr)
        return 2
    rows = []
    print(f"{'set':<9} {'image':<46} {'dtype':>7} {'scale':>5} {'cons':>4} {'bicubic':>8} {'model':>7} {'gain':>6} "
          f"{'bias %':>7} {'clip %':>7} {'bic clip %':>10} | {'LR-PSNR':>7} {'bias %':>7} {'under %':>7} "
          f"{'float under %':>13} {'zeros %':>7} {'bic zeros %':>11}")
    for group, name, plane in images:
        for scale in scales:
            for k in settings:
                gt = {} if a.no_ground_truth else ground_truth_scores(plane, scale, net, k)
                if a.baseline and gt:
                    with dtype_bounds_only():
                        gt["baseline_psnr"] = ground_truth_scores(plane, scale, net, k)["psnr"]
                nan = float("nan")
                blank = {"lr_psnr": nan, "bias": nan, "undershoot": nan, "new_zeros": nan, "bicubic_new_zeros": nan}
                real = blank if a.no_real else real_scores(plane, scale, net, consistency=k)
                floats = blank if a.no_real else real_scores(plane, scale, net, consistency=k, out_dtype=np.float32)
                row = {"set": group, "image": name, "dtype": str(plane.dtype), "scale": scale, "consistency": k, **gt,
                       "gain": gt["psnr"] - gt["bicubic_psnr"] if gt else float("nan"),
                       "gain_change": gt["psnr"] - gt["baseline_psnr"] if "baseline_psnr" in gt else float("nan"),
                       **{f"real_{key}": value for key, value in real.items()},
                       "real_float_undershoot": floats["undershoot"], "real_float_new_zeros": floats["new_zeros"],
                       "real_float_lr_psnr": floats["lr_psnr"], "real_float_bias": floats["bias"]}
                rows.append(row)
                print(f"{group:<9} {name[:46]:<46} {row['dtype']:>7} {scale:>5g} {k:>4} {gt.get('bicubic_psnr', nan):8.2f} "
                      f"{gt.get('psnr', nan):7.2f} {row['gain']:+6.2f} {gt.get('bias', nan):+7.3f} "
                      f"{100 * gt.get('clipped', nan):7.3f} {100 * gt.get('bicubic_clipped', nan):10.3f} | "
                      f"{real['lr_psnr']:7.2f} {real['bias']:+7.3f} {100 * real['undershoot']:7.3f} "
                      f"{100 * floats['undershoot']:13.3f} {100 * real['new_zeros']:7.3f} "
                      f"{100 * real['bicubic_new_zeros']:11.3f}"
                      + (f" | change {row['gain_change']:+.3f}" if a.baseline else ""), flush=True)
    print("\nworst over images, per set, scale and consistency setting:")
    print(f"{'set':<9} {'scale':>5} {'cons':>4} {'min gain':>8} {'max |bias| %':>12} {'max clip %':>10} "
          f"{'min LR-PSNR':>11} {'max under %':>11} {'max float under %':>17} {'max zeros %':>11}"
          + (f" {'min change':>10} {'mean change':>11}" if a.baseline else ""))
    for group in dict.fromkeys(r["set"] for r in rows):
        for scale in scales:
            for k in settings:
                sel = [r for r in rows if r["set"] == group and r["scale"] == scale and r["consistency"] == k]
                gains = [r["gain"] for r in sel if r["gain"] == r["gain"]]
                changes = [r["gain_change"] for r in sel if r["gain_change"] == r["gain_change"]]
                print(f"{group:<9} {scale:>5g} {k:>4} {min(gains) if gains else float('nan'):+8.2f} "
                      f"{max(abs(r.get('bias', 0)) for r in sel):12.3f} {100 * max(r.get('clipped', 0) for r in sel):10.3f} "
                      f"{min(r['real_float_lr_psnr'] for r in sel):11.2f} {100 * max(r['real_undershoot'] for r in sel):11.3f} "
                      f"{100 * max(r['real_float_undershoot'] for r in sel):17.3f} {100 * max(r['real_new_zeros'] for r in sel):11.3f}"
                      + (f" {min(changes):+10.3f} {np.mean(changes):+11.4f}" if a.baseline and changes else ""))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
