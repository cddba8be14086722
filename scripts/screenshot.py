"""Make the README picture: a microscopy crop, input (nearest), bicubic and DIINN side by side.

    xvfb-run -a -s "-screen 0 1700x1000x24" python scripts/screenshot.py docs/screenshot.png \
        [IMAGE.tif] [--crop Y X SIZE] [--factor 4]

The widget is opened the way napari's menu does (from the manifest) and run on
the crop; bicubic is torch's (the same interpolation as DIINN's skip path).
Without IMAGE the bundled microscopy sample (scikit-image's cell) is used.
"""

from __future__ import annotations

import argparse

import napari
import numpy as np
import tifffile
import torch
from qtpy.QtCore import QEventLoop


def bicubic(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(image.astype(np.float32))[None, None]
    out = torch.nn.functional.interpolate(x, size=shape, mode="bicubic", align_corners=False)[0, 0].numpy()
    info = np.iinfo(image.dtype) if image.dtype.kind in "ui" else None
    return np.clip(np.rint(out), info.min, info.max).astype(image.dtype) if info else out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("image", nargs="?", help="a 2D microscopy TIFF (default: the bundled cell sample)")
    parser.add_argument("--crop", type=int, nargs=3, metavar=("Y", "X", "SIZE"), default=None,
                        help="crop origin and edge in pixels (default: a centre crop of 64 px)")
    parser.add_argument("--factor", type=float, default=4.0, help="upscaling factor")
    args = parser.parse_args()

    if args.image:
        image = tifffile.imread(args.image)
        name = args.image.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    else:
        from skimage import data

        image, name = data.cell(), "cell"
    image = np.squeeze(image)
    if image.ndim != 2:
        raise SystemExit(f"{args.image}: need a 2D image, got shape {image.shape}")
    y, x, size = args.crop or ((image.shape[0] - 64) // 2, (image.shape[1] - 64) // 2, 64)
    crop = np.ascontiguousarray(image[y : y + size, x : x + size])

    from napari.settings import get_settings

    get_settings().application.gui_notification_level = "none"  # no toasts in the picture
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1900, 960)
    source = viewer.add_image(crop, name=f"{name}: input (nearest)", colormap="gray", interpolation2d="nearest")
    _, widget = viewer.window.add_plugin_dock_widget("diinn-napari", "DIINN super-resolution")
    widget.layer.value = source
    widget.factor_y.value = args.factor
    plan = widget.plan()
    loop = QEventLoop()
    widget.controller.ended.connect(lambda state: loop.quit())
    if not widget.run():  # what pressing Run does; the reason is in the widget's notification
        raise SystemExit(f"the widget could not run: {widget.info.value}")
    loop.exec()
    if widget.result is None:
        raise SystemExit(f"the run ended {widget.state.value} without a result")
    result = viewer.layers[-1]
    result.name = f"DIINN x{args.factor:g}"
    result.interpolation2d = "nearest"
    viewer.add_image(bicubic(crop, plan.out_yx), name=f"bicubic x{args.factor:g}", colormap="gray",
                     scale=result.scale, translate=result.translate, contrast_limits=source.contrast_limits,
                     interpolation2d="nearest")
    viewer.layers.move(len(viewer.layers) - 1, 1)  # input, bicubic, DIINN from left to right
    viewer.grid.enabled = True
    viewer.grid.shape = (1, 3)
    widget.layer.value = source
    text = viewer.canvas.overlays.text
    text.text = f"input (nearest)  |  bicubic x{args.factor:g}  |  DIINN x{args.factor:g}"
    text.visible, text.font_size, text.position = True, 14, "top_center"
    viewer.reset_view()
    for _ in range(5):
        napari.qt.get_qapp().processEvents()
    viewer.screenshot(args.out, canvas_only=False)
    print(f"saved {args.out}: {name} crop {crop.shape} at ({y}, {x}) -> {result.data.shape}")
    viewer.close()


if __name__ == "__main__":
    main()
