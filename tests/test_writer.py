"""napari writer: File > Save Selected Layers' path (viewer.layers.save) writes OME-Zarr or TIFF with scale, units, record."""

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from diinn_napari import io

RECORD = {"model": {"file": "gray.safetensors"}, "output_yx": [600, 520], "software": "diinn-napari test"}


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def _layer(viewer, rng):
    data = rng.integers(0, 4000, (3, 600, 520), dtype=np.uint16)
    layer = viewer.add_image(data, name="result", scale=(2.0, 0.25, 0.25), translate=(1.0, 10.0, 20.0),
                             units=("micrometer",) * 3, metadata={"diinn": RECORD})
    layer.axis_labels = ("z", "y", "x")
    return data, layer


def test_save_as_ome_zarr_with_pyramid_and_open_it_with_napari_ome_zarr(viewer, rng, tmp_path):
    data, _ = _layer(viewer, rng)
    path = tmp_path / "saved.ome.zarr"
    viewer.layers.save(str(path), plugin="diinn-napari")
    levels = [np.asarray(lv) for lv in list(Reader(parse_url(str(path)))())[0].data]
    assert [lv.shape for lv in levels] == [(3, 600, 520), (3, 300, 260)]
    np.testing.assert_array_equal(levels[0], data)
    attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    multiscale = attrs["ome"]["multiscales"][0]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.0, 0.25, 0.25]
    assert multiscale["datasets"][0]["coordinateTransformations"][1]["translation"] == [1.0, 10.0, 20.0]
    assert [a["unit"] for a in multiscale["axes"]] == ["micrometer"] * 3
    assert io.read_record(path) == RECORD
    # the file opens in napari with napari-ome-zarr as a multiscale layer at the same place
    opened = viewer.open(str(path), plugin="napari-ome-zarr")
    layer = opened[0]
    assert layer.multiscale and len(layer.data) == 2
    # the pixel size reaches the layer; napari-ome-zarr 0.10 leaves the datasets' translation out of the layer
    # (checked above in the file, as ome-zarr-py reads it)
    np.testing.assert_allclose(layer.scale, [2.0, 0.25, 0.25])
    np.testing.assert_array_equal(np.asarray(layer.data[1]), levels[1])


@pytest.mark.parametrize("name,kind", [("saved.tif", "imagej"), ("saved.ome.tif", "ome")])
def test_save_as_tiff_keeps_scale_units_record(viewer, rng, tmp_path, name, kind):
    data, _ = _layer(viewer, rng)
    path = tmp_path / name
    viewer.layers.save(str(path), plugin="diinn-napari")
    info = io.read_info(path)
    assert info.kind == kind and info.axes == "ZYX" and info.shape == data.shape
    assert info.pixel_size == pytest.approx((0.25, 0.25)) and info.z_spacing == pytest.approx(2.0)
    assert info.unit == ("micron" if kind == "imagej" else "µm")
    np.testing.assert_array_equal(tifffile.imread(path), data)
    assert io.read_record(path) == RECORD
