"""Domain fine-tuning, measured: the bundled gray model vs the fine-tuned one, on files from other sources.

    python benchmarks/domain_finetune.py transmitted [--minutes 10] [--extra "--lr 5e-5"] [--crop 256]
    python benchmarks/domain_finetune.py em|thermal ...
    python benchmarks/domain_finetune.py --folder DOMAIN_FOLDER ...   (the files the bundled model held aside are the test)

A named split (``SPLITS``) trains on the files of some sources of a domain folder and
scores on files of *other* sources (labs, camera systems, a modality held aside by
name), so a gain is a gain on the domain, not on the training files' own scenes. The
fine-tune is the public command (``python -m diinn_napari.finetune`` with its
defaults: the fine-tuning preset and a ``--minutes`` time limit), run with ``nice`` on
``--threads`` threads; the scores are those of ``python -m diinn_napari.evaluate``
(DIINN protocol, first plane of each file, the engine's default data consistency).
When the run does not beat its start (exit status 3, nothing written), the result is
the bundled model itself. ``--crop N`` scores centre crops of N px instead of the
whole files (quick pilots). Prints the steps reached, the trainer's own validation
report and one table row per scale; ``--json`` appends the row to a file.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tifffile

from diinn_napari.evaluate import evaluate, load_hr
from diinn_napari.io import find_images
from diinn_napari.weights import read_metadata, resolve

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# name: (domain folder under DATA, training-file patterns, test-file patterns); test files never train
SPLITS = {
    # train: bright-field E. coli (ColiCoords) + phase-contrast T98G (Usiigaci);
    # test: other labs: phase-contrast bacteria (omnipose) + bright-field colloids (trackpy, two far-apart frames)
    "transmitted": ("domains/transmitted", ["brightfield__colicoords_*", "phase__usiigaci_*"],
                    ["phase__omnipose_*", "brightfield__trackpy_colloids_bf_0000.png", "brightfield__trackpy_colloids_bf_0049.png"]),
    # train: the fluorescence microscopy files; test: the electron micrograph (a modality held aside by name)
    "em": ("domains/microscopy", ["*"], ["*em_*"]),
    # train: the Triclobs and FEL camera systems; test: Athena frames and a Landsat TIRS band
    # (held aside by the bundled model too)
    "thermal": ("domains/thermal", ["tno_triclobs_*", "tno_fel_*"],
                ["tno_athena_apc_1_view_1.png", "tno_athena_apc_1_view_3.png", "tno_athena_apc_3_view_1.png",
                 "landsat8_tirs_B10_uint16.tif"]),
}


def split(name: str | None, folder: Path | None, data: Path) -> tuple[list[Path], list[Path]]:
    """(training files, test files) of a named split, or of a folder against the bundled model's held-aside files."""
    if folder is not None:
        held = {Path(f).name for f in read_metadata(resolve("default", 1))["val_files"]}
        files = find_images(folder)
        return [f for f in files if f.name not in held], [f for f in files if f.name in held]
    where, train_patterns, test_patterns = SPLITS[name]
    files = find_images(data / where)
    test = [f for f in files if any(fnmatch.fnmatch(f.name, p) for p in test_patterns)]
    train = [f for f in files if f not in test and any(fnmatch.fnmatch(f.name, p) for p in train_patterns)]
    return train, test


def centre_crops(files: list[Path], size: int, folder: Path) -> list[Path]:
    """Float32 TIFFs of the centre ``size`` px of each file's first plane (as evaluate normalises it)."""
    out = []
    for f in files:
        hr = load_hr(f, 1)
        _, h, w = hr.shape
        y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
        path = folder / (f.stem + ".tif")
        tifffile.imwrite(path, hr[0, y : y + size, x : x + size])
        out.append(path)
    return out


