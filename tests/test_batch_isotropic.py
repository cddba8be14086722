"""Batch tool, --isotropic: Z resampling of TIFF stacks from their own calibration, as a user runs it."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from diinn_napari import RunSettings, batch
from diinn_napari.isotropic import isotropic
from diinn_napari.io import read_info, read_record


def cli(*argv):
    return subprocess.run([sys.executable, "-m", "diinn_napari.batch", *argv], capture_output=True, text=True,
                          timeout=300)


def blobs(shape, seed=0, peak=3000.0) -> np.ndarray:
    """Smooth 3D blobs in [0, peak], float64."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    vol = np.full(shape, 0.05)
    for _ in range(4):
        c = rng.random(3) * np.array(shape)
        vol += np.exp(-sum(((g - ci) / w) ** 2 for g, ci, w in zip(grids, c, (1.2, 2.5, 2.5))) / 2)
    return vol / vol.max() * peak


def imagej_stack(path, data, axes, spacing=None, pixel=0.5):
    metadata = {"axes": axes, "unit": "micron"}
    if spacing is not None:
        metadata["spacing"] = spacing
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / pixel, 1 / pixel), metadata=metadata)
    return data


def x_resolution(tif) -> float:
    num, den = tif.pages[0].tags["XResolution"].value
    return num / den


def test_imagej_zyx_stack_gets_isotropic_voxels_and_its_z_spacing(tmp_path, gray_weights):
    src = tmp_path / "zyx.tif"
    vol = imagej_stack(src, blobs((5, 24, 26)).astype(np.uint16), "ZYX", spacing=1.5)
    out = tmp_path / "out"
    done = cli(str(src), "--isotropic", "--out", str(out), "--model", gray_weights)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"zyx.tif +done +13x24x26", done.stdout), done.stdout
    with tifffile.TiffFile(out / "zyx.tif") as tif:
        data = tif.asarray()
        assert tif.is_imagej and tif.series[0].axes == "ZYX"
        assert tif.imagej_metadata["spacing"] == pytest.approx(0.5) and tif.imagej_metadata["unit"] == "micron"
        assert x_resolution(tif) == pytest.approx(2.0)  # XY pixel size unchanged: 0.5
    assert data.shape == (13, 24, 26) and data.dtype == np.uint16  # floor(4 * 1.5 / 0.5) + 1 planes
    np.testing.assert_array_equal(data, isotropic(vol, (1.5, 0.5, 0.5), model=gray_weights, device="cpu"))
    record = read_record(out / "zyx.tif")
    assert record["isotropic"] == {"z_step_in": 1.5, "z_step_out": 0.5, "z_planes": [5, 13], "fusion": "mean"}
    assert record["consistency"] == 0 and record["output_yx"] == [24, 26]


def test_imagej_zcyx_stack_keeps_its_channels_and_metadata(tmp_path, gray_weights):
    src = tmp_path / "zcyx.tif"
    vol = np.stack([blobs((4, 10, 11), seed=s, peak=250) for s in range(2)], 1).astype(np.uint8)  # Z, C, Y, X
    imagej_stack(src, vol, "ZCYX", spacing=1.0)
    out = tmp_path / "out"
    done = cli(str(src), "--isotropic", "--out", str(out), "--model", gray_weights)
    assert done.returncode == 0, done.stdout + done.stderr
    with tifffile.TiffFile(out / "zcyx.tif") as tif:
        data = tif.asarray()
        assert tif.series[0].axes == "ZCYX" and tif.imagej_metadata["spacing"] == pytest.approx(0.5)
        assert x_resolution(tif) == pytest.approx(2.0)
    assert data.shape == (7, 2, 10, 11) and data.dtype == np.uint8
    for c in range(2):  # each channel is its own volume, in the file's own plane order
        np.testing.assert_array_equal(data[:, c], isotropic(vol[:, c], (1.0, 0.5, 0.5), model=gray_weights, device="cpu"))


def test_tzcyx_float_stack_with_a_target_z_step(tmp_path, gray_weights):
    src = tmp_path / "tzcyx.tif"
    vol = np.stack([np.stack([blobs((3, 8, 9), seed=2 * t + c) for c in range(2)], 1) for t in range(2)]).astype(np.float32)
    imagej_stack(src, vol, "TZCYX", spacing=2.0)
    out = tmp_path / "out"
    assert batch.main([str(src), "--isotropic", "--target", "0.8", "--out", str(out), "--model", gray_weights]) == 0
    info = read_info(out / "tzcyx.tif")
    assert info.axes == "TZCYX" and info.shape == (2, 6, 2, 8, 9) and info.dtype == np.float32  # floor(4 / 0.8) + 1
    assert info.z_spacing == pytest.approx(0.8) and info.pixel_size == pytest.approx((0.5, 0.5))
    data = tifffile.imread(out / "tzcyx.tif")
    expected = isotropic(vol[1, :, 0], (2.0, 0.5, 0.5), 0.8, model=gray_weights, device="cpu")
    np.testing.assert_allclose(data[1, :, 0], expected, rtol=1e-6)


