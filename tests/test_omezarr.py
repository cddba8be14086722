"""OME-Zarr in and out: NGFF 0.4 / 0.5 inputs, bioformats2raw containers, multiscale outputs read by ome-zarr-py."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr.writer import write_image

from diinn_napari import batch, io
from diinn_napari.io.omezarr import PyramidWriter, halve, pyramid_shapes
from diinn_napari.settings import overlay_placement

AXES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def make_ngff(path, data, axes="czyx", version="0.5", scale=None, translation=None, channels=None, unit="micrometer"):
    """An OME-Zarr image written by ome-zarr-py (the reference implementation), with a translation and omero."""
    fmt = FormatV05() if version == "0.5" else FormatV04()
    root = zarr.open_group(str(path), mode="w", zarr_format=3 if version == "0.5" else 2)
    axis_list = [{"name": a, "type": AXES[a], **({"unit": unit} if a in "zyx" else {})} for a in axes]
    scale = scale or [1.0] * len(axes)
    translation = translation or [0.0] * len(axes)
    write_image(data, root, axes=[a["name"] for a in axis_list], fmt=fmt, scale_factors=[2])
    # ome-zarr-py writes unit scales and no units here: the image's own transforms and units go in by hand
    attrs = root.attrs.asdict()
    ome = attrs["ome"] if version == "0.5" else attrs
    multiscale = ome["multiscales"][0]
    multiscale["axes"] = axis_list
    for k, dataset in enumerate(multiscale["datasets"]):
        level_scale = scale[:-2] + [scale[-2] * 2 ** k, scale[-1] * 2 ** k]
        dataset["coordinateTransformations"] = [{"type": "scale", "scale": level_scale},
                                                {"type": "translation", "translation": translation}]
    root.attrs.update(attrs)
    if channels:
        omero = {"channels": [{"label": c, "color": "FFFFFF", "active": True,
                               "window": {"start": 0, "end": 1000, "min": 0, "max": 65535}} for c in channels]}
        if version == "0.5":
            attrs = dict(root.attrs["ome"])
            attrs["omero"] = omero
            root.attrs["ome"] = attrs
        else:
            root.attrs["omero"] = omero
    return path


def rechunk_level0(path, chunks):
    """Rewrite level 0 of the OME-Zarr image at ``path`` with ``chunks`` (outputs are chunked like their input)."""
    group = zarr.open_group(str(path), mode="r+")
    name = group.attrs["ome"]["multiscales"][0]["datasets"][0]["path"]
    level0 = np.asarray(group[name][...])
    group.create_array(name, shape=level0.shape, dtype=level0.dtype, chunks=chunks, fill_value=0,
                       overwrite=True)[...] = level0
    return path


def read_client(path):
    """The image as ome-zarr-py's reader (the client) sees it: (levels as numpy, multiscale metadata, omero)."""
    nodes = list(Reader(parse_url(str(path)))())
    image = nodes[0]
    levels = [np.asarray(level) for level in image.data]
    return levels, image.metadata, zarr.open_group(str(path), mode="r").attrs.asdict()


def run(src, out, model, *extra):
    return batch.main([str(src), "--scale", "2", "--out", str(out), "--model", str(model), *extra])


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ngff_input_level0_axes_scale_translation_units_channels(tmp_path, rng, version):
    data = rng.integers(0, 4000, (2, 3, 20, 24), dtype=np.uint16)
    src = make_ngff(tmp_path / "img.ome.zarr", data, version=version, scale=[1.0, 2.0, 0.5, 0.25],
                    translation=[0.0, 1.0, 10.0, 20.0], channels=["DAPI", "GFP"])
    assert io.is_image(src) and batch.collect_inputs([str(src)]) == [src.resolve()]
    info = io.read_info(src)
    assert (info.kind, info.axes, info.shape, info.dtype) == ("ome-zarr", "CZYX", (2, 3, 20, 24), np.uint16)
    assert info.pixel_size == (0.5, 0.25) and info.unit == "µm" and info.z_spacing == 2.0
    assert info.channel_names == ["DAPI", "GFP"]
    assert info.metadata["ngff"]["translation"] == [0.0, 1.0, 10.0, 20.0]
    with io.open_planes(info) as planes:
        np.testing.assert_array_equal(planes[(1, 2)], data[1, 2])


@pytest.mark.parametrize("axes", ["yx", "zyx", "tyx", "cyx", "tczyx"])
def test_every_axis_subset_reads_and_upscales(tmp_path, rng, gray_weights, axes):
    shape = {"t": 2, "c": 2, "z": 2, "y": 10, "x": 12}
    data = rng.integers(0, 255, tuple(shape[a] for a in axes), dtype=np.uint8)
    src = make_ngff(tmp_path / f"{axes}.ome.zarr", data, axes=axes)
    assert run(src, tmp_path / "out", gray_weights) == 0
    levels, meta, _ = read_client(tmp_path / "out" / f"{axes}.ome.zarr")
    assert levels[0].shape == data.shape[:-2] + (20, 24)
    assert [a["name"] for a in meta["axes"]] == list(axes)


