"""napari reader for GeoTIFFs: the layer sits at its map position (the file's transform), bands on a channel axis.

Only georeferenced TIFFs are taken (other TIFFs are left to napari's own
reader). Torch-free, like everything napari imports at start-up.
"""

from __future__ import annotations

from pathlib import Path


def get_reader(path):
    """The reader of ``path`` when it is a georeferenced TIFF, else None (napari then asks the next reader)."""
    if isinstance(path, list) or not str(path).lower().endswith((".tif", ".tiff")):
        return None
    from .io.geotiff import GEOTIFF, GEOKEYS

    path = Path(path)
    if not GEOTIFF.detect(path):
        return None
    info = GEOTIFF.read_info(path)
    if GEOKEYS not in info.metadata.get("geo", {}):
        return None
    return read_geotiff


def read_geotiff(path) -> list[tuple]:
    """Layer data of one GeoTIFF: one image layer (colour), or one per band (``channel_axis``), placed on the map."""
    from .io.geotiff import GEOTIFF, affine, napari_affine

    path = Path(path if not isinstance(path, list) else path[0])
    info = GEOTIFF.read_info(path)
    data, axes = GEOTIFF.read_array(path)
    kwargs: dict = {"name": path.stem, "metadata": {"transform": affine(info), "nodata": info.nodata,
                                                      "path": str(path)}}
    matrix = napari_affine(info)
    if matrix is not None:
        kwargs["affine"] = matrix
    if axes == "CYX":
        kwargs["channel_axis"] = 0
        kwargs["name"] = info.channel_names or [f"{path.stem} band {k + 1}" for k in range(data.shape[0])]
        kwargs["blending"] = "additive"
    else:
        kwargs["rgb"] = axes == "YXS"
    return [(data, kwargs, "image")]
