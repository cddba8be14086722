import numpy as np
import pytest
import tifffile
from skimage.io import imread, imsave

from diinn_napari import RunSettings, batch
from diinn_napari.io import read_info


def imagej_stack(path, rng, shape=(2, 3, 2, 16, 20)):
    data = (rng.random(shape) * 4000).astype(np.uint16)
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.2, 1 / 0.2),
                     metadata={"axes": "TZCYX", "spacing": 0.5, "unit": "um", "finterval": 2.0,
                               "Labels": [f"plane {i}" for i in range(12)]})
    return data


def test_imagej_hyperstack_round_trip_keeps_metadata(tmp_path, rng, gray_weights):
    src = tmp_path / "in" / "stack.tif"
    src.parent.mkdir()
    imagej_stack(src, rng)
    assert batch.main([str(src), "--scale", "2.5", "--out", str(tmp_path / "out"), "--model", str(gray_weights)]) == 0
    with tifffile.TiffFile(tmp_path / "out" / "stack.tif") as tif:
        assert tif.is_imagej
        series = tif.series[0]
        assert series.axes == "TZCYX" and series.shape == (2, 3, 2, 40, 50) and series.dtype == np.uint16
        meta = tif.imagej_metadata
        assert meta["spacing"] == 0.5 and meta["unit"] == "um" and meta["finterval"] == 2.0
        assert meta["Labels"][5] == "plane 5"
        num, den = tif.pages[0].tags["XResolution"].value
        assert num / den == pytest.approx(1 / (0.2 / 2.5), rel=1e-5)
    info = read_info(tmp_path / "out" / "stack.tif")
    assert info.pixel_size == pytest.approx((0.08, 0.08), rel=1e-5)


def test_ome_tiff_pixel_sizes_are_divided_by_the_size_ratio(tmp_path, rng, gray_weights):
    src = tmp_path / "cells.ome.tif"
    data = (rng.random((2, 3, 12, 10)) * 255).astype(np.uint8)
    tifffile.imwrite(src, data, ome=True, metadata={
        "axes": "CZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.4, "PhysicalSizeZ": 1.5,
        "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm", "Channel": {"Name": ["DAPI", "GFP"]}})
    assert batch.main([str(src), "--scale", "2,3", "--out", str(tmp_path / "out"), "--model", str(gray_weights)]) == 0
    out = tmp_path / "out" / "cells.ome.tif"
    info = read_info(out)
    assert info.kind == "ome" and info.axes == "CZYX" and info.shape == (2, 3, 24, 30)
    assert info.pixel_size == pytest.approx((0.2, 0.1))
    assert info.z_spacing == pytest.approx(1.5) and info.channel_names == ["DAPI", "GFP"]


def test_pixel_size_option_computes_the_factor(tmp_path, rng, gray_weights):
    src = tmp_path / "s.tif"
    imagej_stack(src, rng, (1, 1, 1, 10, 10))
    assert batch.main([str(src), "--pixel-size", "0.05", "--out", str(tmp_path / "out"), "--model", str(gray_weights)]) == 0
    assert tifffile.TiffFile(tmp_path / "out" / "s.tif").series[0].shape[-2:] == (40, 40)


