"""Training on GeoTIFFs with pixels without data: patches, validation crops and normalisation leave them out."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from diinn_napari.evaluate import load_valid
from diinn_napari.intensity import fit_intensity
from diinn_napari.train import loop
from diinn_napari.train.data import PairSampler, PlaneSet, left_out_line, load_planes, parse_scales, validation_crops
from diinn_napari.weights import save_weights

from conftest import tiny_model

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import Affine  # noqa: E402

SIZE, FRAME, HOLE = 128, 12, (60, 70)  # a 12 px collar of nodata and a 10 x 10 px hole at 60..70


def scene(seed=0, size=SIZE):
    """Smooth uint16 structure in 1000..5000 (never 0), a nodata (0) frame and an interior hole; and its data mask."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / 9.0
    phase = rng.random(2) * 6
    data = 3000 + 2000 * np.sin(x + phase[0]) * np.cos(0.8 * y + phase[1])
    valid = np.zeros((size, size), bool)
    valid[FRAME:-FRAME, FRAME:-FRAME] = True
    valid[HOLE[0]:HOLE[1], HOLE[0]:HOLE[1]] = False
    return np.where(valid, np.clip(data, 1000, 5000), 0).astype(np.uint16), valid


def write_geotiff(path, data, nodata=0, valid=None):
    """A one-band GeoTIFF through GDAL: ``nodata`` as GDAL_NODATA, or ``valid`` as its internal mask."""
    profile = dict(driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype,
                   crs="EPSG:32614", transform=Affine(30.0, 0, 500000.0, 0, -30.0, 4200000.0))
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", nodata=nodata if valid is None else None, **profile) as dst:
            dst.write(data[None])
            if valid is not None:
                dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))
    return path


@pytest.fixture(params=["nodata", "mask"])
def scene_file(request, tmp_path):
    data, valid = scene()
    if request.param == "mask":  # an internal mask, the nodata pixels holding a value that is not 0
        data = np.where(valid, data, 7).astype(np.uint16)
        return write_geotiff(tmp_path / "masked.tif", data, valid=valid), data, valid
    return write_geotiff(tmp_path / "collar.tif", data), data, valid


def with_nan_at_nodata(planes: PlaneSet) -> PlaneSet:
    """The same planes with NaN where they hold no data: a crop that touches nodata is not finite."""
    marked = []
    for i, plane in enumerate(planes.planes):
        plane = plane.clone()
        footprint = planes.footprint(i)
        if footprint is not None:
            plane[:, torch.from_numpy(~footprint.valid)] = float("nan")
        marked.append(plane)
    return PlaneSet(marked, planes.files, planes.skipped, planes.owners, planes.footprints, planes.left_out)


def test_training_uses_evaluates_data_mask_and_normalises_on_data_only(scene_file):
    path, data, valid = scene_file
    planes = load_planes([path], 1, 32)
    footprint = planes.footprint(0)
    assert footprint is not None
    assert np.array_equal(footprint.valid, valid)
    assert np.array_equal(footprint.valid, load_valid(path))  # one rule with evaluate
    assert planes.left_out == {path: int((~valid).sum())}
    mapping = fit_intensity(data[valid])  # the robust range of the data alone
    assert mapping.lo > 900  # (the nodata pixels, 15 % of the plane, would put the 0.1 percentile at 0 or 7)
    plane = planes.planes[0][0].numpy()
    assert np.allclose(plane[valid], mapping.normalize(data[valid]), atol=1e-6)
    assert np.percentile(plane[valid], 0.1) == pytest.approx(0.0, abs=1e-3)


def test_every_training_patch_lies_wholly_on_data(scene_file):
    path, _, valid = scene_file
    planes = with_nan_at_nodata(load_planes([path], 1, 32))
    assert planes.footprint(0).side == HOLE[0] - FRAME  # the largest square on data: above the hole
    sampler = PairSampler(planes.planes, 16, parse_scales("1-4"), noise=0.01, blur=0.5, dark=0.5, jitter=0.3, aniso=0.3,
                          axial=0.2, footprints=planes.footprints)
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        lr, hrs = sampler.sample_batch(gen, 16)
        assert torch.isfinite(lr).all()
        assert all(torch.isfinite(hr).all() and min(hr.shape[-2:]) >= 16 for hr in hrs)
    # the classic sampler on the same planes draws across the frame: the check above can fail
    plain = PairSampler(planes.planes, 16, parse_scales("1-4"))
    lr, hrs = plain.sample_batch(torch.Generator().manual_seed(0), 32)
    assert not all(torch.isfinite(hr).all() for hr in hrs)