def test_bad_axes_are_refused_with_the_reason(tmp_path):
    root = zarr.open_group(str(tmp_path / "bad.zarr"), mode="w", zarr_format=2)
    root.create_array("0", shape=(4, 5, 6), dtype="u1")
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "y"}, {"name": "x"}, {"name": "z"}],
                                  "datasets": [{"path": "0"}]}]
    with pytest.raises(ValueError, match="ending in y, x"):
        io.read_info(tmp_path / "bad.zarr")


def test_output_is_multiscale_with_real_ratio_transforms_units_channels_record(tmp_path, rng, gray_weights):
    data = rng.integers(0, 4000, (2, 140, 139), dtype=np.uint16)
    src = make_ngff(tmp_path / "big.ome.zarr", data, axes="cyx", scale=[1.0, 0.5, 0.4], translation=[0.0, 10.0, 20.0],
                    channels=["DAPI", "GFP"])
    assert batch.main([str(src), "--scale", "3.7", "--out", str(tmp_path / "out"), "--model", gray_weights]) == 0
    out = tmp_path / "out" / "big.ome.zarr"
    levels, meta, attrs = read_client(out)
    H, W = round(140 * 3.7), round(139 * 3.7)
    assert [lv.shape for lv in levels] == [(2, h, w) for h, w in pyramid_shapes((H, W))]
    assert max(levels[-1].shape[-2:]) <= 512 and len(levels) == 2
    # each level: the 2 x 2 mean of the one above (made as the planes arrived, not resampled from the file)
    np.testing.assert_array_equal(levels[1], np.rint(halve(levels[0])).astype(np.uint16))
    # level 0's transform: the real size ratio and napari's pixel-centre rule
    scale, translation = overlay_placement([1.0, 0.5, 0.4], [0.0, 10.0, 20.0], [1.0, H / 140, W / 139])
    transforms = meta["coordinateTransformations"][0]
    assert transforms[0]["scale"] == pytest.approx(scale) and transforms[1]["translation"] == pytest.approx(translation)
    assert [a.get("unit") for a in meta["axes"]] == [None, "micrometer", "micrometer"]
    assert [c["label"] for c in attrs["ome"]["omero"]["channels"]] == ["DAPI", "GFP"]
    assert attrs["ome"]["version"] == "0.5"
    assert attrs["diinn-napari"]["output_yx"] == [H, W] and io.read_record(out)["output_yx"] == [H, W]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary left


def test_ngff_04_input_gives_04_output(tmp_path, rng, gray_weights):
    src = make_ngff(tmp_path / "v4.ome.zarr", rng.integers(0, 255, (12, 10), dtype=np.uint8), axes="yx", version="0.4")
    assert run(src, tmp_path / "out", gray_weights) == 0
    out = tmp_path / "out" / "v4.ome.zarr"
    assert (out / ".zattrs").is_file() and json.loads((out / ".zattrs").read_text())["multiscales"][0]["version"] == "0.4"
    levels, _, _ = read_client(out)
    assert levels[0].shape == (24, 20)


def test_tiff_to_ome_zarr_and_back(tmp_path, rng, gray_weights):
    data = rng.integers(0, 4000, (3, 16, 18), dtype=np.uint16)
    src = tmp_path / "stack.ome.tif"
    tifffile.imwrite(src, data, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2,
                                                    "PhysicalSizeZ": 1.5, "PhysicalSizeXUnit": "µm",
                                                    "PhysicalSizeYUnit": "µm"})
    assert run(src, tmp_path / "zarr", gray_weights, "--format", "ome-zarr") == 0
    out = tmp_path / "zarr" / "stack.ome.zarr"
    levels, meta, _ = read_client(out)
    assert levels[0].shape == (3, 32, 36)
    transforms = meta["coordinateTransformations"][0]
    assert transforms[0]["scale"] == pytest.approx([1.5, 0.1, 0.1])
    assert transforms[1]["translation"] == pytest.approx([0.0, -0.05, -0.05])  # pixel centres stay on the source grid
    assert [a.get("unit") for a in meta["axes"]] == ["micrometer"] * 3
    # the same planes as a TIFF output of the same run
    assert run(src, tmp_path / "tif", gray_weights) == 0
    np.testing.assert_array_equal(levels[0], tifffile.imread(tmp_path / "tif" / "stack.ome.tif"))
    # and back: OME-Zarr in, OME-TIFF out, physical sizes kept
    assert run(out, tmp_path / "back", gray_weights, "--format", "tiff") == 0
    info = io.read_info(tmp_path / "back" / "stack.ome.tif")
    assert info.kind == "ome" and info.shape == (3, 64, 72)
    assert info.pixel_size == pytest.approx((0.05, 0.05)) and info.z_spacing == pytest.approx(1.5) and info.unit == "µm"


