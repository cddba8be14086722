"""GeoTIFF and multiband rasters through the batch command, checked with rasterio (how GDAL and QGIS see them)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

rasterio = pytest.importorskip("rasterio")
from rasterio.crs import CRS  # noqa: E402
from rasterio.enums import ColorInterp, MaskFlags  # noqa: E402
from rasterio.transform import Affine  # noqa: E402

from diinn_napari import io  # noqa: E402
from diinn_napari.engine import fill_nodata, nodata_on_output, upscale  # noqa: E402
from diinn_napari.io.geotiff import GEOTIFF, GeoPlanes  # noqa: E402

H, W = 36, 44


def scene(bands: int, dtype=np.uint16, seed: int = 0) -> np.ndarray:
    """Smooth band images with some texture, a different level per band."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W] / max(H, W)
    out = []
    for b in range(bands):
        band = 0.4 + 0.3 * np.sin(3 * x + b) * np.cos(2 * y - b) + 0.05 * rng.standard_normal((H, W))
        out.append(band * (200 if dtype == np.uint8 else 3000 + 500 * b))
    data = np.stack(out)
    return np.clip(data, 1, None).astype(dtype) if np.dtype(dtype).kind in "ui" else data.astype(dtype)


def write_raster(path, data, *, crs="EPSG:32614", transform=Affine(30.0, 0, 500000.0, 0, -30.0, 4200000.0),
                 nodata=None, point=False, colorinterp=None, **options):
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype,
                   crs=crs, transform=transform, nodata=nodata, **options)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if point:
            dst.update_tags(AREA_OR_POINT="Point")
        if colorinterp is not None:
            dst.colorinterp = colorinterp
        dst.set_band_description(1, "first band")
    return path


def write_masked(path, data, valid, **options):
    """A GeoTIFF with a GDAL internal mask (a mask IFD, as GDAL writes it with GDAL_TIFF_INTERNAL_MASK=YES)."""
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                           dtype=data.dtype, crs="EPSG:32614", transform=Affine(30.0, 0, 500000.0, 0, -30.0, 4200000.0),
                           **options) as dst:
            dst.write(data)
            dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))
            dst.set_band_description(1, "first band")
    with rasterio.open(path) as src:  # what GDAL sees: one mask for the dataset
        assert src.mask_flag_enums[0] == [MaskFlags.per_dataset]
    return path


def tilted_edge(h=H, w=W):
    yy, xx = np.mgrid[0:h, 0:w]
    return xx <= 0.6 * w + 0.3 * yy  # True: the scene, False: beyond its tilted edge


