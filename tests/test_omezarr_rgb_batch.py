"""RGB / RGBA inputs written as OME-Zarr by the batch tool and the library: colour as NGFF's c axis, a rerun
skips after the pixel checksum is verified as stored, a killed run resumes, and the store goes back to TIFF."""

import signal
import subprocess

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from diinn_napari import Engine, io, upscale
from diinn_napari.io.omezarr import halve
from diinn_napari.settings import RunSettings

from test_omezarr import read_client, run
from test_omezarr_resume import batch_command, interrupt_after, ledger_blocks, levels_of, partial_stores

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def colour_first(image: np.ndarray) -> np.ndarray:
    """(..., Y, X, S) -> (S, ..., Y, X): how an OME-Zarr image without a t axis stores its colour."""
    return np.moveaxis(image, -1, 0)


def test_rgb_tiff_stack_to_ome_zarr_stores_colour_as_c_and_equals_the_tiff_output(tmp_path, rng, rgb_weights,
                                                                                  capsys):
    src = tmp_path / "rgb.tif"
    tifffile.imwrite(src, rng.integers(0, 255, (2, 16, 18, 3), dtype=np.uint8), photometric="rgb")
    assert run(src, tmp_path / "zarr", rgb_weights, "--format", "ome-zarr") == 0
    out = tmp_path / "zarr" / "rgb.ome.zarr"
    levels, meta, attrs = read_client(out)
    assert [a["name"] for a in meta["axes"]] == ["c", "z", "y", "x"]
    assert levels[0].shape == (3, 2, 32, 36)
    assert [c["label"] for c in attrs["ome"]["omero"]["channels"]] == ["red", "green", "blue"]
    assert attrs["diinn-napari"]["model"]["file"] == "rgb.safetensors"
    # the same pixels as a TIFF output of the same run
    assert run(src, tmp_path / "tif", rgb_weights) == 0
    np.testing.assert_array_equal(levels[0], colour_first(tifffile.imread(tmp_path / "tif" / "rgb.tif")))
    capsys.readouterr()
    # a rerun skips it: the checksum it recorded is verified on the store as stored
    assert run(src, tmp_path / "zarr", rgb_weights, "--format", "ome-zarr") == 0
    assert "output exists, same settings, pixels verified" in capsys.readouterr().out


def test_rgba_png_to_ome_zarr_keeps_alpha_as_a_fourth_channel_and_reruns_skip(tmp_path, rng, rgb_weights, capsys):
    src = tmp_path / "rgba.png"
    Image.fromarray(rng.integers(0, 255, (20, 22, 4), dtype=np.uint8)).save(src)
    assert run(src, tmp_path / "zarr", rgb_weights, "--format", "ome-zarr") == 0
    assert run(src, tmp_path / "png", rgb_weights) == 0
    levels, meta, attrs = read_client(tmp_path / "zarr" / "rgba.ome.zarr")
    assert [a["name"] for a in meta["axes"]] == ["c", "y", "x"] and levels[0].shape == (4, 40, 44)
    assert [c["label"] for c in attrs["ome"]["omero"]["channels"]] == ["red", "green", "blue", "alpha"]
    np.testing.assert_array_equal(levels[0], colour_first(np.asarray(Image.open(tmp_path / "png" / "rgba.png"))))
    capsys.readouterr()
    assert run(src, tmp_path / "zarr", rgb_weights, "--format", "ome-zarr") == 0
    assert "pixels verified" in capsys.readouterr().out


def test_a_damaged_rgb_store_is_recomputed_not_skipped(tmp_path, rng, rgb_weights, capsys):
    src = tmp_path / "rgb.tif"
    tifffile.imwrite(src, rng.integers(0, 255, (16, 18, 3), dtype=np.uint8), photometric="rgb")
    assert run(src, tmp_path / "zarr", rgb_weights, "--format", "ome-zarr") == 0
    out = tmp_path / "zarr" / "rgb.ome.zarr"
    good = read_client(out)[0][0]
    level0 = zarr.open_group(str(out), mode="r+")["0"]
    level0[1, 3, 4] = int(level0[1, 3, 4]) ^ 0xFF  # one green pixel
    capsys.readouterr()
    assert run(src, tmp_path / "zarr", rgb_weights, "--format", "ome-zarr") == 0
    assert "does not match the pixel checksum" in capsys.readouterr().out
    np.testing.assert_array_equal(read_client(out)[0][0], good)


