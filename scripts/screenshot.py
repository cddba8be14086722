"""Open napari, run the DIINN widget on a bundled sample and save a screenshot of the window.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot.py docs/screenshot.png
"""

import sys

import napari
from qtpy.QtCore import QEventLoop

from diinn_napari._widget import DIINNWidget


def main(path: str = "docs/screenshot.png", sample: str = "thermal", factor: float = 4.0) -> None:
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 900)
    viewer.open_sample("diinn-napari", sample)
    source = viewer.layers[0]
    widget = DIINNWidget(viewer)
    viewer.window.add_dock_widget(widget, name="DIINN super-resolution")
    widget.layer.value = source
    widget.factor_y.value = factor
    loop = QEventLoop()
    worker = widget.start(widget.plan(), start_thread=False)
    worker.finished.connect(loop.quit)
    worker.start()
    loop.exec_()
    viewer.grid.enabled = True  # source and result side by side, same world coordinates
    viewer.reset_view()
    # zoom into the centre so that pixels are visible
    viewer.camera.zoom *= 2.5
    napari.qt.get_qapp().processEvents()
    viewer.screenshot(path, canvas_only=False)
    print(f"saved {path}: {source.name} {source.data.shape} -> {viewer.layers[-1].name} {viewer.layers[-1].data.shape}")
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:2])