def run_batch(inputs, out, *options):
    env = dict(os.environ)
    result = subprocess.run([sys.executable, "-m", "diinn_napari.batch", *map(str, inputs), "--out", str(out), *options],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def robust_range(band):
    lo, hi = np.percentile(band, (0.1, 99.9))
    return hi - lo


def assert_same_place(src, dst):
    """Same CRS; the output's transform is the input's with pixels smaller by the real size ratio, same origin."""
    assert dst.crs == src.crs
    expected = src.transform @ Affine.scale(src.width / dst.width, src.height / dst.height)
    assert np.allclose(tuple(dst.transform)[:6], tuple(expected)[:6], rtol=1e-12, atol=1e-9)


def assert_band_means(src, dst, tolerance=0.005):
    for b in range(1, src.count + 1):
        a, o = src.read(b, masked=True), dst.read(b, masked=True)
        a_valid = a.compressed().astype(np.float64)
        assert abs(o.mean() - a.mean()) < tolerance * robust_range(a_valid), (b, o.mean(), a.mean())


def test_four_bands_with_epsg_and_a_nodata_edge_keep_place_band_meaning_and_nodata(tmp_path, gray_weights):
    data = scene(4)
    yy, xx = np.mgrid[0:H, 0:W]
    edge = xx > 0.6 * W + 0.3 * yy  # a tilted scene edge
    data[:, edge] = 0
    src_path = write_raster(tmp_path / "four.tif", data, nodata=0, interleave="pixel")
    result = run_batch([src_path], tmp_path / "up", "--scale", "2", "--model", gray_weights)
    assert "GDAL_" not in result.stderr
    with rasterio.open(src_path) as src, rasterio.open(tmp_path / "up" / "four.tif") as dst:
        assert (dst.count, dst.shape, dst.dtypes) == (4, (2 * H, 2 * W), src.dtypes)
        assert dst.crs == CRS.from_epsg(32614)
        assert_same_place(src, dst)
        assert dst.nodata == 0
        assert dst.colorinterp == src.colorinterp
        assert dst.descriptions[0] == "first band"
        assert dst.profile["interleave"] == "pixel"
        assert_band_means(src, dst)
        # nodata exactly where the nearest input pixel is nodata
        expected = nodata_on_output(edge, (2 * H, 2 * W))
        for b in range(1, 5):
            assert np.array_equal(dst.read(b) == 0, expected)


def test_pixel_is_point_keeps_its_convention_and_its_place(tmp_path, gray_weights):
    src_path = write_raster(tmp_path / "point.tif", scene(2), point=True)
    run_batch([src_path], tmp_path / "up", "--scale", "3", "--model", gray_weights)
    with rasterio.open(src_path) as src, rasterio.open(tmp_path / "up" / "point.tif") as dst:
        assert dst.tags()["AREA_OR_POINT"] == "Point" == src.tags()["AREA_OR_POINT"]
        assert dst.count == 2
        assert_same_place(src, dst)
        assert_band_means(src, dst)
    info = io.read_info(src_path)
    assert info.axes == "CYX" and info.pixel_size == (30.0, 30.0) and info.unit == "m"


def test_rotated_model_transformation_float_bands_with_nan_nodata_and_separate_y_x_factors(tmp_path, gray_weights):
    data = scene(2, np.float32)
    data[:, :4, :] = np.nan
    rotated = Affine.translation(10.5, 44.2) @ Affine.rotation(20) @ Affine.scale(0.001, -0.002)
    src_path = write_raster(tmp_path / "rot.tif", data, crs="EPSG:4326", transform=rotated, nodata=float("nan"),
                            interleave="band")
    run_batch([src_path], tmp_path / "up", "--scale", "2,3", "--model", gray_weights)
    with rasterio.open(src_path) as src, rasterio.open(tmp_path / "up" / "rot.tif") as dst:
        assert dst.shape == (2 * H, 3 * W)
        assert dst.crs == CRS.from_epsg(4326) and np.isnan(dst.nodata)
        assert_same_place(src, dst)
        assert dst.profile["interleave"] == "band"
        out = dst.read()
        assert np.isnan(out[:, :8]).all() and not np.isnan(out[:, 8:]).any()
        for b in range(2):
            a = data[b][~np.isnan(data[b])]
            assert abs(np.nanmean(out[b]) - a.mean()) < 0.005 * robust_range(a)
    assert tifffile.TiffFile(tmp_path / "up" / "rot.tif").pages[0].tags.get(34264) is not None  # ModelTransformation


def test_six_band_pixel_interleaved_scene_and_target_pixel_size_in_crs_units(tmp_path, gray_weights):
    src_path = write_raster(tmp_path / "six.tif", scene(6), interleave="pixel")
    run_batch([src_path], tmp_path / "up", "--pixel-size", "12", "--model", gray_weights)
    with rasterio.open(src_path) as src, rasterio.open(tmp_path / "up" / "six.tif") as dst:
        assert dst.count == 6 and dst.res == pytest.approx((12.0, 12.0), rel=0.02)
        assert dst.shape == (round(H * 2.5), round(W * 2.5))
        assert_same_place(src, dst)
        assert_band_means(src, dst)


NAIP_GDAL_METADATA = ('<GDALMetadata><Item name="COLORINTERP" sample="0" role="colorinterp">Red</Item>'
                      '<Item name="COLORINTERP" sample="1" role="colorinterp">Green</Item>'
                      '<Item name="COLORINTERP" sample="2" role="colorinterp">Blue</Item>'
                      '<Item name="COLORINTERP" sample="3" role="colorinterp">Undefined</Item></GDALMetadata>')


@pytest.mark.parametrize("declared", ["alpha by its tags, undefined for GDAL", "unspecified extra sample"])
def test_rgb_plus_nir_is_four_bands_and_keeps_photometric_and_extra_samples(tmp_path, gray_weights, declared):
    path = tmp_path / "naip.tif"
    data = np.moveaxis(scene(4, np.uint8), 0, -1)
    geokeys = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 26914)  # projected, pixel is area, EPSG:26914
    tags = [(33550, "d", 3, (5.0, 5.0, 0.0), True), (33922, "d", 6, (0, 0, 0, 485900.0, 5209247.0, 0), True),
            (34735, "H", len(geokeys), geokeys, True)]
    if declared.startswith("alpha"):  # what NAIP tiles hold
        tags.append((42112, "s", 0, NAIP_GDAL_METADATA, True))
        tifffile.imwrite(path, data, photometric="rgb", extrasamples=["unassalpha"], extratags=tags)
    else:
        tifffile.imwrite(path, data, photometric="rgb", extrasamples=["unspecified"], extratags=tags)
    with rasterio.open(path) as src:
        assert src.colorinterp[3] == ColorInterp.undefined and src.crs == CRS.from_epsg(26914)
    assert io.read_info(path).axes == "CYX"  # bands, not colour plus a mask
    run_batch([path], tmp_path / "up", "--scale", "2", "--model", gray_weights)
    out_path = tmp_path / "up" / "naip.tif"
    with rasterio.open(path) as src, rasterio.open(out_path) as dst:
        assert dst.count == 4 and dst.colorinterp == src.colorinterp
        assert_same_place(src, dst)
        assert_band_means(src, dst)
    with tifffile.TiffFile(path) as a, tifffile.TiffFile(out_path) as b:
        assert b.pages[0].photometric == 2 == a.pages[0].photometric
        assert tuple(b.pages[0].extrasamples) == tuple(a.pages[0].extrasamples)
        assert b.pages[0].planarconfig == a.pages[0].planarconfig