def link(files: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f.resolve())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("split", nargs="?", choices=sorted(SPLITS), help="a named train/test split (see SPLITS)")
    p.add_argument("--folder", type=Path, help="instead: a domain folder; test = the files the bundled model held aside")
    p.add_argument("--data", type=Path, default=DATA, help=f"the shared data folder (default: {DATA})")
    p.add_argument("--minutes", type=float, default=10.0, help="finetune's --time-limit (default: 10)")
    p.add_argument("--scales", default="2,4", help="evaluation scales (default: 2,4)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training and scoring (default: 1)")
    p.add_argument("--crop", type=int, default=0, help="score centre crops of N px (0 = whole files; default: 0)")
    p.add_argument("--extra", default="", help="extra finetune arguments, e.g. '--lr 5e-5 --train decoder'")
    p.add_argument("--label", default="", help="name of the row (default: the extra arguments)")
    p.add_argument("--out", type=Path, default=Path("runs/domain.safetensors"), help="fine-tuned weights (default: runs/domain.safetensors)")
    p.add_argument("--json", type=Path, help="append the result row (JSON lines) to this file")
    p.add_argument("--skip-bundled", action="store_true", help="do not score the bundled model (reuse a row's numbers)")
    a = p.parse_args()
    if (a.split is None) == (a.folder is None):
        p.error("give a split name or --folder")
    import torch

    torch.set_num_threads(a.threads)
    train, test = split(a.split, a.folder, a.data)
    if not train or not test:
        raise SystemExit(f"empty split: {len(train)} training and {len(test)} test files")
    name = a.split or a.folder.name
    print(f"{name}: fine-tune on {len(train)} files, score on {len(test)} files of other sources: " + ", ".join(f.name for f in test))
    scales = [float(s) for s in a.scales.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        link(train, Path(tmp) / "train")
        scored = test
        if a.crop:
            (Path(tmp) / "crops").mkdir()
            scored = centre_crops(test, a.crop, Path(tmp) / "crops")
        for side in ("", ".last", ".state", ".log"):  # a fresh run, not a resumed one
            for suffix in (".safetensors", ".pt", ".jsonl"):
                Path(str(a.out.with_suffix("")) + side + suffix).unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "diinn_napari.finetune", "--data", str(Path(tmp) / "train"), "--out", str(a.out),
               "--time-limit", f"{a.minutes:g}", "--threads", str(a.threads), *a.extra.split()]
        print("$ nice -n 10", " ".join(cmd).replace(tmp, "TRAIN_DIR"), flush=True)
        started = time.time()
        done = subprocess.run(["nice", "-n", "10", *cmd], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
        minutes = (time.time() - started) / 60
        log = done.stderr
        report = log[log.find("validation (the same"):] if "validation (the same" in log else log[-2000:]
        print(report.strip())
        if done.returncode not in (0, 3):
            raise SystemExit(f"finetune failed with exit status {done.returncode}")
        steps = max([int(m) for m in re.findall(r"step (\d+):", log)] or [0])
        kept = done.returncode == 0
        tuned = a.out if kept else "default"
        rows = {"fine-tuned": evaluate(scored, scales, tuned, channels=1)}
        if not a.skip_bundled:
            rows["bundled"] = evaluate(scored, scales, "default", channels=1) if kept else rows["fine-tuned"]
    print(f"{minutes:.1f} min wall, {steps} steps, result {'written' if kept else 'not better than the start: the start kept'}")
    row = {"split": name, "label": a.label or a.extra or "defaults", "minutes": round(minutes, 2), "steps": steps,
           "kept": kept, "crop": a.crop, "test_files": len(test), "scales": {}}
    # clipped: pixels at the dtype's limits where the reference is not (evaluate's "clipped"), in % of the pixels
    print(f"{'scale':>6} {'bicubic':>8} {'bundled':>8} {'result':>8} {'gain bundled':>13} {'gain result':>12} {'delta':>7} "
          f"{'bias result':>12} {'clipped bundled':>16} {'clipped result':>15} {'clipped bicubic':>16}")
    for key, tuned_scale in rows["fine-tuned"]["scales"].items():
        t = tuned_scale["mean"]
        b = rows["bundled"]["scales"][key]["mean"] if "bundled" in rows else None
        entry = {"bicubic": t["bicubic_psnr"], "result": t["psnr"], "result_bias": t["bias"],
                 "result_clipped": t["clipped"], "bicubic_clipped": t["bicubic_clipped"]}
        if b is not None:
            entry.update(bundled=b["psnr"], bundled_bias=b["bias"], bundled_clipped=b["clipped"])
            print(f"{key:>6} {t['bicubic_psnr']:8.2f} {b['psnr']:8.2f} {t['psnr']:8.2f} {b['psnr'] - b['bicubic_psnr']:+12.2f} "
                  f"{t['psnr'] - t['bicubic_psnr']:+11.2f} {t['psnr'] - b['psnr']:+7.3f} {t['bias']:+11.3f}% "
                  f"{100 * b['clipped']:15.3f}% {100 * t['clipped']:14.3f}% {100 * t['bicubic_clipped']:15.3f}%")
        else:
            print(f"{key:>6} {t['bicubic_psnr']:8.2f} {'-':>8} {t['psnr']:8.2f} {'-':>13} {t['psnr'] - t['bicubic_psnr']:+11.2f} "
                  f"{'-':>7} {t['bias']:+11.3f}% {'-':>16} {100 * t['clipped']:14.3f}% {100 * t['bicubic_clipped']:15.3f}%")
        row["scales"][key] = entry
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
