"""How long the napari *Preview* takes: one 512 x 512 output window decoded with the bundled gray model.

    python benchmarks/bench_preview.py [--size 512] [--factor 4] [--repeats 3]
    xvfb-run -a python benchmarks/bench_preview.py --follow [--factor 4] [--repeats 3]

The run is the widget's own: its planner (:func:`diinn_napari._planner.plan_run`)
makes the settings from a layer description and the controls' values, and the
window is decoded by the function its preview worker runs
(:func:`diinn_napari._preview.decode_window`). The input is a 2048 x 2048
uint16 plane, so the cost shown is that of the window, not of the image.

``--follow``: the latency a user sees with *follow the view* on, in a real
napari viewer (under Xvfb): the widget opened as napari's menu does, the
camera moved (zoom and pan, several changes 20 ms apart), and the time from
the last camera change until the new preview layer is in the viewer, i.e. the
300 ms debounce plus the decoding of what the canvas shows.
"""

from __future__ import annotations

import argparse

import numpy as np

from diinn_napari._planner import Request, Source, plan_run
from diinn_napari._preview import decode_window


def follow_latency(args) -> None:
    import time

    import napari
    from qtpy.QtWidgets import QApplication

    from diinn_napari._widget import DIINNWidget

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1200, 900)
    _, widget = viewer.window.add_plugin_dock_widget("diinn-napari", "DIINN super-resolution")
    assert isinstance(widget, DIINNWidget)
    rng = np.random.default_rng(0)
    viewer.add_image(rng.poisson(200, (args.input, args.input)).astype(np.uint16), name="bench")
    widget.device.value = args.device
    widget.factor_y.value = args.factor
    app = QApplication.instance()
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera

    def wait_for(made_after: float, timeout: float = 600) -> float:
        end = time.time() + timeout
        while time.time() < end:
            app.processEvents()
            name = "bench DIINN preview"
            if name in viewer.layers and viewer.layers[name].metadata["diinn"]["made"] > made_after:
                return time.perf_counter()
            time.sleep(0.005)
        raise TimeoutError("no preview")

    widget.follow.value = True  # a first preview at once (loads the weights: not timed)
    wait_for(0)
    times, windows = [], []
    for i in range(args.repeats):
        for k in range(5):  # the user zooms and pans: several changes, then the camera stops
            camera.zoom = camera.zoom * (1.1 if i % 2 == 0 else 1 / 1.1)
            camera.center = (0, args.input / 2 + 10 * k, args.input / 2 - 10 * k)
            app.processEvents()
            time.sleep(0.02)
        stopped, wall = time.perf_counter(), time.time()
        times.append(wait_for(wall) - stopped)
        y0, y1, x0, x1 = viewer.layers["bench DIINN preview"].metadata["diinn"]["preview_window"]
        windows.append(f"{y1 - y0}x{x1 - x0}")
    print(f"follow the view at x{args.factor:g} on {args.device}, canvas {tuple(viewer.canvas.size)}: camera stopped "
          f"-> preview shown median {np.median(times):.2f} s, min {min(times):.2f} s over {args.repeats} moves "
          f"(windows {', '.join(windows)}; includes the {300} ms debounce)")
    viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="output window edge in pixels")
    parser.add_argument("--factor", type=float, default=4.0, help="upscaling factor")
    parser.add_argument("--input", type=int, default=2048, help="input plane edge in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (after one warm-up)")
    parser.add_argument("--device", default="auto", help="the widget's device control: auto, cpu, cuda:0, ...")
    parser.add_argument("--follow", action="store_true", help="the follow-the-view latency in a napari viewer")
    args = parser.parse_args()
    if args.follow:
        return follow_latency(args)
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