def test_declared_rgb_goes_through_the_rgb_model(tmp_path, rgb_weights):
    src_path = write_raster(tmp_path / "rgb.tif", scene(3, np.uint8), photometric="RGB")
    assert io.read_info(src_path).rgb
    run_batch([src_path], tmp_path / "up", "--scale", "2", "--model", rgb_weights)
    with rasterio.open(src_path) as src, rasterio.open(tmp_path / "up" / "rgb.tif") as dst:
        assert dst.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert_same_place(src, dst)
        assert_band_means(src, dst)


def test_cog_output_is_valid_by_gdal_and_a_rerun_skips_it(tmp_path, gray_weights):
    data = scene(3)
    data[:, :, :5] = 0
    src_path = write_raster(tmp_path / "cog.tif", data, nodata=0)
    run_batch([src_path], tmp_path / "up", "--scale", "8", "--cog", "--model", gray_weights)
    out_path = tmp_path / "up" / "cog.tif"
    with rasterio.open(src_path) as src, rasterio.open(out_path) as dst:
        assert dst.profile["tiled"] and dst.overviews(1) and dst.compression.name.lower() == "deflate"
        assert dst.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert dst.nodata == 0 and dst.count == 3
        assert_same_place(src, dst)
        assert_band_means(src, dst)
    cogeo = pytest.importorskip("rio_cogeo.cogeo")
    valid, errors, _ = cogeo.cog_validate(str(out_path))
    assert valid, errors
    again = run_batch([src_path], tmp_path / "up", "--scale", "8", "--cog", "--model", gray_weights)
    assert "skipped" in again.stdout
    assert not [p for p in (tmp_path / "up").iterdir() if p.name != "cog.tif"]


def test_nodata_is_filled_before_the_network_so_a_scene_edge_does_not_darken_its_neighbours(model):
    y, x = np.mgrid[0:64, 0:64]
    plane = (2000 + 10 * x + 5 * y).astype(np.uint16)
    edge = x > 30 + 0.5 * y
    with_edge = plane.copy()
    with_edge[edge] = 0
    from scipy.ndimage import distance_transform_edt

    # output pixels whose nearest input pixel is valid and within 3 pixels of the edge
    near = nodata_on_output(~edge & (distance_transform_edt(~edge) <= 3), (128, 128))
    assert near.sum() > 200
    full = upscale(plane, 2, model=model, consistency=2)
    filled = upscale(with_edge, 2, model=model, consistency=2, nodata=0)
    naive = upscale(with_edge, 2, model=model, consistency=2)
    span = float(np.percentile(plane, 99.9) - np.percentile(plane, 0.1))
    bias = (filled[near].astype(float) - full[near]).mean()
    naive_bias = (naive[near].astype(float) - full[near]).mean()
    # measured: filled -0.007 %, the edge as data +0.5 % of the range (the tiny test model)
    assert abs(bias) < 0.001 * span and abs(naive_bias) > 10 * abs(bias) and abs(naive_bias) > 0.002 * span
    assert np.array_equal(filled == 0, nodata_on_output(edge, (128, 128)))
    _, missing = fill_nodata(with_edge, 0)
    assert np.array_equal(missing, edge)