def test_ome_stack_uses_and_writes_physical_size_z(tmp_path, gray_weights):
    src = tmp_path / "s.ome.tif"
    vol = blobs((4, 10, 12)).astype(np.uint16)
    tifffile.imwrite(src, vol, ome=True, metadata={"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeX": 0.5,
                                                   "PhysicalSizeY": 0.5})
    out = tmp_path / "out"
    assert batch.main([str(src), "--isotropic", "--out", str(out), "--model", gray_weights]) == 0
    info = read_info(out / "s.ome.tif")
    assert info.kind == "ome" and info.shape == (13, 10, 12)
    assert info.z_spacing == pytest.approx(0.5) and info.pixel_size == pytest.approx((0.5, 0.5))


def test_a_file_without_z_calibration_fails_naming_it_and_z_step_fixes_it(tmp_path, gray_weights):
    src = tmp_path / "uncalibrated.tif"
    vol = imagej_stack(src, blobs((4, 12, 12)).astype(np.uint16), "ZYX")  # pixel size, but no Z spacing
    out = tmp_path / "out"
    done = cli(str(src), "--isotropic", "--out", str(out), "--model", gray_weights)
    assert done.returncode == 1
    assert "uncalibrated.tif has no Z calibration" in done.stdout and "--z-step" in done.stdout
    assert not out.exists()
    done = cli(str(src), "--isotropic", "--z-step", "2", "--out", str(out), "--model", gray_weights)
    assert done.returncode == 0, done.stdout + done.stderr
    with tifffile.TiffFile(out / "uncalibrated.tif") as tif:
        assert tif.series[0].shape == (13, 12, 12) and tif.imagej_metadata["spacing"] == pytest.approx(0.5)
        np.testing.assert_array_equal(tif.asarray(), isotropic(vol, (2.0, 0.5, 0.5), model=gray_weights, device="cpu"))


def test_a_stack_that_is_isotropic_already_is_refused_unless_a_target_is_given(tmp_path, gray_weights, capsys):
    src = tmp_path / "fine.tif"
    imagej_stack(src, blobs((3, 8, 8)).astype(np.uint16), "ZYX", spacing=0.4)  # finer in Z than in XY (0.5)
    out = tmp_path / "out"
    assert batch.main([str(src), "--isotropic", "--out", str(out), "--model", gray_weights]) == 1
    assert "isotropic already" in capsys.readouterr().out
    assert batch.main([str(src), "--isotropic", "--target", "0.2", "--out", str(out), "--model", gray_weights]) == 0
    assert read_info(out / "fine.tif").shape == (5, 8, 8)


def test_z_step_overrides_the_files_own(tmp_path, gray_weights):
    src = tmp_path / "a.tif"
    imagej_stack(src, blobs((4, 12, 12)).astype(np.uint16), "ZYX", spacing=1.0)
    out = tmp_path / "out"
    assert batch.main([str(src), "--isotropic", "--z-step", "1.5", "--out", str(out), "--model", gray_weights]) == 0
    assert read_info(out / "a.tif").shape == (10, 12, 12)  # floor(3 * 1.5 / 0.5) + 1, not 7


def test_2d_and_non_tiff_inputs_fail_clearly_and_the_batch_goes_on(tmp_path, gray_weights, capsys):
    from PIL import Image

    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((8, 8), np.uint16))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "photo.png")
    imagej_stack(tmp_path / "good.tif", blobs((3, 8, 8)).astype(np.uint16), "ZYX", spacing=1.0)
    assert batch.main([str(tmp_path), "--isotropic", "--out", str(tmp_path / "out"), "--model", gray_weights]) == 1
    text = capsys.readouterr().out
    assert re.search(r"flat.tif +failed .*flat.tif: axes 'YX' have no Z axis", text), text
    assert re.search(r"photo.png +failed .*photo.png: --isotropic needs a TIFF Z stack", text), text
    assert "1 done, 0 skipped, 2 failed" in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.tif"]


