"""napari writer: *File > Save Selected Layers* writes an image layer as OME-Zarr (with its pyramid) or TIFF.

``.zarr`` (``.ome.zarr``): a multiscale OME-Zarr image (NGFF 0.5), levels
made by :mod:`diinn_napari.io.omezarr` plane by plane (an RGB / RGBA layer's
colour as NGFF's c axis); ``.tif``/``.tiff``:
an ImageJ hyperstack (``.tif``) or an OME-TIFF (``.ome.tif``). The layer's
scale and translate become the physical pixel size and origin (NGFF scale and
translation; TIFF resolution, ImageJ spacing / OME PhysicalSize), its axis
units the unit, and the DIINN record a DIINN result layer carries
(``layer.metadata["diinn"]``) the settings record of the file. Written
atomically (a hidden temporary renamed into place). No torch import.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .io import ImageInfo, atomic_write
from .io import record as settings_record

_UNIT_SYMBOLS = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm", "meter": "m"}


def _jsonable(value: Any):
    try:
        return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
    except (TypeError, ValueError):
        return None


def _axes(ndim: int, rgb: bool, labels) -> str:
    spatial = ndim - (1 if rgb else 0)
    names = [str(a).lower() for a in (labels or [])][-spatial:] if labels else []
    if len(names) == spatial and all(n in "tczyx" for n in names) and len(set(names)) == spatial:
        letters = "".join(names).upper()
    else:
        letters = "TCZYX"[5 - spatial:] if spatial <= 5 else None
        if letters is None:
            raise ValueError(f"a layer of {ndim} dimensions; OME-Zarr and TIFF hold at most T, C, Z, Y, X")
    return letters + ("S" if rgb else "")


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    """The napari ``write_single_image`` contribution: ``path`` ends in .zarr, .tif or .tiff."""
    from .io import omezarr

    target = Path(path)
    lower = target.name.lower()
    rgb = bool(meta.get("rgb"))
    # a multiscale layer (napari hands its levels over as a list or as its MultiScaleData): level 0 is the image,
    # the pyramid is made again
    if isinstance(data, (list, tuple)) or meta.get("multiscale"):
        data = data[0]
    shape, dtype = tuple(int(n) for n in data.shape), np.dtype(data.dtype)
    axes = _axes(len(shape), rgb, meta.get("axis_labels"))
    n = len(shape) - (1 if rgb else 0)
    scale = [float(v) for v in (meta.get("scale") if meta.get("scale") is not None else [1.0] * n)][-n:]
    translate = [float(v) for v in (meta.get("translate") if meta.get("translate") is not None else [0.0] * n)][-n:]
    units = [str(u) for u in (meta.get("units") or [])][-n:]
    unit = units[-1] if units and units[-1] not in ("pixel", "None", "") else None
    record = (meta.get("metadata") or {}).get("diinn")
    record = _jsonable(record) if record is not None else None
    leading = shape[: len(shape) - (3 if rgb else 2)]
    info = ImageInfo(target, "ome-zarr", axes, shape, dtype, pixel_size=(scale[-2], scale[-1]),
                     unit=_UNIT_SYMBOLS.get(unit, unit) if unit else None)
    if "Z" in axes:
        info.z_spacing = scale[axes.index("Z")]
    if "T" in axes:
        info.time_interval = scale[axes.index("T")]

    def planes():
        for index in np.ndindex(*leading):
            yield np.asarray(data[index])

    if lower.endswith(".zarr"):
        spatial = axes.rstrip("S")
        ngff_axes = [{"name": a.lower(), "type": omezarr.AXIS_TYPES[a.lower()],
                      **({"unit": omezarr.ngff_unit(units[i])} if i < len(units) and units[i]
                         not in ("pixel", "None", "") else {})} for i, a in enumerate(spatial)]
        ngff_scale, ngff_translation = list(scale), list(translate)
        if rgb:  # the colour as NGFF's c axis, after t (as io.omezarr stores it)
            at = omezarr.colour_axis(info)
            ngff_axes.insert(at, {"name": "c", "type": "channel"})
            ngff_scale.insert(at, 1.0)
            ngff_translation.insert(at, 0.0)
        info.metadata["ngff"] = {"axes": ngff_axes, "scale": ngff_scale, "translation": ngff_translation,
                                 "zarr_format": 3}
        with atomic_write(target, target.with_name(f".{target.name}.writing")) as tmp:
            omezarr.OME_ZARR.write(tmp, info, planes(), record)
        return [str(target)]
    if lower.endswith((".tif", ".tiff")):
        from .io.tiff import TIFF

        info.kind = "ome" if lower.endswith((".ome.tif", ".ome.tiff")) else "imagej"
        if info.kind == "imagej":
            if dtype not in (np.uint8, np.uint16, np.float32):
                raise ValueError(f"ImageJ TIFF holds uint8, uint16 or float32, not {dtype}; save as .ome.tif or .zarr")
            # ImageJ's description is ASCII: "micron" is how ImageJ itself writes µm
            info.metadata["imagej"] = {"unit": "micron" if info.unit == "µm" else info.unit} if info.unit else {}
        with atomic_write(target) as tmp:
            TIFF.write(tmp, info, planes(), record)
        return [str(target)]
    raise ValueError(f"{target.name}: save as .ome.zarr, .zarr, .tif, .ome.tif or .tiff")


__all__ = ["write_image", "settings_record"]
