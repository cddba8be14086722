"""How long the napari *Preview* takes: one 512 x 512 output window decoded with the bundled gray model.

    python benchmarks/bench_preview.py [--size 512] [--factor 4] [--repeats 3]

The run is the widget's own: its planner (:func:`diinn_napari._planner.plan_run`)
makes the settings from a layer description and the controls' values, and the
window is decoded by the function its preview worker runs
(:func:`diinn_napari._preview.decode_window`). The input is a 2048 x 2048
uint16 plane, so the cost shown is that of the window, not of the image.
"""

from __future__ import annotations

import argparse

import numpy as np

from diinn_napari._planner import Request, Source, plan_run
from diinn_napari._preview import decode_window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="output window edge in pixels")
    parser.add_argument("--factor", type=float, default=4.0, help="upscaling factor")
    parser.add_argument("--input", type=int, default=2048, help="input plane edge in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (after one warm-up)")
    parser.add_argument("--device", default="auto", help="the widget's device control: auto, cpu, cuda:0, ...")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    plane = rng.poisson(200, (args.input, args.input)).astype(np.uint16)
    source = Source("bench", plane.shape, plane.dtype)
    plan = plan_run(source, Request(factor=(args.factor, args.factor), model="gray", device=args.device))
    y0 = plan.out_yx[0] // 2
    x0 = plan.out_yx[1] // 2
    window = (y0, min(y0 + args.size, plan.out_yx[0]), x0, min(x0 + args.size, plan.out_yx[1]))
    decode_window(plane, window, plan.run, rgb=False)  # loading the weights is paid once per session, not per preview
    times = [decode_window(plane, window, plan.run, rgb=False)[1] for _ in range(args.repeats)]
    print(f"preview {window[1] - window[0]} x {window[3] - window[2]} of a {args.input} x {args.input} plane at "
          f"x{args.factor:g} on {args.device}: median {np.median(times):.2f} s, min {min(times):.2f} s "
          f"over {args.repeats} runs")


if __name__ == "__main__":
    main()
