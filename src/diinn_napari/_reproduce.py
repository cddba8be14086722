"""What made a DIINN layer, as something to run: the ``upscale(...)`` call and the batch command line.

Both are written from the record a result carries (``layer.metadata["diinn"]``,
made by :func:`~diinn_napari._planner.plan_run`) and spell out every setting
that decides the pixels (size, model, device, tile size, intensity, output
dtype, precision, consistency, ensemble, self-adaptation), so neither depends on the defaults
of the tool that runs it. No Qt, napari or torch here.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .settings import MODES, OUTLIER_CLAMP

__all__ = ["ReproduceError", "python_code", "batch_command"]

PLUGIN = "diinn-napari"  # the manifest's name: what napari records as the reader of the files this plugin opened


class ReproduceError(ValueError):
    """The record cannot be turned into what was asked (its message says why and what to do)."""


def _check(record) -> dict:
    if not isinstance(record, dict) or "output_shape" not in record or "model" not in record:
        raise ReproduceError("this layer has no DIINN run record (metadata['diinn']): only layers made by DIINN "
                             "super-resolution can be reproduced")
    if record.get("size_mode") == "isotropic voxels":
        raise ReproduceError("reproducing an isotropic voxels run is not offered yet: run "
                             "python -m diinn_napari.batch --isotropic with the settings in metadata['diinn']")
    if "preview_window" in record:
        raise ReproduceError("this is a preview layer: press Run, then copy the result's settings")
    return record


def _out_yx(record: dict) -> tuple[int, int]:
    """The (Y, X) of each output plane (a result layer's record holds its whole shape)."""
    shape = list(record["output_shape"])
    yx = shape[-3:-1] if record.get("rgb") and len(shape) > 2 else shape[-2:]
    return int(yx[0]), int(yx[1])


def _settings_args(record: dict) -> list[str]:
    """RunSettings keywords (Python source) that fix the pixels."""
    args = [f"output_shape={_out_yx(record)!r}", f"model={record['model']!r}",
            f"device={record['device']!r}", f"tile_size={record['tile_size']!r}",
            f"intensity={record['intensity']!r}", f"out_dtype={record['out_dtype']!r}",
            f"precision={record['precision']!r}", f"consistency={record['consistency']!r}"]
    if record.get("ensemble"):
        args.append("ensemble=True")
    if record.get("nodata") is not None:  # a GeoTIFF's (the batch tool reads it from the file itself)
        args.append(f"nodata=float({str(record['nodata'])!r})")
    clamp = record.get("outlier_clamp")
    if clamp is not None and tuple(clamp) != OUTLIER_CLAMP or clamp is None and "outlier_clamp" in record:
        args.append(f"outlier_clamp={None if clamp is None else tuple(clamp)!r}")
    if record.get("mode", MODES[0]) != MODES[0]:
        args.append(f"mode={record['mode']!r}")
    return args


def python_code(record: dict, layer_name: str | None = None) -> str:
    """A script that makes the same pixels as the run ``record`` describes (the source read from its file, or
    from the napari layer it was made from when it has no file)."""
    record = _check(record)
    path, source = record.get("source_path"), record.get("source", layer_name)
    lines = ["import numpy as np", "from diinn_napari import RunSettings, upscale", ""]
    mask = ""
    if path and record.get("source_reader") == PLUGIN:  # read by this plugin's GeoTIFF reader: bands first, its mask
        lines += ["from diinn_napari.io.geotiff import GEOTIFF  # the plugin's GeoTIFF reader", "",
                  f"image, _ = GEOTIFF.read_array({path!r})  # the source layer {source!r}"]
        if record.get("source_mask"):
            lines.append(f"mask = GEOTIFF.read_mask({path!r})  # its internal mask: True where there is data")
            mask = ", mask=mask"
    elif path:
        lines += ["from napari_builtins.io import imread  # napari's own reader", "",
                  f"image = imread({path!r})  # the source layer {source!r}"]
    else:
        lines += [f"# the source layer {source!r} (it has no file): run this in napari's console",
                  f"image = viewer.layers[{source!r}].data"]
    if record.get("plane_only") and record.get("plane"):
        index = ", ".join(f"{i}:{i + 1}" for i in record["plane"])
        lines.append(f"image = image[{index}]  # the plane that was on screen")
    rgb = bool(record.get("rgb"))
    lines += ["image = np.asarray(image)",
              "settings = RunSettings(" + ", ".join(_settings_args(record)) + ")"]
    steps = record.get("self_adapt_steps")
    if not steps:
        lines.append(f"result = upscale(image, settings=settings, rgb={rgb!r}{mask})")
        return "\n".join(lines) + "\n"
    ratio = tuple(float(r) for r in record["size_ratio"])
    lines[1] += "\nfrom diinn_napari.train.self_adapt import adapt_plane"
    plane_axes = 3 if rgb else 2
    lines += [f"planes = image.reshape((-1,) + image.shape[-{plane_axes}:])",
              "out = []",
              f"for plane in planes:  # each plane upscaled by a copy of the model adapted to it ({steps} steps)",
              f"    adapted = adapt_plane(plane, {ratio!r}, settings, {int(steps)}, rgb={rgb!r}{mask})",
              f"    out.append(upscale(plane, settings=settings.replace(model=adapted.model), rgb={rgb!r}{mask}))",
              f"result = np.stack(out).reshape(image.shape[:-{plane_axes}] + out[0].shape)"]
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return repr(float(value))


def batch_command(record: dict, out_dir: str | Path | None = None) -> str:
    """The ``python -m diinn_napari.batch`` line that writes the same pixels as the run ``record`` describes.

    The source must have come from a file; the output goes to ``out_dir``
    (default: a ``diinn`` folder next to the source), under the source's name.
    """
    record = _check(record)
    path = record.get("source_path")
    if not path:
        raise ReproduceError(f"the source {record.get('source')!r} did not come from a file (it has no "
                             "layer.source.path): save it (File > Save Selected Layers), open the file, and run again; "
                             "or use Copy as Python")
    if record.get("plane_only"):
        raise ReproduceError("this run was of the plane on screen only, and batch processes whole files: "
                             "use Copy as Python, or run again without 'only the plane on screen'")
    out_dir = Path(out_dir) if out_dir is not None else Path(path).parent / "diinn"
    ry, rx = record["size_ratio"]
    argv = ["python", "-m", "diinn_napari.batch", str(path), "--out", str(out_dir),
            "--scale", f"{_number(ry)},{_number(rx)}", "--model", str(record["model"]),
            "--device", str(record["device"]), "--tile-size", str(record["tile_size"] or 0),
            "--intensity", str(record["intensity"]), "--dtype", str(record["out_dtype"] or "input"),
            "--precision", str(record["precision"]), "--consistency", str(record["consistency"])]
    if record.get("ensemble"):
        argv.append("--ensemble")
    if record.get("self_adapt_steps"):
        argv += ["--self-adapt", str(int(record["self_adapt_steps"]))]
    clamp = record.get("outlier_clamp")
    if clamp is None or tuple(clamp) != OUTLIER_CLAMP or record.get("mode", MODES[0]) != MODES[0]:
        raise ReproduceError("this run used an outlier clamp or decoder mode batch has no option for: "
                             "use Copy as Python")
    return shlex.join(argv)


def command_argv(command: str) -> list[str]:
    """The argument list of a copied command, run with this Python (what a test or a script runs)."""
    argv = shlex.split(command)
    return [sys.executable, *argv[1:]] if argv and argv[0] == "python" else argv
