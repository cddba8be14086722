"""Isotropic Z super-resolution benchmark: near-isotropic stacks made anisotropic, then reconstructed.

    nice -n 19 python benchmarks/isotropic.py --data ../shared/data/domains/microscopy --threads 1 \
        --crop 64 --adapt-steps 300 --json isotropic.json

For each stack and each factor n (keep planes 0, n, 2n, ...; optionally after
an axial Gaussian blur of the original along Z), the kept planes are
reconstructed to the original Z step by: linear and cubic-spline
interpolation along Z, the bundled gray model zero-shot, and the model
adapted on the degraded stack itself (:func:`diinn_napari.adapt.adapt`).
Metrics against the original (unblurred) stack over the Z range the kept
planes span: PSNR (skimage, data range = the reference's max - min) on the
planes that were dropped, SSIM averaged over every XZ and YZ plane, and the
mean bias on the dropped planes (:func:`diinn_napari.quality.mean_bias_percent`:
mean of output - original in % of the original's robust range p99.9 - p0.1,
as in ``evaluate``). The DIINN rows also report each view alone and the
max/min fusions.

The axial blur of the "blur" rows is the adaptation's default
(:func:`~diinn_napari.isotropic.default_axial_sigma` of the kept Z step in
XY pixels), so the adapted model is trained for the blur it meets; the
"none" rows are adapted with ``axial_sigma=0``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy.interpolate import make_interp_spline
from scipy.ndimage import gaussian_filter1d
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from diinn_napari.adapt import adapt
from diinn_napari.isotropic import isotropic
from diinn_napari.isotropic_plan import default_axial_sigma
from diinn_napari.quality import mean_bias_percent
from diinn_napari.io import read_info

STACKS = {  # file -> channel used (ZCYX files)
    "xyz_calibrated_16bit__golgi_bfa.tif": None,
    "xyzc_16bit__dna_conf_wf.tif": 0,
}


def load(path: Path, channel: int | None, crop: int | None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(Z, Y, X) float32 volume (central XY crop) and its (dz, dy, dx)."""
    info = read_info(path)
    if info.z_spacing is None or info.pixel_size is None:
        raise ValueError(f"{path.name}: no Z spacing or pixel size in the metadata")
    data = tifffile.imread(path)
    if "C" in info.axes:
        data = np.take(data, channel or 0, axis=info.axes.index("C"))
    if crop:
        _, h, w = data.shape
        y, x = (h - min(crop, h)) // 2, (w - min(crop, w)) // 2
        data = data[:, y : y + crop, x : x + crop]
    return data.astype(np.float32), (float(info.z_spacing), *info.pixel_size)


def metrics(out: np.ndarray, ref: np.ndarray, n: int, data_range: float) -> dict:
    """PSNR and mean bias (% of the robust range) on the dropped planes, SSIM averaged over XZ and YZ planes."""
    dropped = np.ones(len(ref), bool)
    dropped[::n] = False
    psnr = peak_signal_noise_ratio(ref[dropped], out[dropped], data_range=data_range)
    xz = [structural_similarity(ref[:, y], out[:, y], data_range=data_range) for y in range(ref.shape[1])]
    yz = [structural_similarity(ref[:, :, x], out[:, :, x], data_range=data_range) for x in range(ref.shape[2])]
    return {"psnr": float(psnr), "ssim": float(np.mean(xz + yz)), "bias": mean_bias_percent(out[dropped], ref[dropped])}