def test_the_napari_reader_places_a_geotiff_on_the_map_with_its_bands_on_a_leading_axis(tmp_path):
    from diinn_napari._reader import get_reader

    rotated = Affine.translation(500000.0, 4200000.0) @ Affine.rotation(15) @ Affine.scale(30.0, -30.0)
    path = write_raster(tmp_path / "bands.tif", scene(3), transform=rotated)
    reader = get_reader(str(path))
    assert reader is not None and get_reader(str(tmp_path / "bands.png")) is None
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, scene(1)[0])
    assert get_reader(str(plain)) is None  # one gray band, not georeferenced: napari's own reader
    [(data, kwargs, kind)] = reader(str(path))
    assert kind == "image" and data.shape == (3, H, W) and kwargs["axis_labels"] == ("band", "y", "x")
    assert kwargs["metadata"]["bands"] == ["first band", "band 2", "band 3"] and not kwargs["rgb"]
    with rasterio.open(path) as src:
        for row, col in [(0, 0), (5, 7), (H - 1, W - 1)]:
            x, y = src.xy(row, col)  # the map position of the pixel's centre
            assert np.allclose(kwargs["affine"] @ [2, row, col, 1], [2, -y, x, 1])  # the band axis untouched
    unreferenced = tmp_path / "six.tif"
    tifffile.imwrite(unreferenced, np.moveaxis(scene(6), 0, -1), photometric="minisblack", planarconfig="contig")
    [(data, kwargs, _)] = get_reader(str(unreferenced))(str(unreferenced))  # bands by the rule, not a 3D stack
    assert data.shape == (6, H, W) and "affine" not in kwargs and "scale" not in kwargs


def test_gdal_tags_tifffile_cannot_parse_give_no_warning_on_the_terminal_and_are_kept(tmp_path, gray_weights):
    path = tmp_path / "int.tif"
    geokeys = (1, 1, 0, 2, 1024, 0, 1, 1, 3072, 0, 1, 32614)
    tags = [(33550, "d", 3, (30.0, 30.0, 0.0), True), (33922, "d", 6, (0, 0, 0, 500000.0, 4200000.0, 0), True),
            (34735, "H", len(geokeys), geokeys, True), (42113, "s", 0, "0.0", True)]  # tifffile parses it as an int
    data = scene(1)[0]
    data[:, :6] = 0
    tifffile.imwrite(path, data, photometric="minisblack", extratags=tags)
    check = subprocess.run([sys.executable, "-c", f"import tifffile; tifffile.TiffFile({str(path)!r}).pages[0]"],
                           capture_output=True, text=True)
    assert "GDAL_NODATA" in check.stderr  # what tifffile prints by itself
    result = run_batch([path], tmp_path / "up", "--scale", "2", "--model", gray_weights)
    assert "GDAL" not in result.stderr + result.stdout
    with rasterio.open(path) as src, rasterio.open(tmp_path / "up" / "int.tif") as dst:
        assert dst.nodata == 0 and dst.crs == CRS.from_epsg(32614)
        assert_same_place(src, dst)
        assert (dst.read(1)[:, :12] == 0).all()


@pytest.mark.parametrize("interleave", ["pixel", "band"])
def test_an_internal_mask_is_left_out_of_the_fit_filled_and_written_back_scaled(tmp_path, gray_weights, interleave):
    valid = tilted_edge()
    data = scene(3)
    outputs = []
    for name, outside in (("bright", 65535), ("dark", 0)):  # what lies under the mask must not matter
        data[:, ~valid] = outside
        path = write_masked(tmp_path / f"{name}.tif", data, valid, interleave=interleave)
        assert io.read_info(path).nodata is None and io.format_for(path).name == "geotiff"
        run_batch([path], tmp_path / "up", "--scale", "2", "--model", gray_weights)
        outputs.append(tmp_path / "up" / f"{name}.tif")
    expected_valid = ~nodata_on_output(~valid, (2 * H, 2 * W))  # the nearest input pixel's, as for nodata
    for out_path in outputs:
        with rasterio.open(outputs[0].parent.parent / out_path.name) as src, rasterio.open(out_path) as dst:
            assert dst.mask_flag_enums == tuple([MaskFlags.per_dataset] for _ in range(3))
            for b in range(1, 4):
                assert np.array_equal(dst.read_masks(b) > 0, expected_valid)
            assert dst.profile["interleave"] == interleave and dst.count == 3
            assert_same_place(src, dst)
            assert_band_means(src, dst)  # masked reads: the mean of the pixels with data
            assert (dst.read()[:, ~expected_valid] == 0).all()  # no data there: 0 (no nodata value declared)
    with rasterio.open(outputs[0]) as bright, rasterio.open(outputs[1]) as dark:
        assert np.array_equal(bright.read(), dark.read())


