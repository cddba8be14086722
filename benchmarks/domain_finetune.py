"""Domain fine-tuning, shown: bicubic vs the bundled gray model vs a fine-tuned one.

    python benchmarks/domain_finetune.py DOMAIN_FOLDER [--steps 300] [--recipe scientific] [--out runs/domain.safetensors]

The evaluation images are the files of DOMAIN_FOLDER that the bundled gray model
held aside when it was trained (listed in its metadata), so neither model has
seen them. The fine-tune command is the public one (`python -m
diinn_napari.finetune`), run on the folder's other files; the scores come from
`diinn_napari.evaluate` (DIINN protocol, first plane of each file).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from diinn_napari.io import find_images
from diinn_napari.evaluate import evaluate
from diinn_napari.weights import read_metadata, resolve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("domain", type=Path, help="a domain folder, e.g. ../shared/data/domains/microscopy")
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps (default: 300)")
    p.add_argument("--scales", default="2,3,4", help="evaluation scales (default: 2,3,4)")
    p.add_argument("--out", type=Path, default=Path("runs/domain.safetensors"), help="fine-tuned weights (default: runs/domain.safetensors)")
    p.add_argument("--recipe", default="scientific", choices=["classic", "scientific"], help="finetune's --recipe (default: scientific)")
    p.add_argument("--extra", default="", help="extra finetune arguments, e.g. '--noise 0.01'")
    a = p.parse_args()
    held = {Path(f).name for f in read_metadata(resolve("default", 1))["val_files"]}
    files = find_images(a.domain)
    test = [f for f in files if f.name in held]
    train = [f for f in files if f.name not in held]
    if not test:
        raise SystemExit(f"the bundled gray model held aside no file of {a.domain}")
    print(f"{a.domain.name}: fine-tune on {len(train)} files, evaluate on {len(test)} held-aside files: "
          + ", ".join(f.name for f in test))
    with tempfile.TemporaryDirectory() as tmp:
        for f in train:
            (Path(tmp) / f.name).symlink_to(f.resolve())
        cmd = [sys.executable, "-m", "diinn_napari.finetune", "--data", tmp, "--out", str(a.out), "--steps", str(a.steps),
               "--val-every", str(max(50, a.steps // 4)), "--recipe", a.recipe, *a.extra.split()]
        print("$", " ".join(cmd))
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scales = [float(s) for s in a.scales.split(",")]
    rows = {"bundled gray": evaluate(test, scales, "default", channels=1), "fine-tuned": evaluate(test, scales, a.out)}
    print(f"{'scale':>6} {'bicubic':>9} {'bundled gray':>13} {'fine-tuned':>11}   (mean PSNR dB over {len(test)} images)")
    for key in rows["fine-tuned"]["scales"]:
        base = rows["bundled gray"]["scales"][key]["mean"]
        tuned = rows["fine-tuned"]["scales"][key]["mean"]
        print(f"{key:>6} {base['bicubic_psnr']:9.2f} {base['psnr']:13.2f} {tuned['psnr']:11.2f}")


if __name__ == "__main__":
    main()
