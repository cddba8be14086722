"""TIFF layouts NGFF stores another way, written as OME-Zarr by the batch command: the bands of a multiband TIFF
as the c axis with labelled, windowed omero channels, and axes out of NGFF order (ZCYX, CTYX) permuted into
t, c, z, y, x with their metadata; the same pixels as the TIFF output, reruns skip, a killed run resumes."""

import signal
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile

from test_omezarr import read_client
from test_omezarr_resume import batch_command, interrupt_after, ledger_blocks, levels_of, partial_stores

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def batch(src, out, weights, *extra, scale="2"):
    """The batch command in a subprocess (as a user runs it); its completed process, checked for success."""
    command = batch_command(src, out, weights, *extra)
    command[command.index("--scale") + 1] = scale
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def gdal_descriptions(names: dict[int, str]) -> str:
    """A GDAL_METADATA tag naming some bands (0-based sample number: description), as GDAL writes it."""
    root = ET.Element("GDALMetadata")
    for sample, name in names.items():
        ET.SubElement(root, "Item", name="DESCRIPTION", sample=str(sample), role="description").text = name
    return ET.tostring(root, encoding="unicode")


@pytest.mark.parametrize("bands, described, labels", [
    (4, {0: "red", 3: "nir"}, ["red", "band 2", "band 3", "nir"]),
    (2, {}, ["band 1", "band 2"]),
])
def test_multiband_tiff_to_ome_zarr_stores_bands_as_c_with_labels_and_windows_and_equals_the_tiff_output(
        tmp_path, rng, gray_weights, bands, described, labels):
    src = tmp_path / "scene.tif"  # pixel-interleaved minisblack samples (YXS): bands, not colour
    tags = [(42112, "s", 0, gdal_descriptions(described), True)] if described else []
    tifffile.imwrite(src, rng.integers(0, 4000, (32, 40, bands), dtype=np.uint16), photometric="minisblack",
                     planarconfig="contig", extratags=tags)
    batch(src, tmp_path / "zarr", gray_weights, "--format", "ome-zarr")
    levels, meta, attrs = read_client(tmp_path / "zarr" / "scene.ome.zarr")
    assert [a["name"] for a in meta["axes"]] == ["c", "y", "x"]
    assert levels[0].shape == (bands, 64, 80) and levels[0].dtype == np.uint16
    channels = attrs["ome"]["omero"]["channels"]
    assert [c["label"] for c in channels] == labels
    assert meta["channel_names"] == labels  # ome-zarr-py's reader names the channels by them
    assert attrs["ome"]["multiscales"][0]["name"] == "scene.ome.zarr"  # the output's name, not its partial store's
    for k, channel in enumerate(channels):  # a contrast per band: the band's range in the smallest level
        assert channel["window"] == {"min": 0, "max": 65535, "start": int(levels[-1][k].min()),
                                     "end": int(levels[-1][k].max())}
    # each band the same pixels as the TIFF output of the same run (the engine upscales every band as a gray plane)
    batch(src, tmp_path / "tif", gray_weights)
    tiff = tifffile.imread(tmp_path / "tif" / "scene.tif")
    assert tiff.shape == (64, 80, bands)
    for k in range(bands):
        np.testing.assert_array_equal(levels[0][k], tiff[..., k])
    again = batch(src, tmp_path / "zarr", gray_weights, "--format", "ome-zarr")
    assert "output exists, same settings, pixels verified" in again.stdout