def test_the_mask_is_treated_as_nodata_by_the_engine(model):
    y, x = np.mgrid[0:48, 0:48]
    plane = (2000 + 10 * x + 5 * y).astype(np.uint16)
    valid = x <= 20 + 0.5 * y
    with_nodata = np.where(valid, plane, 0).astype(np.uint16)
    by_mask = upscale(np.where(valid, plane, 60000).astype(np.uint16), 2, model=model, mask=valid)
    by_nodata = upscale(with_nodata, 2, model=model, nodata=0)
    assert np.array_equal(by_mask, by_nodata)
    from diinn_napari.engine import upscale_window

    window = upscale_window(np.where(valid, plane, 60000).astype(np.uint16), (96, 96), (10, 50, 20, 70), model=model,
                            mask=valid)  # the napari preview: the same pixels as the run
    assert np.array_equal(window, by_mask[10:50, 20:70])
    stack = upscale(np.stack([plane, plane]), 2, model=model, mask=np.stack([valid, np.ones_like(valid)]))
    assert np.array_equal(stack[0], by_nodata) and (stack[1] > 0).all()  # one mask per plane
    with pytest.raises(ValueError, match="mask has shape"):
        upscale(plane, 2, model=model, mask=valid[:10])


def test_an_internal_mask_survives_the_cog_copy(tmp_path, gray_weights):
    valid = tilted_edge()
    path = write_masked(tmp_path / "cogmask.tif", scene(2), valid, interleave="band")
    run_batch([path], tmp_path / "up", "--scale", "8", "--cog", "--model", gray_weights)  # above one 256 tile: overviews
    out_path = tmp_path / "up" / "cogmask.tif"
    with rasterio.open(out_path) as dst:
        assert dst.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and dst.overviews(1)
        assert dst.mask_flag_enums[0] == [MaskFlags.per_dataset]
        assert np.array_equal(dst.read_masks(1) > 0, ~nodata_on_output(~valid, (8 * H, 8 * W)))
    cogeo = pytest.importorskip("rio_cogeo.cogeo")
    is_valid, errors, _ = cogeo.cog_validate(str(out_path))
    assert is_valid, errors


@pytest.mark.parametrize("options", [dict(interleave="band"), dict(interleave="pixel"),
                                     dict(tiled=True, blockxsize=16, blockysize=16, compress="deflate", interleave="pixel"),
                                     dict(tiled=True, blockxsize=16, blockysize=16, compress="deflate", interleave="band",
                                          predictor=2)])
def test_bands_are_read_one_at_a_time_as_gdal_reads_them(tmp_path, options):
    data = scene(4)
    path = write_raster(tmp_path / "bands.tif", data, **options)
    info = io.read_info(path)
    with GeoPlanes(info) as planes, rasterio.open(path) as src:
        for b in range(4):
            assert np.array_equal(planes[b], src.read(b + 1))
        with pytest.raises(IndexError, match="outside its 4 bands"):
            planes[4]
    array, axes = GEOTIFF.read_array(path)
    assert axes == "CYX" and np.array_equal(array, data)


def test_one_band_of_separate_planes_is_read_without_the_others(tmp_path):
    path = write_raster(tmp_path / "sep.tif", scene(3), interleave="band")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[2], page.databytecounts[2]
    with open(path, "r+b") as fh:  # damage the third band's data: the first two still read
        fh.seek(offset)
        fh.write(b"\xff" * count)
    info = io.read_info(path)
    with GeoPlanes(info) as planes, rasterio.open(path) as src:
        assert np.array_equal(planes[0], src.read(1)) and np.array_equal(planes[1], src.read(2))