def test_a_bad_file_is_reported_and_the_batch_goes_on(tmp_path, rng, gray_weights, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    imagej_stack(folder / "a.tif", rng, (1, 2, 1, 10, 10))
    imsave(folder / "b.png", (rng.random((10, 12)) * 255).astype(np.uint8), check_contrast=False)
    (folder / "broken.tif").write_bytes(b"II*\x00 not really a tiff")
    (folder / "readme.txt").write_text("notes")
    code = batch.main([str(folder), "--scale", "2", "--out", str(tmp_path / "out"), "--model", str(gray_weights)])
    text = capsys.readouterr().out
    assert code == 1
    assert "broken.tif" in text and "failed" in text and "2 done, 0 skipped, 1 failed" in text
    assert imread(tmp_path / "out" / "b.png").shape == (20, 24)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.tif", "b.png"]


def test_an_output_never_overwrites_an_input(tmp_path, rng, gray_weights, capsys):
    src = tmp_path / "a.tif"
    original = imagej_stack(src, rng, (1, 1, 1, 8, 8))
    code = batch.main([str(src), "--scale", "2", "--out", str(tmp_path), "--model", str(gray_weights), "--overwrite"])
    assert code == 1 and "would overwrite an input" in capsys.readouterr().out
    np.testing.assert_array_equal(tifffile.imread(src), original.reshape(8, 8))


def test_an_interrupted_run_leaves_no_half_written_output_and_a_rerun_resumes(tmp_path, rng, gray_weights, monkeypatch, capsys):
    from diinn_napari import engine

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.tif", "b.tif"):
        imagej_stack(folder / name, rng, (1, 3, 1, 10, 10))
    out = tmp_path / "out"
    real_planes = engine.Engine.planes

    def ctrl_c_in_b(self, image, *a, **k):
        planes = real_planes(self, image, *a, **k)
        if image.reader.info.path.name == "b.tif":
            yield next(planes)
            raise KeyboardInterrupt
        yield from planes

    monkeypatch.setattr(engine.Engine, "planes", ctrl_c_in_b)
    args = [str(folder), "--scale", "2", "--out", str(out), "--model", str(gray_weights)]
    assert batch.main(args) == 130
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert visible == ["a.tif"]  # no half-written b.tif
    assert len(hidden) == 1 and hidden[0].startswith(".b.tif.") and hidden[0].endswith(".partial")
    monkeypatch.setattr(engine.Engine, "planes", real_planes)
    a_time = (out / "a.tif").stat().st_mtime_ns
    capsys.readouterr()
    assert batch.main(args) == 0
    text = capsys.readouterr().out
    assert "1 done, 1 skipped, 0 failed" in text and "resumed at plane 2 of 3" in text
    assert (out / "a.tif").stat().st_mtime_ns == a_time  # skipped, not redone
    assert tifffile.imread(out / "b.tif").shape == (3, 20, 20)
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "b.tif"]


def test_rgb_files_use_the_rgb_model(tmp_path, rng, rgb_weights):
    src = tmp_path / "photo.jpg"
    imsave(src, (rng.random((10, 14, 3)) * 255).astype(np.uint8), check_contrast=False)
    assert batch.main([str(src), "--scale", "2", "--out", str(tmp_path / "out"), "--model", str(rgb_weights)]) == 0
    assert imread(tmp_path / "out" / "photo.png").shape == (20, 28, 3)


def test_parallel_workers(tmp_path, rng, gray_weights):
    for i in range(2):
        imagej_stack(tmp_path / f"s{i}.tif", rng, (1, 2, 1, 10, 10))
    results = batch.run_batch(sorted(tmp_path.glob("*.tif")), batch.Settings(tmp_path / "out", RunSettings(scale=2, model=str(gray_weights))), workers=2)
    assert [r.status for r in results] == ["done", "done"]


def test_dask_local_cluster(tmp_path, rng, gray_weights):
    distributed = pytest.importorskip("distributed")
    for i in range(3):
        imagej_stack(tmp_path / f"s{i}.tif", rng, (1, 2, 1, 10, 10))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        code = batch.main([str(tmp_path / "*.tif"), "--scale", "2", "--out", str(tmp_path / "out"),
                           "--model", str(gray_weights), "--scheduler", cluster.scheduler_address])
    assert code == 0
    assert all(tifffile.imread(tmp_path / "out" / f"s{i}.tif").shape == (2, 20, 20) for i in range(3))


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        batch.main([str(tmp_path / "nope*.tif"), "--scale", "2", "--out", str(tmp_path / "out")])
    assert "no such file" in capsys.readouterr().err
