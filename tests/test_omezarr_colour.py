"""The OME-Zarr writer's colour images: RGB / RGBA samples stored as NGFF's c axis, handed in and out samples last."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("zarr")

from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from diinn_napari.io import ImageInfo
from diinn_napari.io.omezarr import OME_ZARR, BlockStore, SamplesLast, open_levels


def test_a_time_series_of_colour_stacks_puts_c_after_t_and_reads_back_samples_last(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (2, 3, 70, 90, 3), dtype=np.uint8)  # T, Z, Y, X, RGB
    path = tmp_path / "tz.ome.zarr"
    info = ImageInfo(path, "ome-zarr", "TZYXS", image.shape, np.dtype("uint8"))
    OME_ZARR.write(path, info, (image[index] for index in np.ndindex(2, 3)))
    node = list(Reader(parse_url(str(path)))())[0]
    assert [a["name"] for a in node.metadata["axes"]] == ["t", "c", "z", "y", "x"]
    np.testing.assert_array_equal(np.asarray(node.data[0]), np.moveaxis(image, -1, 1))
    view = open_levels(path, colour_last=True)[0]
    assert view.shape == image.shape and view.dtype == np.uint8
    np.testing.assert_array_equal(view[...], image)
    np.testing.assert_array_equal(view[1, 2], image[1, 2])
    np.testing.assert_array_equal(view[1, ..., 5:9, :], image[1, ..., 5:9, :])
    np.testing.assert_array_equal(view[0, 1, 10:20, 3:40, 2], image[0, 1, 10:20, 3:40, 2])
    np.testing.assert_array_equal(view[:, 0, 4], image[:, 0, 4])


def test_a_colour_block_store_resumes_at_its_missing_blocks(tmp_path):
    image = np.random.default_rng(1).integers(0, 255, (600, 530, 4), dtype=np.uint8)
    path = tmp_path / "rgba.ome.zarr"
    info = ImageInfo(Path(path), "ome-zarr", "YXS", image.shape, np.dtype("uint8"))
    store = BlockStore.create(path, info, b"h")
    assert store.shape == image.shape and store.blocks_total == 4
    first = store.block_windows()[0]
    store.write_block((), first, image[first[0]:first[1], first[2]:first[3]])
    again = BlockStore.open(path, info, b"h")
    assert again is not None and again.done == {0}
    for y0, y1, x0, x1 in again.block_windows()[1:]:
        again.write_block((), (y0, y1, x0, x1), image[y0:y1, x0:x1])
    again.finish()
    levels = open_levels(path, colour_last=True)
    np.testing.assert_array_equal(levels[0][...], image)
    assert levels[1].shape == (300, 265, 4)


def test_a_view_without_a_c_axis_is_refused(tmp_path):
    path = tmp_path / "gray.ome.zarr"
    info = ImageInfo(path, "ome-zarr", "YX", (20, 30), np.dtype("uint16"))
    OME_ZARR.write(path, info, [np.zeros((20, 30), np.uint16)])
    with pytest.raises(ValueError, match="no c axis to show as colour"):
        open_levels(path, colour_last=True)
    assert isinstance(SamplesLast(open_levels(path)[0], 0), SamplesLast)