# ---- the widget: a GeoTIFF opened in napari as a user opens it, run with the Run button ----------------------
def open_in_napari(viewer, path):
    """File > Open with the plugin's reader (napari asks which reader when more than one takes a .tif)."""
    layers = viewer.open(str(path), plugin="diinn-napari")
    assert len(layers) == 1
    return layers[0]


def test_a_multiband_geotiff_in_the_widget_is_upscaled_band_by_band_and_keeps_its_meaning(
        make_napari_viewer, qtbot, gray_weights, tmp_path):
    pytest.importorskip("napari")
    from test_widget import open_widget, run

    import diinn_napari.engine as engine
    from diinn_napari.weights import load_weights

    valid = tilted_edge()
    data = scene(4)
    data[:, ~valid] = 60000  # under the internal mask: must not matter
    data[:, :3, :] = 0  # and a nodata strip along the top
    path = write_masked(tmp_path / "bands.tif", data, valid, interleave="pixel", nodata=0)
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    widget.add_model_file(gray_weights)
    layer = open_in_napari(viewer, path)
    assert layer.data.shape == (4, H, W) and not layer.rgb
    assert layer.metadata["bands"] == ["first band", "band 2", "band 3", "band 4"]
    np.testing.assert_allclose(layer.scale, (1, 30, 30))
    np.testing.assert_allclose(layer.translate, (0, -(4200000.0 - 15), 500000.0 + 15))
    widget.layer.value = layer
    widget.factor_y.value = 2
    assert widget.plan().run.model == gray_weights and widget.plan().run.nodata == 0
    run(qtbot, widget)
    out = viewer.layers["bands x2 DIINN"]
    assert out.data.shape == (4, 2 * H, 2 * W) and out.data.dtype == np.uint16
    # the band meaning, and the place: pixel centres on the source's grid, the transform scaled
    assert out.metadata["bands"] == layer.metadata["bands"] and out.metadata["nodata"] == 0
    np.testing.assert_allclose(out.scale, (1, 15, 15))
    np.testing.assert_allclose(out.translate, (0, -(4200000.0 - 7.5), 500000.0 + 7.5))
    assert out.metadata["transform"] == (15.0, 0.0, 500000.0, 0.0, -15.0, 4200000.0)
    expected_valid = ~nodata_on_output(~valid, (2 * H, 2 * W))
    assert np.array_equal(out.metadata["mask"], expected_valid)
    # each band through the gray model with its own intensity fit: what upscale gives for that band alone,
    # and what the batch tool writes for the file
    model = load_weights(gray_weights)
    for b in range(4):
        alone = engine.upscale(data[b], 2, model=model, nodata=0, mask=valid)
        assert np.array_equal(out.data[b], alone), b
    run_batch([path], path.parent / "up", "--scale", "2", "--model", gray_weights)
    with rasterio.open(path.parent / "up" / "bands.tif") as dst:
        assert np.array_equal(dst.read(), out.data)
        assert np.array_equal(dst.read_masks(1) > 0, expected_valid)
    # Copy as Python reads the file as the plugin did (bands first, its mask) and makes the same pixels
    from test_widget import run_copied_python

    viewer.layers.selection.active = out
    script, again = run_copied_python(widget, tmp_path)
    assert "GEOTIFF.read_mask" in script and "nodata=float('0.0')" in script
    assert np.array_equal(again, out.data)


def test_a_declared_rgb_geotiff_in_the_widget_goes_through_the_rgb_model(make_napari_viewer, qtbot, rgb_weights,
                                                                        tmp_path):
    pytest.importorskip("napari")
    from test_widget import open_widget, run

    import diinn_napari.engine as engine
    from diinn_napari.weights import load_weights

    data = scene(3, np.uint8)
    path = write_raster(tmp_path / "rgb.tif", data, photometric="RGB")
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    layer = open_in_napari(viewer, path)
    assert layer.rgb and layer.data.shape == (H, W, 3)
    widget.layer.value = layer
    assert widget.plan().run.model == "rgb"
    widget.add_model_file(rgb_weights)
    widget.factor_y.value = 2
    run(qtbot, widget)
    out = viewer.layers["rgb x2 DIINN"]
    assert out.rgb and out.data.shape == (2 * H, 2 * W, 3)
    np.testing.assert_allclose(out.scale, (15, 15))
    expected = engine.upscale(np.moveaxis(data, 0, -1), 2, model=load_weights(rgb_weights), rgb=True)
    assert np.array_equal(out.data, expected)