@pytest.mark.parametrize("argv, message", [(["--scale", "2", "--z-step", "1"], "--isotropic"),
                                           (["--scale", "2", "--isotropic"], "not allowed with"),
                                           (["--isotropic", "--target", "0"], "--target"),
                                           (["--scale", "2", "--adapt-steps", "5"], "--isotropic"),
                                           (["--scale", "2", "--fusion", "max"], "--isotropic"),
                                           (["--isotropic", "--axial-sigma", "1"], "--adapt-steps"),
                                           (["--isotropic", "--save-model", "m.safetensors"], "--adapt-steps"),
                                           (["--isotropic", "--adapt-steps", "-1"], "--adapt-steps")])
def test_option_mistakes_are_refused_before_anything_is_created(tmp_path, gray_weights, argv, message):
    src = tmp_path / "a.tif"
    imagej_stack(src, blobs((3, 8, 8)).astype(np.uint16), "ZYX", spacing=1.0)
    done = cli(str(src), *argv, "--out", str(tmp_path / "out"), "--model", gray_weights)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_rerun_skips_the_same_settings_and_refuses_other_isotropic_settings(tmp_path, gray_weights, capsys):
    src = tmp_path / "a.tif"
    imagej_stack(src, blobs((4, 12, 12)).astype(np.uint16), "ZYX", spacing=1.5)
    out = tmp_path / "out"
    argv = [str(src), "--isotropic", "--out", str(out), "--model", gray_weights]
    assert batch.main(argv) == 0
    before = (out / "a.tif").read_bytes()
    capsys.readouterr()
    assert batch.main(argv) == 0
    assert "0 done, 1 skipped, 0 failed" in capsys.readouterr().out
    for other in (["--target", "0.75"], ["--z-step", "1"], ["--consistency", "1"]):
        assert batch.main(argv + other) == 1, other
        text = capsys.readouterr().out
        assert "made with other settings" in text and "--overwrite" in text, text
        assert ("isotropic Z resampling" if other[0] != "--consistency" else "data consistency") in text
    assert (out / "a.tif").read_bytes() == before  # the old output is kept
    # a plane-wise run into the same folder is other work too
    assert batch.main([str(src), "--scale", "2", "--out", str(out), "--model", gray_weights]) == 1
    assert "isotropic Z resampling" in capsys.readouterr().out
    assert batch.main(argv + ["--target", "0.75", "--overwrite"]) == 0
    with tifffile.TiffFile(out / "a.tif") as tif:
        assert tif.series[0].shape == (7, 12, 12) and tif.imagej_metadata["spacing"] == pytest.approx(0.75)


def test_an_interrupted_file_resumes_at_its_next_volume(tmp_path, gray_weights, monkeypatch):
    src = tmp_path / "t.tif"
    vol = imagej_stack(src, np.stack([blobs((3, 10, 10), seed=s) for s in range(3)]).astype(np.uint16), "TZYX",
                       spacing=1.0)
    out = tmp_path / "out"
    settings = batch.Settings(out, RunSettings(model=gray_weights, device="cpu", consistency=0), isotropic=True)
    calls = []

    def stop_after_two(n):
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batch.process_file(src, settings, progress=stop_after_two)
    partials = list(out.glob(".t.tif.*.partial"))
    assert len(partials) == 1 and not (out / "t.tif").exists()
    import diinn_napari.isotropic as library

    computed = []
    real = library.isotropic
    monkeypatch.setattr(library, "isotropic", lambda volume, *a, **k: computed.append(volume.shape) or real(volume, *a, **k))
    result = batch.process_file(src, settings)
    assert result.status == "done" and result.message == "resumed at volume 3 of 3", result
    assert computed == [(3, 10, 10)] and not list(out.glob(".t.tif.*"))  # the last volume only
    data = tifffile.imread(out / "t.tif")
    assert data.shape == (3, 5, 10, 10)
    for t in range(3):
        np.testing.assert_array_equal(data[t], isotropic(vol[t], (1.0, 0.5, 0.5), model=gray_weights, device="cpu"))
    assert json.loads(json.dumps(read_record(out / "t.tif")))["isotropic"]["z_planes"] == [3, 5]


def test_ome_z_step_in_another_unit_than_the_pixel_size_is_converted(tmp_path, gray_weights):
    src = tmp_path / "nm.ome.tif"
    tifffile.imwrite(src, blobs((3, 8, 8)).astype(np.uint16), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 1500.0, "PhysicalSizeZUnit": "nm",
                               "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.5,
                               "PhysicalSizeYUnit": "µm"})
    assert read_info(src).z_spacing == pytest.approx(1.5)  # in µm, the unit of the pixel size
    out = tmp_path / "out"
    assert batch.main([str(src), "--isotropic", "--out", str(out), "--model", gray_weights]) == 0
    info = read_info(out / "nm.ome.tif")
    assert info.shape == (7, 8, 8) and info.z_spacing == pytest.approx(0.5) and info.unit == "µm"