def test_bioformats2raw_container_processes_each_image(tmp_path, rng, gray_weights):
    container = tmp_path / "plate.zarr"
    root = zarr.open_group(str(container), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    images = [rng.integers(0, 255, (10, 12), dtype=np.uint8), rng.integers(0, 255, (2, 8, 9), dtype=np.uint8)]
    make_ngff(container / "0", images[0], axes="yx", version="0.4")
    make_ngff(container / "1", images[1], axes="zyx", version="0.4")
    ome = zarr.open_group(str(container / "OME"), mode="w", zarr_format=2)
    ome.attrs["series"] = ["0", "1"]
    assert batch.collect_inputs([str(container)]) == [container.resolve() / "0", container.resolve() / "1"]
    assert run(container, tmp_path / "out", gray_weights) == 0
    assert read_client(tmp_path / "out" / "plate_0.ome.zarr")[0][0].shape == (20, 24)
    assert read_client(tmp_path / "out" / "plate_1.ome.zarr")[0][0].shape == (2, 16, 18)
    with pytest.raises(ValueError, match="bioformats2raw container"):
        io.read_info(container)


def test_rerun_skips_same_settings_and_refuses_other_settings(tmp_path, rng, gray_weights, other_gray_weights, capsys):
    src = make_ngff(tmp_path / "r.ome.zarr", rng.integers(0, 255, (2, 10, 12), dtype=np.uint8), axes="zyx")
    assert run(src, tmp_path / "out", gray_weights) == 0
    assert run(src, tmp_path / "out", gray_weights) == 0
    assert "skipped" in capsys.readouterr().out
    assert run(src, tmp_path / "out", other_gray_weights) == 1
    assert "made with other settings (model:" in capsys.readouterr().out


def test_cli_in_a_subprocess_writes_ome_zarr(tmp_path, rng, gray_weights):
    src = make_ngff(tmp_path / "s.ome.zarr", rng.integers(0, 255, (2, 10, 12), dtype=np.uint8), axes="zyx")
    done = subprocess.run([sys.executable, "-m", "diinn_napari.batch", str(src), "--scale", "2", "--out",
                           str(tmp_path / "out"), "--model", gray_weights], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert read_client(tmp_path / "out" / "s.ome.zarr")[0][0].shape == (2, 20, 24)


def test_pyramid_writer_regions_equal_planes(tmp_path, rng):
    info = io.ImageInfo(tmp_path / "a.ome.zarr", "ome-zarr", "YX", (1200, 1000), np.dtype(np.uint16))
    plane = rng.integers(0, 60000, (1200, 1000), dtype=np.uint16)
    whole = PyramidWriter.create(tmp_path / "a.ome.zarr", info, chunks=(256, 256))
    whole.write_plane((), plane)
    blocks = PyramidWriter.create(tmp_path / "b.ome.zarr", info, chunks=(256, 256))
    for y in range(0, 1200, 256):
        for x in range(0, 1000, 256):
            blocks.write_region((), y, x, plane[y:y + 256, x:x + 256])
    for a, b in zip(whole.arrays, blocks.arrays):
        np.testing.assert_array_equal(a[...], b[...])


def test_pyramid_writes_encode_in_the_writing_thread_and_equal_zarrs_own_inside_an_event_loop(tmp_path, rng,
                                                                                              monkeypatch):
    import asyncio
    import threading

    from zarr.codecs import ZstdCodec

    encoders = []
    encode = ZstdCodec._encode_sync
    monkeypatch.setattr(ZstdCodec, "_encode_sync",
                        lambda self, *args: (encoders.append(threading.current_thread()), encode(self, *args))[1])
    info = io.ImageInfo(tmp_path / "a.ome.zarr", "ome-zarr", "YX", (512, 512), np.dtype(np.uint16))
    plane = rng.integers(0, 60000, (512, 512), dtype=np.uint16)
    here = PyramidWriter.create(tmp_path / "a.ome.zarr", info, chunks=(256, 256))
    encoders.clear()
    for y in (0, 256):
        for x in (0, 256):
            here.write_region((), y, x, plane[y:y + 256, x:x + 256])
    assert encoders and set(encoders) == {threading.current_thread()}  # not zarr's pool: no arena per pool thread

    async def inside_a_loop():  # a notebook's code runs inside one: zarr's own path
        looped = PyramidWriter.create(tmp_path / "b.ome.zarr", info, chunks=(256, 256))
        looped.write_plane((), plane)
        return looped

    looped = asyncio.run(inside_a_loop())
    for a, b in zip(here.arrays, looped.arrays, strict=True):
        np.testing.assert_array_equal(a[...], b[...])