def interpolate(kept: np.ndarray, n: int, n_out: int, kind: str) -> np.ndarray:
    """Point-sampled planes at 0, n, 2n... -> planes 0..n_out-1 by linear or cubic-spline interpolation."""
    z_in = np.arange(len(kept)) * n
    if kind == "linear":
        lo = np.minimum(np.arange(n_out) // n, len(kept) - 2)
        t = (np.arange(n_out) - lo * n) / n
        return kept[lo] * (1 - t)[:, None, None] + kept[lo + 1] * t[:, None, None]
    k = min(3, len(kept) - 1)
    return make_interp_spline(z_in, kept, k=k, axis=0)(np.arange(n_out)).astype(np.float32)


def run(args) -> list[dict]:
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    stacks = {name: load(Path(args.data) / name, channel, args.crop) for name, channel in STACKS.items()
              if not args.stacks or any(key in name for key in args.stacks)}
    shown = {}  # XZ planes for --figure: the first configuration with axial blur
    for n in args.factors:  # the biggest factor first: the headline numbers come first
        for name, (volume, (dz, dy, dx)) in stacks.items():
            channel = STACKS[name]
            for blur in ("none", "blur"):
                n_out = (len(volume) - 1) // n * n + 1
                ref = volume[:n_out]
                data_range = float(ref.max() - ref.min())
                sigma_xy = default_axial_sigma(n * dz / min(dy, dx)) if blur == "blur" else 0.0
                blurred = gaussian_filter1d(volume, sigma_xy * min(dy, dx) / dz, axis=0) if sigma_xy else volume
                kept = blurred[:n_out:n]
                spacing = (n * dz, dy, dx)
                base = dict(stack=name, channel=channel, n=n, blur=blur, sigma_xy_px=round(sigma_xy, 2),
                            shape_in=list(kept.shape), shape_out=list(ref.shape))
                figure = args.figure and blur == "blur" and not shown
                if figure:
                    shown.update(original=ref, kept=np.repeat(kept, n, axis=0)[:n_out])
                for kind in ("linear", "cubic"):
                    out = interpolate(kept, n, n_out, kind)
                    rows.append(dict(base, method=kind, **metrics(out, ref, n, data_range)))
                    report(rows[-1])
                    if figure:
                        shown[kind] = out
                models = [(label, path, 0.0) for label, path in args.model]
                if args.adapt_steps and n in args.adapt_factors:
                    t0 = time.time()
                    adapted = adapt(kept, spacing, dz, model=args.model[0][1], steps=args.adapt_steps,
                                    axial_sigma=sigma_xy, device="cpu",
                                    seed=0, learning_rate=args.adapt_lr, lr_rows=args.adapt_rows,
                                    patch=args.adapt_patch, batch=args.adapt_batch)
                    models.append((f"adapted-{args.adapt_steps}", adapted, time.time() - t0))
                for label, model, train_s in models:
                    t0 = time.time()
                    views = {v: isotropic(kept, spacing, dz, model=model, device="cpu", fusion=v, out_dtype="float32",
                                          intensity=args.intensity)
                             for v in ("xz", "yz")}
                    infer_s = time.time() - t0
                    fused = {"mean": (views["xz"] + views["yz"]) / 2, "max": np.maximum(views["xz"], views["yz"]),
                             "min": np.minimum(views["xz"], views["yz"]), **views}
                    if args.consistency:  # point-sampling back-projection along Z after the mean fusion
                        fused[f"mean+c{args.consistency}"] = isotropic(
                            kept, spacing, dz, model=model, device="cpu", fusion="mean", out_dtype="float32",
                            intensity=args.intensity, consistency=args.consistency)
                    if figure:
                        shown[label] = fused["mean"]
                    for fusion, out in fused.items():
                        assert out.shape == ref.shape, (out.shape, ref.shape)
                        rows.append(dict(base, method=f"{label} {fusion}", train_s=round(train_s, 1),
                                         infer_s=round(infer_s, 1), **metrics(out, ref, n, data_range)))
                        report(rows[-1])
                if args.json:
                    Path(args.json).write_text(json.dumps(rows, indent=1))
                if figure:
                    save_figure(args.figure, shown, f"{name.split('__')[-1]}: every {n}th Z plane kept after axial blur")
    return rows


def save_figure(path: str, views: dict[str, np.ndarray], title: str, zoom: int = 4, width: int = 64,
                columns: int = 3) -> None:
    """One XZ plane per method in a grid with its name, Z vertical, as an 8-bit PNG.

    The plane is the Y row with the most structure (largest standard
    deviation in the original), cut to ``width`` X pixels around its
    brightest column, magnified ``zoom`` times without interpolation.
    """
    from PIL import Image, ImageDraw

    ref = views["original"]
    y = int(np.argmax(ref.std(axis=(0, 2))))
    centre = int(np.argmax(ref[:, y].sum(0)))
    x0 = max(0, min(ref.shape[2] - width, centre - width // 2))
    lo, hi = np.percentile(ref, (0.1, 99.9))
    h, w = ref.shape[0] * zoom, min(width, ref.shape[2]) * zoom
    gap, head, label = 8, 16, 14
    rows = -(-len(views) // columns)
    canvas = Image.new("L", (columns * (w + gap) - gap, head + rows * (label + h + gap)), 255)
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), f"{title}; XZ plane y={y}, x={x0}..{x0 + w // zoom - 1}, Z vertical", fill=0)
    for i, (name, vol) in enumerate(views.items()):
        plane = np.clip((vol[:, y, x0 : x0 + w // zoom] - lo) / (hi - lo), 0, 1) * 255
        tile = Image.fromarray(plane.astype(np.uint8)).resize((w, h), Image.NEAREST)
        left, top = (i % columns) * (w + gap), head + (i // columns) * (label + h + gap)
        draw.text((left + 2, top + 1), name, fill=0)
        canvas.paste(tile, (left, top + label))
    canvas.save(path)


def report(row: dict) -> None:
    print(f"{row['stack'][:28]:28s} n={row['n']} {row['blur']:4s} {row['method']:22s} "
          f"PSNR {row['psnr']:6.2f}  SSIM {row['ssim']:.4f}  bias {row['bias']:+.3f} %", flush=True)


def table(rows: list[dict]) -> str:
    """Markdown table: one line per (stack, n, blur), PSNR / SSIM / mean bias % per method (mean fusion for DIINN)."""
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if " " not in m or m.endswith(" mean") or "+c" in m]
    lines = ["PSNR dB / SSIM / mean bias (% of the original's robust range) on the dropped planes",
             "", "| stack | n | axial blur | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
    keys = dict.fromkeys((r["stack"], r["n"], r["blur"]) for r in rows)
    for stack, n, blur in keys:
        cells = []
        for m in methods:
            hit = [r for r in rows if (r["stack"], r["n"], r["blur"], r["method"]) == (stack, n, blur, m)]
            cells.append(f"{hit[0]['psnr']:.2f} / {hit[0]['ssim']:.4f} / {hit[0]['bias']:+.3f} %" if hit else "-")
        lines.append(f"| {stack.split('__')[-1].removesuffix('.tif')} | {n} | {blur} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_arg(text: str) -> tuple[str, str]:
    """``LABEL=WEIGHTS`` (a bundled name or a path) -> (label, weights)."""
    label, sep, weights = text.partition("=")
    if not sep or not label or not weights:
        raise argparse.ArgumentTypeError(f"expected LABEL=WEIGHTS, e.g. zero-shot=default, got {text!r}")
    return label, weights


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/domains/microscopy", help="folder with the two stacks")
    p.add_argument("--factors", type=int, nargs="+", default=[4, 3, 2], help="keep every n-th Z plane")
    p.add_argument("--crop", type=int, default=None, help="central XY crop (pixels) to save time")
    p.add_argument("--adapt-steps", type=int, default=150, help="self-supervised steps (0: skip adaptation)")
    p.add_argument("--adapt-factors", type=int, nargs="+", default=[4, 3, 2], help="factors to adapt a model for")
    p.add_argument("--adapt-lr", type=float, default=5e-5, help="adaptation learning rate")
    p.add_argument("--adapt-rows", type=int, default=8, help="LR rows (Z planes) per adaptation crop")
    p.add_argument("--adapt-patch", type=int, default=32, help="lateral pixels per adaptation crop")
    p.add_argument("--adapt-batch", type=int, default=4, help="crops per adaptation step")
    p.add_argument("--intensity", default="auto")
    p.add_argument("--consistency", type=int, default=1, help="also report mean fusion + this many back-projection "
                   "steps along Z (0: skip)")
    p.add_argument("--model", action="append", type=model_arg, default=None, metavar="LABEL=WEIGHTS",
                   help="a model applied zero-shot (repeatable; the first is also the one adapted); "
                        "default: zero-shot=default (the bundled gray model)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write all rows here (after every configuration)")
    p.add_argument("--stacks", nargs="+", default=None, help="only stacks whose name contains one of these")
    p.add_argument("--figure", default=None, help="save XZ planes of the first blurred configuration (PNG)")
    args = p.parse_args(argv)
    args.model = args.model or [("zero-shot", "default")]
    rows = run(args)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
