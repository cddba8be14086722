"""The main job on the bundled defaults: ``python -m diinn_napari [--out DIR] [--scale S]``.

Upscales the bundled sample images (thermal, satellite) with the bundled
models through the batch tool, then checks quality on them: each sample is
downsampled by 2, 3 and 4 and upscaled back, and DIINN's PSNR is printed next
to bicubic's. No download: weights and samples ship in the package.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from . import batch, evaluate
from ._sample_data import SAMPLES
from .io import read_info
from .settings import RunSettings


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1):
        raise argparse.ArgumentTypeError(f"--scale must be a number >= 1 (DIINN only upscales), got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the main job; returns the exit code (0 ok, 1 a sample failed, 2 bad arguments)."""
    p = argparse.ArgumentParser(prog="python -m diinn_napari", description="Upscale the bundled samples and check quality on them (bundled weights, no download).",
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("diinn-demo"),
                   help="folder for the upscaled samples; outputs already there are replaced")
    p.add_argument("--scale", type=_scale, default=3.0,
                   help="upscaling factor for the samples (>= 1; the quality check always uses 2, 3 and 4)")
    a = p.parse_args(argv)
    files = sorted(SAMPLES.glob("*.tif"))
    print(f"== upscaling {len(files)} bundled samples x{a.scale:g} into {a.out}/")
    results = batch.run_batch(files, batch.Settings(a.out, RunSettings(scale=a.scale), overwrite=True))
    print(batch.summary(results))
    for channels, label in ((1, "gray model on the thermal sample"), (3, "RGB model on the satellite sample")):
        picked = [f for f in files if read_info(f).rgb == (channels == 3)]
        print(f"\n== quality check, {label}: downsample, upscale back, compare (DIINN protocol)")
        print(evaluate.format_table(evaluate.evaluate(picked, [2, 3, 4], channels=channels)))
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