@pytest.mark.parametrize("sig", [signal.SIGKILL])
def test_killed_rgb_batch_resumes_block_by_block_and_equals_a_clean_run(tmp_path, rng, rgb_weights, sig):
    src = tmp_path / "stack.tif"  # 4 RGB planes of 96 x 96: at x4 one 384 x 384 block per plane
    tifffile.imwrite(src, rng.integers(0, 255, (4, 96, 96, 3), dtype=np.uint8), photometric="rgb")
    clean_out, out = tmp_path / "clean", tmp_path / "out"
    done = subprocess.run(batch_command(src, clean_out, rgb_weights, "--format", "ome-zarr"), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    clean = levels_of(clean_out / "stack.ome.zarr")
    assert clean[0].shape == (3, 4, 384, 384)

    code = interrupt_after(batch_command(src, out, rgb_weights, "--format", "ome-zarr"), out, 1, sig)
    assert code == -signal.SIGKILL
    assert not (out / "stack.ome.zarr").exists()
    assert 1 <= ledger_blocks(out) < 4

    again = subprocess.run(batch_command(src, out, rgb_weights, "--format", "ome-zarr"), capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resumed at block" in again.stdout
    assert not partial_stores(out)
    resumed = levels_of(out / "stack.ome.zarr")
    assert len(resumed) == len(clean)
    for a, b in zip(resumed, clean):
        np.testing.assert_array_equal(a, b)  # bit for bit
    records = [zarr.open_group(str(o / "stack.ome.zarr"), mode="r").attrs["diinn-napari"] for o in (out, clean_out)]
    assert records[0]["pixels"] == records[1]["pixels"]

    skip = subprocess.run(batch_command(src, out, rgb_weights, "--format", "ome-zarr"), capture_output=True,
                          text=True)
    assert skip.returncode == 0, skip.stdout + skip.stderr
    assert "pixels verified" in skip.stdout


def test_an_rgb_store_goes_back_to_tiff_as_its_c_axis(tmp_path, rng, rgb_weights, gray_weights):
    src = tmp_path / "rgb.tif"
    tifffile.imwrite(src, rng.integers(0, 255, (16, 18, 3), dtype=np.uint8), photometric="rgb")
    assert run(src, tmp_path / "zarr", rgb_weights, "--format", "ome-zarr") == 0
    store = tmp_path / "zarr" / "rgb.ome.zarr"
    # an OME-Zarr image has channels, not colour samples: read back, its c axis is upscaled channel by channel
    info = io.read_info(store)
    assert info.axes == "CYX" and info.channel_names == ["red", "green", "blue"] and not info.rgb
    assert run(store, tmp_path / "back", gray_weights, "--format", "tiff") == 0
    back = io.read_info(tmp_path / "back" / "rgb.ome.tif")
    assert back.kind == "ome" and back.shape == (3, 64, 72) and back.channel_names == ["red", "green", "blue"]
    # the same planes as the gray model gives each stored channel
    channels = read_client(store)[0][0]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "back" / "rgb.ome.tif"),
                                  upscale(channels, 2, model=gray_weights))


@pytest.mark.parametrize("samples", [3, 4])
def test_library_out_path_writes_rgb_as_the_c_axis(tmp_path, rng, samples):
    from conftest import tiny_model

    net = tiny_model(3)
    image = rng.integers(0, 255, (2, 30, 28, samples), dtype=np.uint8)
    eager = upscale(image, 2, model=net, rgb=True, tile_size=16)
    result = upscale(image, 2, model=net, rgb=True, tile_size=16, out=tmp_path / "u.ome.zarr")
    assert result.shape == eager.shape
    np.testing.assert_array_equal(np.asarray(result), eager)
    level0 = Engine(RunSettings(scale=2, model=net, tile_size=16)).run(image, rgb=True, out=tmp_path / "e.ome.zarr")
    np.testing.assert_array_equal(level0[...], eager)
    for path in (tmp_path / "u.ome.zarr", tmp_path / "e.ome.zarr"):
        levels, meta, attrs = read_client(path)
        assert [a["name"] for a in meta["axes"]] == ["c", "z", "y", "x"]
        np.testing.assert_array_equal(levels[0], colour_first(eager))
        assert len(attrs["ome"]["omero"]["channels"]) == samples


def test_an_rgb_image_on_a_local_cluster_equals_a_single_process_run(tmp_path, rng, rgb_weights):
    distributed = pytest.importorskip("distributed")
    from diinn_napari import batch

    src = tmp_path / "stack.tif"  # 2 RGB planes: at x4 one 512 x 512 block each, a block group each
    tifffile.imwrite(src, rng.integers(0, 255, (2, 128, 128, 3), dtype=np.uint8), photometric="rgb")

    def settings(out):
        return batch.Settings(out, RunSettings(scale=4, model=rgb_weights, threads=1), out_format="ome-zarr",
                              show_progress=False)

    single = batch.run_batch([src], settings(tmp_path / "single"))
    assert [r.status for r in single] == ["done"], single[0].message
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        results = batch.run_batch([src], settings(tmp_path / "cluster"), scheduler=cluster.scheduler_address)
    assert [r.status for r in results] == ["done"], results[0].message
    expected, found = (levels_of(tmp_path / o / "stack.ome.zarr") for o in ("single", "cluster"))
    assert found[0].shape == (3, 2, 512, 512) and len(found) == len(expected)
    for a, b in zip(found, expected):
        np.testing.assert_array_equal(a, b)
    records = [zarr.open_group(str(tmp_path / o / "stack.ome.zarr"), mode="r").attrs["diinn-napari"]
               for o in ("single", "cluster")]
    assert records[0]["pixels"] == records[1]["pixels"]
    again = batch.run_batch([src], settings(tmp_path / "cluster"))  # and a rerun in one process skips it
    assert [r.status for r in again] == ["skipped"] and "pixels verified" in again[0].message