def test_validation_crops_lie_wholly_on_data(scene_file):
    path, _, valid = scene_file
    planes = with_nan_at_nodata(load_planes([path], 1, 32))
    for size in (24, 64):  # 64 px is larger than the 48 px square on data: the crops shrink to it
        crops = validation_crops(planes, 12, size, seed=3, min_files=1)
        assert len(crops.crops) == 12
        for crop in crops.crops:
            assert torch.isfinite(crop).all()
            assert min(crop.shape[-2:]) == min(size, HOLE[0] - FRAME)
        assert crops.distinct_pixels == int(valid.sum())


def test_files_with_too_little_data_are_skipped_naming_them(tmp_path, caplog):
    caplog.set_level("WARNING")
    empty = write_geotiff(tmp_path / "empty.tif", np.zeros((64, 64), np.uint16))
    data, _ = scene()
    strip = data.copy()
    strip[:, 40:] = 0  # 116 x 28 px of data: no 32 px square
    strip[:FRAME] = 0
    thin = write_geotiff(tmp_path / "thin.tif", strip)
    good = write_geotiff(tmp_path / "good.tif", data)
    planes = load_planes([empty, thin, good], 1, 32)
    assert planes.files == [good]
    reasons = dict(planes.skipped)
    assert "no pixel holds data" in reasons[empty]
    assert "32 x 32 px square wholly on data" in reasons[thin]
    assert "empty.tif" in caplog.text and "thin.tif" in caplog.text
    line = left_out_line([planes])
    assert line.startswith(f"left out {int((data == 0).sum())} pixels without data") and "good.tif" in line


def test_finetune_command_line_on_tiles_with_nodata(tmp_path):
    """`python -m diinn_napari.finetune` on GeoTIFF tiles with a collar and a hole: trains, says what it left out."""
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for i in range(3):
        write_geotiff(tiles / f"scene{i}.tif", scene(seed=i)[0])
    write_geotiff(tiles / "blank.tif", np.zeros((64, 64), np.uint16))
    weights = save_weights(tiny_model(), tmp_path / "start.safetensors")
    out = tmp_path / "tuned.safetensors"
    cmd = [sys.executable, "-m", "diinn_napari.finetune", "--data", str(tiles), "--weights", str(weights),
           "--out", str(out), "--steps", "3", "--patch", "16", "--batch", "4", "--queries", "128", "--scales", "1-3",
           "--val-every", "3", "--val-patches", "4", "--val-crop", "64", "--device", "cpu", "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, loop.NOT_BETTER), done.stderr[-3000:]
    text = done.stdout + done.stderr
    assert "skipped" in text and "blank.tif" in text and "no pixel holds data" in text
    per_scene = int((scene()[0] == 0).sum())
    assert f"left out {3 * per_scene} pixels without data" in text
    assert (tmp_path / "tuned.last.safetensors").exists()


def test_footprint_agrees_with_a_brute_force_search():
    from diinn_napari.train.footprint import Footprint

    rng = np.random.default_rng(1)
    valid = rng.random((30, 40)) > 0.02
    valid[:3] = False
    footprint = Footprint(valid)
    for h, w in [(1, 1), (4, 6), (7, 3), (9, 9)]:
        brute = np.array([[valid[y:y + h, x:x + w].all() for x in range(40 - w + 1)] for y in range(30 - h + 1)])
        assert np.array_equal(footprint.starts(h, w), brute)
        for y, x in footprint.place(rng.random((50, 3, 2)), rng.random(50), h, w):
            assert valid[y:y + h, x:x + w].all()
    side = max(s for s in range(1, 31) if footprint.starts(s, s).any())
    assert footprint.side == side and footprint.left_out == int((~valid).sum())


def test_engine_training_and_evaluation_share_one_nodata_rule_for_colour(tmp_path):
    """GDAL's dataset mask: an RGB pixel is without data only where every colour is at nodata (one dark band is data)."""
    from diinn_napari.engine import fill_nodata

    rgb = np.full((40, 48, 3), 120, np.uint8)
    rgb[:10] = 0  # a collar: every colour at nodata
    rgb[20:24, :, 2] = 0  # no blue here: data
    rgb[30:32, :, :2] = 0  # only blue: data
    path = tmp_path / "rgb.tif"
    profile = dict(driver="GTiff", width=48, height=40, count=3, dtype="uint8", crs="EPSG:32614", nodata=0,
                   photometric="RGB", transform=Affine(30.0, 0, 500000.0, 0, -30.0, 4200000.0))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    with rasterio.open(path) as src:
        gdal = src.dataset_mask() > 0  # what a GIS counts as data
    assert gdal[20:24].all() and gdal[30:32].all() and not gdal[:10].any()
    _, missing = fill_nodata(rgb, 0, rgb=True)
    np.testing.assert_array_equal(~missing, gdal)  # the engine's
    np.testing.assert_array_equal(load_valid(path), gdal)  # evaluation's
    for channels in (1, 3):  # training's, as luminance and as colour
        footprint = load_planes([path], channels, 8).footprint(0)
        np.testing.assert_array_equal(footprint.valid, gdal)
