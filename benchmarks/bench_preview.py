"""How long the napari *Preview* takes: one 512 x 512 output window decoded with the bundled gray model.

    python benchmarks/bench_preview.py [--size 512] [--factor 4] [--repeats 3]

The window is decoded exactly as the widget's preview does
(:func:`diinn_napari.engine.upscale_window`); the input is a 2048 x 2048
uint16 plane, so the cost shown is that of the window, not of the image.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from diinn_napari.engine import get_model, upscale_window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="output window edge in pixels")
    parser.add_argument("--factor", type=float, default=4.0, help="upscaling factor")
    parser.add_argument("--input", type=int, default=2048, help="input plane edge in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (after one warm-up)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    plane = rng.poisson(200, (args.input, args.input)).astype(np.uint16)
    out = (round(args.input * args.factor),) * 2
    y0 = out[0] // 2
    window = (y0, y0 + args.size, y0, y0 + args.size)
    get_model("gray")  # loading the weights is paid once per session, not per preview
    upscale_window(plane, out, window, model="gray")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        upscale_window(plane, out, window, model="gray")
        times.append(time.perf_counter() - start)
    print(f"preview {args.size} x {args.size} of a {args.input} x {args.input} plane at x{args.factor:g}: "
          f"median {np.median(times):.2f} s, min {min(times):.2f} s over {args.repeats} runs")


if __name__ == "__main__":
    main()