def test_zcyx_ome_tiff_to_ome_zarr_is_stored_as_czyx_with_its_scale_units_and_channels(tmp_path, rng, gray_weights):
    src = tmp_path / "stack.ome.tif"
    data = rng.integers(0, 250, (3, 2, 20, 24), dtype=np.uint8)  # Z, C, Y, X: not NGFF's c, z order
    tifffile.imwrite(src, data, ome=True, metadata={"axes": "ZCYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                                                    "PhysicalSizeZ": 2.0, "Channel": {"Name": ["DAPI", "GFP"]}})
    batch(src, tmp_path / "zarr", gray_weights, "--format", "ome-zarr")
    out = tmp_path / "zarr" / "stack.ome.zarr"
    levels, meta, attrs = read_client(out)
    assert [(a["name"], a.get("unit")) for a in meta["axes"]] == [
        ("c", None), ("z", "micrometer"), ("y", "micrometer"), ("x", "micrometer")]
    assert levels[0].shape == (2, 3, 40, 48)
    scale, translation = meta["coordinateTransformations"][0]
    assert scale["scale"] == pytest.approx([1.0, 2.0, 0.25, 0.25])  # the Z step on z, not on c
    assert translation["translation"] == pytest.approx([0.0, 0.0, -0.125, -0.125])
    assert [c["label"] for c in attrs["ome"]["omero"]["channels"]] == ["DAPI", "GFP"]
    # plane (z, c) of the TIFF output is plane (c, z) of the store
    batch(src, tmp_path / "tif", gray_weights)
    tiff = tifffile.imread(tmp_path / "tif" / "stack.ome.tif")
    assert tiff.shape == (3, 2, 40, 48)
    np.testing.assert_array_equal(levels[0], np.moveaxis(tiff, 0, 1))
    again = batch(src, tmp_path / "zarr", gray_weights, "--format", "ome-zarr")
    assert "output exists, same settings, pixels verified" in again.stdout


def test_ctyx_tiff_to_ome_zarr_is_stored_as_tcyx(tmp_path, rng, gray_weights):
    src = tmp_path / "movie.tif"
    data = rng.integers(0, 4000, (2, 3, 16, 20), dtype=np.uint16)  # C, T, Y, X
    tifffile.imwrite(src, data, metadata={"axes": "CTYX"})
    batch(src, tmp_path / "zarr", gray_weights, "--format", "ome-zarr")
    levels, meta, _ = read_client(tmp_path / "zarr" / "movie.ome.zarr")
    assert [a["name"] for a in meta["axes"]] == ["t", "c", "y", "x"] and levels[0].shape == (3, 2, 32, 40)
    batch(src, tmp_path / "tif", gray_weights)
    np.testing.assert_array_equal(levels[0], np.moveaxis(tifffile.imread(tmp_path / "tif" / "movie.tif"), 0, 1))


def test_killed_zcyx_batch_resumes_block_by_block_and_equals_a_clean_run(tmp_path, rng, gray_weights):
    src = tmp_path / "stack.tif"  # (Z, C) = (2, 2) planes of 96 x 96: at x4 one 384 x 384 block per plane
    tifffile.imwrite(src, rng.integers(0, 4000, (2, 2, 96, 96), dtype=np.uint16), metadata={"axes": "ZCYX"})
    clean_out, out = tmp_path / "clean", tmp_path / "out"
    batch(src, clean_out, gray_weights, "--format", "ome-zarr", scale="4")
    clean = levels_of(clean_out / "stack.ome.zarr")
    assert clean[0].shape == (2, 2, 384, 384)

    code = interrupt_after(batch_command(src, out, gray_weights, "--format", "ome-zarr"), out, 1, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (out / "stack.ome.zarr").exists()
    assert 1 <= ledger_blocks(out) < 4

    again = batch(src, out, gray_weights, "--format", "ome-zarr", scale="4")
    assert "resumed at block" in again.stdout
    assert not partial_stores(out)
    resumed = levels_of(out / "stack.ome.zarr")
    assert len(resumed) == len(clean)
    for a, b in zip(resumed, clean):
        np.testing.assert_array_equal(a, b)  # bit for bit, every block at its permuted place


def test_zcyx_tiff_on_a_local_cluster_equals_a_single_process_run_bit_for_bit(tmp_path, rng, gray_weights):
    distributed = pytest.importorskip("distributed")
    from diinn_napari import RunSettings
    from diinn_napari import batch as library

    src = tmp_path / "stack.tif"  # (Z, C) = (2, 3) planes: at x2 each 600 x 80 plane is two block groups
    tifffile.imwrite(src, rng.integers(0, 4000, (2, 3, 300, 40), dtype=np.uint16), metadata={"axes": "ZCYX"})

    def settings(out):
        return library.Settings(out, RunSettings(scale=2, model=gray_weights, threads=1), out_format="ome-zarr",
                                show_progress=False)

    assert [r.status for r in library.run_batch([src], settings(tmp_path / "single"))] == ["done"]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        results = library.run_batch([src], settings(tmp_path / "cluster"), scheduler=cluster.scheduler_address)
    assert [r.status for r in results] == ["done"], results[0].message
    expected = levels_of(tmp_path / "single" / "stack.ome.zarr")
    found = levels_of(tmp_path / "cluster" / "stack.ome.zarr")
    assert expected[0].shape == (3, 2, 600, 80) and len(found) == len(expected)
    for a, b in zip(found, expected):
        np.testing.assert_array_equal(a, b)  # every level, each plane where the permutation puts it


def test_float_band_windows_skip_nan_and_an_all_nan_band_gets_none(tmp_path, rng):
    from pathlib import Path

    from diinn_napari.io import ImageInfo
    from diinn_napari.io.omezarr import OME_ZARR

    planes = rng.normal(5.0, 2.0, (3, 24, 20)).astype(np.float32)
    planes[0, :4] = np.nan  # NaN pixels (no data) do not widen or poison the range
    planes[2] = np.nan  # a band without a single value
    info = ImageInfo(Path(tmp_path / "f.ome.zarr"), "ome-zarr", "CYX", planes.shape, np.float32,
                     channel_names=["a", "b", "c"])
    OME_ZARR.write(info.path, info, iter(planes))
    channels = read_client(info.path)[2]["ome"]["omero"]["channels"]
    for k in (0, 1):
        lo, hi = float(np.nanmin(planes[k])), float(np.nanmax(planes[k]))  # one level: the smallest is level 0
        assert channels[k]["window"] == {"min": lo, "max": hi, "start": lo, "end": hi}
    assert "window" not in channels[2]
