"""Library: upscale(out=zarr array or path) writes tiles straight into zarr; upscale_lazy equals the eager result."""

import dask.array as da
import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from diinn_napari import Engine, upscale, upscale_lazy
from diinn_napari.io.omezarr import PyramidWriter, create_image, halve, open_multiscale
from diinn_napari.settings import RunSettings


def test_out_zarr_array_equals_eager_and_holds_no_plane(tmp_path, rng, model):
    image = rng.integers(0, 4000, (2, 40, 36), dtype=np.uint16)
    eager = upscale(image, 2.5, model=model, tile_size=16)
    out = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=eager.shape, dtype=eager.dtype, chunks=(1, 32, 32))
    steps = list(Engine(RunSettings(scale=2.5, model=model, tile_size=16)).steps(image, out=out))
    assert all(step.plane is None for step in steps) and len(steps) > 2
    np.testing.assert_array_equal(out[...], eager)
    again = upscale(image, 2.5, model=model, tile_size=16, out=zarr.open_array(str(tmp_path / "b.zarr"), mode="w",
                                                                                 shape=eager.shape, dtype=eager.dtype))
    np.testing.assert_array_equal(again[...], eager)


def test_out_path_makes_a_multiscale_ome_zarr_read_by_ome_zarr_py(tmp_path, rng, model):
    image = rng.random((300, 260)).astype(np.float32)
    eager = upscale(image, 2, model=model, tile_size=64)
    level0 = upscale(image, 2, model=model, tile_size=64, out=tmp_path / "r.ome.zarr")
    np.testing.assert_array_equal(level0[...], eager)
    levels = [np.asarray(x) for x in list(Reader(parse_url(str(tmp_path / "r.ome.zarr")))())[0].data]
    assert [lv.shape for lv in levels] == [(600, 520), (300, 260)]
    np.testing.assert_allclose(levels[1], halve(eager).astype(np.float32), rtol=1e-6)
    lazy = open_multiscale(tmp_path / "r.ome.zarr")
    assert [lv.shape for lv in lazy] == [(600, 520), (300, 260)] and isinstance(lazy[0], da.Array)


def test_wrong_out_shape_is_refused(tmp_path, rng, model):
    out = zarr.open_array(str(tmp_path / "w.zarr"), mode="w", shape=(10, 10), dtype="u1")
    with pytest.raises(ValueError, match="out has shape"):
        upscale(rng.integers(0, 9, (8, 8), dtype=np.uint8), 2, model=model, out=out)


def test_sink_pyramid_from_tiles_equals_plane_pyramid(tmp_path, rng):
    plane = rng.integers(0, 60000, (1500, 1100), dtype=np.uint16)
    sink = create_image(tmp_path / "t.ome.zarr", plane.shape, plane.dtype, chunks=(256, 256))
    for y0, y1 in ((0, 333), (333, 1000), (1000, 1500)):  # windows not aligned to chunks, as the engine's tiles
        for x0, x1 in ((0, 517), (517, 1100)):
            sink[(slice(y0, y1), slice(x0, x1))] = plane[y0:y1, x0:x1]
    from diinn_napari.io import ImageInfo
    whole = PyramidWriter.create(tmp_path / "p.ome.zarr", ImageInfo(tmp_path / "p.ome.zarr", "ome-zarr", "YX",
                                                                    plane.shape, plane.dtype), chunks=(256, 256))
    whole.write_plane((), plane)
    assert len(whole.arrays) == 3
    for a, b in zip(sink.writer.arrays, whole.arrays):
        np.testing.assert_array_equal(a[...], b[...])


def test_lazy_dask_blocks_equal_the_eager_result(rng, model):
    image = rng.integers(0, 4000, (2, 37, 41), dtype=np.uint16)
    eager = upscale(image, 2.7, model=model, consistency=2, tile_size=16)
    # blocks = the engine's tiles: bit for bit, back-projection included
    lazy = upscale_lazy(da.from_array(image, chunks=(1, 37, 41)), 2.7, model=model, consistency=2, tile_size=16)
    assert isinstance(lazy, da.Array) and lazy.shape == eager.shape and len(lazy.chunks[-1]) == 3
    np.testing.assert_array_equal(lazy.compute(scheduler="threads"), eager)
    # any blocks: equal without back-projection, within one unit with it
    plain = upscale(image, 2.7, model=model, consistency=0)
    blocks = upscale_lazy(image, 2.7, model=model, consistency=0, chunks=(40, 48))
    assert blocks.chunks[-1][0] == 48
    np.testing.assert_array_equal(blocks.compute(), plain)
    near = upscale_lazy(image, 2.7, model=model, consistency=2, chunks=(40, 48)).compute()
    assert np.abs(near.astype(np.int32) - eager).max() <= 1


def test_lazy_rgb(rng):
    from conftest import tiny_model
    image = rng.integers(0, 255, (20, 22, 3), dtype=np.uint8)
    net = tiny_model(3)
    eager = upscale(image, 2, model=net, rgb=True)
    np.testing.assert_array_equal(upscale_lazy(image, 2, model=net, rgb=True, chunks=(16, 16)).compute(), eager)
