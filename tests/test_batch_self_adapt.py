"""``python -m diinn_napari.batch --self-adapt STEPS``: each plane upscaled by a copy of the model adapted to it, recorded."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from diinn_napari import RunSettings, io, upscale
from diinn_napari.train.self_adapt import adapt_plane, refusal


def cli(*argv):
    return subprocess.run([sys.executable, "-m", "diinn_napari.batch", *argv], capture_output=True, text=True, timeout=300)


def picture(shape=(72, 88), phase=0.0):
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]] / 5.0
    img = np.sin(x + phase) * np.cos(0.7 * y) + 0.5 * np.sin(0.2 * x * y / 5)
    return ((img - img.min()) / (img.max() - img.min()) * 50000).astype(np.uint16)


@pytest.fixture
def stack(tmp_path):
    path = tmp_path / "zyx.tif"
    tifffile.imwrite(path, np.stack([picture(), picture(phase=1.0)]), imagej=True, metadata={"axes": "ZYX"})
    return path


def test_self_adapt_upscales_each_plane_with_a_copy_adapted_to_it_and_records_it(tmp_path, stack, gray_weights):
    out = tmp_path / "out"
    done = cli(str(stack), "--scale", "2", "--self-adapt", "3", "--model", gray_weights, "--threads", "1",
               "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "self-adapted to 2 plane(s), 3 steps each" in done.stdout
    result = tifffile.imread(out / "zyx.tif")
    assert result.shape == (2, 144, 176) and result.dtype == np.uint16
    assert io.read_record(out / "zyx.tif")["self_adapt"] == {"steps": 3, "seed": 0, "each": "plane"}
    settings = RunSettings(scale=2, model=gray_weights, threads=1, device="cpu")
    used = []
    for z, plane in enumerate(tifffile.imread(stack)):
        adapted = adapt_plane(plane, (2.0, 2.0), settings, 3)  # the same seed: the same copy as the batch's
        expected = upscale(plane, settings=settings.replace(model=adapted.model))
        np.testing.assert_allclose(result[z].astype(float), expected.astype(float), atol=1)
        if adapted.improved:
            used.append(not np.array_equal(expected, upscale(plane, settings=settings)))
    assert used and all(used), "an adapted copy that beat the start on its strip upscaled its plane"


def test_a_rerun_without_self_adapt_is_other_work_named_as_such(tmp_path, stack, gray_weights):
    out = tmp_path / "out"
    assert cli(str(stack), "--scale", "1.5", "--self-adapt", "1", "--model", gray_weights, "--out", str(out)).returncode == 0
    again = cli(str(stack), "--scale", "1.5", "--model", gray_weights, "--out", str(out))
    assert again.returncode == 1 and "self-adaptation to each plane" in again.stdout + again.stderr


@pytest.mark.parametrize("argv, message", [(["--scale", "4"], "measured to help up to x2"),
                                           (["--scale", "2,3"], "x3 asked"),
                                           (["--scale", "1"], "nothing to learn"),
                                           (["--isotropic"], "--adapt-steps"),
                                           (["--scale", "2", "--self-adapt", "-3"], "--self-adapt")])
def test_self_adapt_is_refused_where_it_was_not_measured_to_help(tmp_path, stack, gray_weights, argv, message):
    argv = argv if "--self-adapt" in argv else [*argv, "--self-adapt", "5"]
    done = cli(str(stack), *argv, "--model", gray_weights, "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "out").exists()


def test_self_adapt_with_a_pixel_size_refuses_the_files_it_would_take_too_far(tmp_path, gray_weights):
    fine, coarse = tmp_path / "fine.tif", tmp_path / "coarse.tif"
    tifffile.imwrite(fine, picture(), imagej=True, resolution=(1 / 0.2, 1 / 0.2), metadata={"unit": "um"})
    tifffile.imwrite(coarse, picture(), imagej=True, resolution=(1 / 0.8, 1 / 0.8), metadata={"unit": "um"})
    done = cli(str(fine), str(coarse), "--pixel-size", "0.1", "--self-adapt", "1", "--model", gray_weights,
               "--out", str(tmp_path / "out"))
    assert done.returncode == 1
    assert "coarse.tif: --self-adapt" in done.stdout and "x8 asked" in done.stdout
    assert (tmp_path / "out" / "fine.tif").exists() and not (tmp_path / "out" / "coarse.tif").exists()


def test_the_refusal_rule():
    assert refusal(2) is None and refusal((1.5, 2.0)) is None
    assert "x2.5 asked" in refusal(2.5) and "nothing to learn" in refusal((1, 1))


def test_self_adapt_is_refused_for_ome_zarr_outputs_never_recorded_unmet(tmp_path, stack, gray_weights):
    """OME-Zarr outputs are written block by block with the run's model: --self-adapt says so instead of
    recording an adaptation it did not do."""
    up_front = cli(str(stack), "--scale", "2", "--self-adapt", "2", "--format", "ome-zarr", "--model", gray_weights,
                   "--out", str(tmp_path / "out"))
    assert up_front.returncode == 2 and "not available for OME-Zarr outputs" in up_front.stderr
    assert not (tmp_path / "out").exists()
    pytest.importorskip("zarr")
    from test_omezarr import make_ngff

    store = tmp_path / "in.ome.zarr"
    make_ngff(store, np.stack([picture(), picture(phase=1.0)]), axes="zyx")
    per_file = cli(str(store), "--scale", "2", "--self-adapt", "2", "--model", gray_weights,
                   "--out", str(tmp_path / "out2"))  # --format auto: OME-Zarr in, OME-Zarr out
    assert per_file.returncode == 1 and "--format tiff" in per_file.stdout + per_file.stderr
    assert not any((tmp_path / "out2").glob("*.zarr"))


def test_self_adapt_on_a_geotiff_with_a_nodata_collar_keeps_the_map_and_the_collar(tmp_path, gray_weights):
    # the command a remote-sensing user runs; read back with rasterio, what their GIS is built on
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import Affine

    data = (picture((64, 80)) // 2 + 1000).astype(np.uint16)
    data[:, :20] = 0  # the scene's collar
    src, out = tmp_path / "scene.tif", tmp_path / "out"
    with rasterio.open(src, "w", driver="GTiff", width=80, height=64, count=1, dtype="uint16", nodata=0,
                       crs="EPSG:32614", transform=Affine(30.0, 0, 500000.0, 0, -30.0, 4200000.0)) as dst:
        dst.write(data[None])
    done = cli(str(src), "--scale", "2", "--self-adapt", "3", "--model", gray_weights, "--threads", "1",
               "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    with rasterio.open(out / "scene.tif") as result:
        assert result.nodata == 0 and result.crs.to_epsg() == 32614 and result.transform.a == 15.0
        upscaled, kept = result.read(1), result.dataset_mask() > 0
    assert upscaled.shape == (128, 160)
    assert not kept[:, :40].any() and kept[:, 40:].all()  # the collar stays nodata, the scene stays data
    assert upscaled[:, 40:].min() > 0
