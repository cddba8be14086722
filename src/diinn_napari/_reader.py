"""napari reader for GeoTIFFs and multiband TIFFs: one layer at its map position, bands on a leading axis.

The files :class:`~diinn_napari.io.geotiff.GeoTiffFormat` reads (a
GeoKeyDirectory, samples that are bands by :func:`~diinn_napari.io.sample_layout`,
a GDAL internal mask) are taken; other TIFFs are left to napari's own reader.
The layer is what the widget needs to treat the file as the batch tool does:

* bands: one (band, Y, X) layer (the widget upscales each band through the
  gray model with its own intensity fit); colour (RGB / RGBA by the rule): an
  RGB layer (the RGB model); one band: a (Y, X) layer;
* placed by the file's transform: scale and translate when north is up,
  an affine when the transform rotates or shears;
* ``metadata``: ``bands`` (the band names), ``nodata``, ``mask`` (the
  internal mask, (Y, X) bool, True where there is data), ``transform`` (GDAL's
  a, b, c, d, e, f) and ``path``; a result's are scaled by
  :func:`result_metadata`.

Torch-free, like everything napari imports at start-up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def get_reader(path):
    """The reader of ``path`` when the GeoTIFF format takes it, else None (napari then asks the next reader)."""
    if isinstance(path, list) or not str(path).lower().endswith((".tif", ".tiff")):
        return None
    from .io.geotiff import GEOTIFF

    if not GEOTIFF.detect(Path(path)):
        return None
    return read_geotiff


def read_geotiff(path) -> list[tuple]:
    """Layer data of one GeoTIFF: one image layer, placed on the map, with its band meaning in ``metadata``."""
    from .io.geotiff import GEOTIFF, GeoPlanes, affine, napari_affine

    path = Path(path if not isinstance(path, list) else path[0])
    info = GEOTIFF.read_info(path)
    data, axes = GEOTIFF.read_array(path)
    with GeoPlanes(info) as planes:
        mask = planes.data_mask()
    bands = None
    if axes == "CYX":
        bands = info.channel_names  # the reader's names: descriptions, else "band 1", "band 2", ...
    transform = affine(info)
    metadata = {"transform": transform, "nodata": info.nodata, "mask": mask, "bands": bands, "path": str(path)}
    kwargs: dict = {"name": path.stem, "metadata": metadata, "rgb": axes == "YXS"}
    lead = 1 if axes == "CYX" else 0
    if axes == "CYX":
        kwargs["axis_labels"] = ("band", "y", "x")
    a, b, _c, d, e, _f = transform or (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
    matrix = napari_affine(info)
    if matrix is None:
        pass
    elif b == 0 and d == 0 and a > 0 and e < 0:  # north up: napari's scale and translate say it all
        kwargs["scale"] = (1.0,) * lead + (float(matrix[0, 0]), float(matrix[1, 1]))
        kwargs["translate"] = (0.0,) * lead + (float(matrix[0, 2]), float(matrix[1, 2]))
    else:  # rotated or sheared: the layer's affine (the band axis untouched)
        full = np.eye(3 + lead)
        full[lead:, lead:] = matrix
        kwargs["affine"] = full
    return [(data, kwargs, "image")]


def result_metadata(metadata: dict, in_yx: tuple[int, int], out_yx: tuple[int, int]) -> dict:
    """The metadata of a result of ``out_yx`` pixels made from a layer of ``in_yx``: what this reader put there, scaled.

    ``transform`` gets pixels smaller by the real size ratio (same origin,
    pixel corners); ``mask`` goes to the output grid by the nearest input
    pixel, the rule the engine uses for nodata. Everything else is kept.
    """
    out = dict(metadata)
    if tuple(in_yx) == tuple(out_yx):
        return out
    ry, rx = in_yx[0] / out_yx[0], in_yx[1] / out_yx[1]
    transform = metadata.get("transform")
    if transform is not None and len(transform) == 6:
        a, b, c, d, e, f = transform
        out["transform"] = (a * rx, b * ry, c, d * rx, e * ry, f)
    mask = metadata.get("mask")
    if isinstance(mask, np.ndarray) and mask.shape == tuple(in_yx):
        from .io.geotiff import scale_mask

        out["mask"] = scale_mask(mask, tuple(out_yx))
    return out
