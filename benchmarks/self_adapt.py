"""Self-supervised adaptation to one image, measured on held-aside files: bundled vs adapted, x2 and x4.

    python benchmarks/self_adapt.py transmitted [--steps 20] [--crop 256] [--scales 2,4] [--min-scale 1.5]

For each test file of a split of ``benchmarks/domain_finetune.py`` (files of other
sources than any training), the HR is the first plane (normalised as ``evaluate``
does, centre crop of ``--crop`` px), the LR its antialiased downsampled copy. The
bundled gray model upscales the LR; :func:`diinn_napari.train.self_adapt.adapt_to_image`
adapts a copy of it to the LR alone (its own downsampled copies, no ground truth) and
the adapted copy upscales it. Both are scored against the HR by
:func:`diinn_napari.evaluate.compare` (DIINN protocol, the engine's default data
consistency). Prints per scale: the mean gain over bicubic of both, the difference, the
mean bias, how often the held-aside strip check kept the start, and the seconds per image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from domain_finetune import DATA, SPLITS, split  # noqa: E402

from diinn_napari.engine import get_model  # noqa: E402
from diinn_napari.evaluate import compare, load_hr  # noqa: E402
from diinn_napari.quality import downsample  # noqa: E402
from diinn_napari.train.self_adapt import adapt_to_image  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("split", choices=sorted(SPLITS))
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--steps", type=int, default=20, help="adaptation steps per image and scale (default: 20)")
    p.add_argument("--lr", type=float, default=5e-5, help="adaptation learning rate (default: 5e-5)")
    p.add_argument("--min-scale", type=float, default=1.5,
                   help="smallest scale of the training pairs (pairs are uniform in [min, target]); the target "
                        "scale itself: pairs at the requested scale only (default: 1.5)")
    p.add_argument("--crop", type=int, default=256, help="HR centre crop in px (default: 256)")
    p.add_argument("--scales", default="2,4", help="default: 2,4")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="append the result (JSON line) here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    _, test = split(a.split, None, a.data)
    bundled = get_model("default", 1, "cpu")
    rows = {}
    for scale in (float(s) for s in a.scales.split(",")):
        out = []
        for f in test:
            hr = load_hr(f, 1)
            _, h, w = hr.shape
            y, x = max(0, (h - a.crop) // 2), max(0, (w - a.crop) // 2)
            hr = np.ascontiguousarray(hr[:, y : y + a.crop, x : x + a.crop])
            lr_size = (max(1, round(hr.shape[1] / scale)), max(1, round(hr.shape[2] / scale)))
            lr = downsample(torch.from_numpy(hr)[None], lr_size)[0, 0].numpy()  # what compare() feeds the model
            start = time.perf_counter()
            adapted = adapt_to_image(lr, scale, model="default", steps=a.steps, learning_rate=a.lr, intensity="none",
                                     device="cpu", seed=0, min_scale=min(a.min_scale, scale))
            seconds = time.perf_counter() - start
            base, tuned = compare(hr, scale, bundled, device="cpu"), compare(hr, scale, adapted.model, device="cpu")
            out.append({"image": f.name, "bundled_gain": base["psnr"] - base["bicubic_psnr"],
                        "adapted_gain": tuned["psnr"] - tuned["bicubic_psnr"], "adapted_bias": tuned["bias"],
                        "improved_on_strip": adapted.improved, "seconds": seconds})
            print(f"x{scale:g} {f.name[:40]:40s} bundled {out[-1]['bundled_gain']:+.3f} adapted {out[-1]['adapted_gain']:+.3f} "
                  f"strip check {'none (too small)' if adapted.start is None else 'passed' if adapted.improved else 'kept the start'} "
                  f"({seconds:.0f} s)", flush=True)
        rows[f"x{scale:g}"] = out
    print(f"\n{a.split}: {len(test)} held-aside files, {a.crop} px crops, {a.steps} steps at lr {a.lr:g}, "
          f"pairs from x{a.min_scale:g}")
    print(f"{'scale':>6} {'bundled gain':>13} {'adapted gain':>13} {'delta':>7} {'worst':>7} {'bias':>8} {'kept start':>11} {'s/image':>8}")
    summary = {}
    for key, out in rows.items():
        d = [r["adapted_gain"] - r["bundled_gain"] for r in out]
        summary[key] = {"bundled": float(np.mean([r["bundled_gain"] for r in out])),
                        "adapted": float(np.mean([r["adapted_gain"] for r in out])), "delta": float(np.mean(d)),
                        "worst": float(min(d)), "bias": float(np.mean([r["adapted_bias"] for r in out])),
                        "kept_start": sum(not r["improved_on_strip"] for r in out),
                        "seconds": float(np.mean([r["seconds"] for r in out]))}
        s = summary[key]
        print(f"{key:>6} {s['bundled']:+12.2f} {s['adapted']:+13.2f} {s['delta']:+7.3f} {s['worst']:+7.3f} {s['bias']:+7.3f}% "
              f"{s['kept_start']:>6}/{len(out)} {s['seconds']:8.0f}")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps({"split": a.split, "steps": a.steps, "lr": a.lr, "crop": a.crop, "min_scale": a.min_scale, "summary": summary,
                                "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