# ---- adaptation to the stack (--adapt-steps) --------------------------------------------------------
def test_adapt_steps_fine_tune_on_the_stack_are_recorded_and_the_weights_saved(tmp_path, gray_weights):
    from diinn_napari.isotropic_plan import default_axial_sigma
    from diinn_napari.weights import load_weights, read_metadata

    src = tmp_path / "zyx.tif"
    vol = imagej_stack(src, blobs((5, 24, 26)).astype(np.uint16), "ZYX", spacing=1.5)
    out, saved = tmp_path / "out", tmp_path / "adapted.safetensors"
    argv = [str(src), "--isotropic", "--adapt-steps", "2", "--save-model", str(saved), "--out", str(out),
            "--model", gray_weights]
    done = cli(*argv)
    assert done.returncode == 0, done.stdout + done.stderr
    record = read_record(out / "zyx.tif")
    assert record["isotropic"]["adapt"] == {"steps": 2, "axial_sigma": pytest.approx(default_axial_sigma(3.0)), "seed": 0}
    assert read_metadata(saved)["adapted_on"] == "zyx.tif"
    adapted = load_weights(saved)
    np.testing.assert_array_equal(tifffile.imread(out / "zyx.tif"),
                                  isotropic(vol, (1.5, 0.5, 0.5), model=adapted, device="cpu"))
    assert not list(out.glob(".*")), "the partial file and its adapted weights are gone"
    done = cli(*argv)
    assert done.returncode == 0 and "0 done, 1 skipped, 0 failed" in done.stdout, done.stdout
    done = cli(*[a if a != "2" else "3" for a in argv])
    assert done.returncode == 1 and "isotropic Z resampling" in done.stdout and "--overwrite" in done.stdout


def test_a_stack_interrupted_after_adaptation_resumes_with_the_same_adapted_model(tmp_path, gray_weights, monkeypatch):
    from diinn_napari.weights import load_weights

    src = tmp_path / "t.tif"
    vol = imagej_stack(src, np.stack([blobs((3, 24, 24), seed=s) for s in range(2)]).astype(np.uint16), "TZYX",
                       spacing=1.0)
    out, saved = tmp_path / "out", tmp_path / "models"
    settings = batch.Settings(out, RunSettings(model=gray_weights, device="cpu", consistency=0), isotropic=True,
                              adapt_steps=2, save_model=saved)

    def stop_after_one_volume(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batch.process_file(src, settings, progress=stop_after_one_volume)
    kept = list(out.glob(".t.tif.*.partial.safetensors"))
    assert len(kept) == 1 and not (out / "t.tif").exists()
    adapted = kept[0].read_bytes()
    import diinn_napari.adapt

    monkeypatch.setattr(diinn_napari.adapt, "adapt", lambda *a, **k: pytest.fail("adapted again on resume"))
    result = batch.process_file(src, settings)
    assert result.status == "done" and result.message == "resumed at volume 2 of 2", result
    assert (saved / "t.safetensors").read_bytes() == adapted
    model = load_weights(saved / "t.safetensors")
    data = tifffile.imread(out / "t.tif")
    for t in range(2):
        np.testing.assert_array_equal(data[t], isotropic(vol[t], (1.0, 0.5, 0.5), model=model, device="cpu"))


def test_one_save_model_file_for_several_stacks_is_refused(tmp_path, gray_weights):
    for name in ("a.tif", "b.tif"):
        imagej_stack(tmp_path / name, blobs((3, 8, 8)).astype(np.uint16), "ZYX", spacing=1.0)
    done = cli(str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--isotropic", "--adapt-steps", "1", "--save-model",
               str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "out"), "--model", gray_weights)
    assert done.returncode == 2 and "give a folder" in done.stderr, done.stderr


def test_python_m_isotropic_is_batch_isotropic(tmp_path, gray_weights):
    src = tmp_path / "zyx.tif"
    imagej_stack(src, blobs((4, 12, 14)).astype(np.uint16), "ZYX", spacing=1.5)
    alias = subprocess.run([sys.executable, "-m", "diinn_napari.isotropic", str(src), "--out", str(tmp_path / "a"),
                            "--model", gray_weights], capture_output=True, text=True, timeout=300)
    assert alias.returncode == 0, alias.stdout + alias.stderr
    direct = cli(str(src), "--isotropic", "--out", str(tmp_path / "b"), "--model", gray_weights)
    assert direct.returncode == 0, direct.stdout + direct.stderr
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a" / "zyx.tif"), tifffile.imread(tmp_path / "b" / "zyx.tif"))
    assert read_record(tmp_path / "a" / "zyx.tif") == read_record(tmp_path / "b" / "zyx.tif")
