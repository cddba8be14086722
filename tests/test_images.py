"""The one image reader's whole-file path and the one atomic writer."""

import os
import stat

import numpy as np
import pytest
import tifffile

from diinn_napari.io import atomic_write, image_planes, read_image, read_info


@pytest.fixture
def umask():
    """A umask that differs from the common 0o022, so a wrong mode cannot pass by chance."""
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_atomic_write_gives_the_mode_of_a_plain_write(tmp_path, umask):
    plain = tmp_path / "plain.bin"
    with open(plain, "wb") as f:
        f.write(b"x")
    atomic = tmp_path / "atomic.bin"
    with atomic_write(atomic) as tmp:
        assert tmp.parent == tmp_path and tmp != atomic  # written beside the target, then renamed
        tmp.write_bytes(b"new")
    assert atomic.read_bytes() == b"new"
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic.bin", "plain.bin"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "w.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_the_trainer_state_is_written_atomically_with_plain_permissions(tmp_path, umask):
    import torch

    from diinn_napari.weights import save_weights

    from conftest import tiny_model

    path = save_weights(tiny_model(), tmp_path / "m.safetensors")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    with atomic_write(tmp_path / "m.state.pt") as tmp:
        torch.save({"step": 3}, tmp)
    assert torch.load(tmp_path / "m.state.pt", weights_only=True) == {"step": 3}
    assert stat.S_IMODE((tmp_path / "m.state.pt").stat().st_mode) == 0o666 & ~umask


def test_whole_file_and_plane_readers_agree_on_colour(tmp_path, rng):
    rgb = (rng.random((2, 20, 30, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    array, is_rgb = read_image(tmp_path / "rgb.tif")
    assert is_rgb and read_info(tmp_path / "rgb.tif").rgb
    assert np.array_equal(array, rgb)
    # RGBA: the alpha is dropped for training and evaluation
    rgba = (rng.random((20, 30, 4)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    array, is_rgb = read_image(tmp_path / "rgba.tif")
    assert is_rgb and np.array_equal(array, rgba[..., :3])
    # a gray stack: one plane per page
    gray = (rng.random((3, 20, 30)) * 4000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "gray.tif", gray, photometric="minisblack")
    array, is_rgb = read_image(tmp_path / "gray.tif")
    assert not is_rgb and not read_info(tmp_path / "gray.tif").rgb and len(image_planes(tmp_path / "gray.tif", 1)) == 3


def test_two_samples_per_pixel_are_two_bands_for_both_readers(tmp_path):
    # regression: the whole-file reader took (Y, X, 2) for Y planes of shape (X, 2); minisblack samples are bands
    path = tmp_path / "two.tif"
    data = np.arange(20 * 30 * 2, dtype=np.uint16).reshape(20, 30, 2)
    tifffile.imwrite(path, data, photometric="minisblack", planarconfig="contig")
    info = read_info(path)
    assert (info.axes, info.shape, info.rgb) == ("CYX", (2, 20, 30), False)
    array, is_rgb = read_image(path)
    assert not is_rgb and np.array_equal(array, np.moveaxis(data, -1, 0))
    assert len(image_planes(path, 1)) == 2


def test_four_gray_samples_per_page_are_bands_not_rgba(tmp_path, rng):
    # regression: a multi-page stack of 4 minisblack samples was read as RGBA (the 4th band taken for alpha)
    path = tmp_path / "bands.tif"
    data = (rng.random((3, 20, 30, 4)) * 4000).astype(np.uint16)
    tifffile.imwrite(path, data, photometric="minisblack", planarconfig="contig")
    with pytest.raises(ValueError, match="4 gray samples per pixel.*save the bands as a channel axis"):
        read_info(path)
    array, is_rgb = read_image(path)  # training and evaluation: every band a gray plane
    assert not is_rgb and np.array_equal(array, np.moveaxis(data, -1, 1))
    assert len(image_planes(path, 1)) == 12


def test_atomic_write_flushes_the_file_then_the_folder_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("rename", str(b))) or real_replace(a, b))
    target = tmp_path / "w.bin"
    with atomic_write(target) as tmp:
        tmp.write_bytes(b"data")
    assert [kind for kind, _ in events] == ["fsync", "rename", "fsync"]
    assert events[0][1] != str(target) and events[1][1] == str(target)  # the data is on disk before it is visible
    assert events[2][1] == str(tmp_path)  # and the rename itself survives a power loss


def test_atomic_write_of_a_folder_replaces_the_old_folder_whole(tmp_path):
    store = tmp_path / "image.zarr"
    store.mkdir()
    (store / "old-chunk").write_bytes(b"old")
    with atomic_write(store, tmp_path / ".image.zarr.tmp") as tmp:
        tmp.mkdir()
        (tmp / "chunk").write_bytes(b"new")
    assert sorted(p.name for p in store.iterdir()) == ["chunk"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.zarr"]


def test_a_new_format_plugs_in_by_registering_one_object(tmp_path, monkeypatch):
    from diinn_napari import io
    from diinn_napari.io import base

    class Raw:
        """A toy format: '.raw' files of 4 x 5 uint8 pixels."""

        name, suffixes, kinds, holds_stacks = "raw", (".raw",), ("raw",), False

        def detect(self, path):
            return path.suffix == ".raw"

        def read_info(self, path):
            return io.ImageInfo(path, "raw", "YX", (4, 5), np.dtype(np.uint8))

    monkeypatch.setattr(base, "_FORMATS", list(base._FORMATS))
    io.register(Raw())
    (tmp_path / "a.raw").write_bytes(bytes(20))
    assert io.is_image(tmp_path / "a.raw") and ".raw" in io.suffixes()
    assert io.read_info(tmp_path / "a.raw").shape == (4, 5)
    with pytest.raises(ValueError, match=r"b\.bmpx: not a supported image file \(use .*\.raw"):
        io.read_info(tmp_path / "b.bmpx")


def test_write_planes_keeps_the_inputs_format_and_divides_its_pixel_size(tmp_path, rng):
    from diinn_napari.io import open_planes, read_record, write_planes

    src = tmp_path / "in.tif"
    data = (rng.random((2, 6, 8)) * 4000).astype(np.uint16)
    tifffile.imwrite(src, data, imagej=True, resolution=(1 / 0.4, 1 / 0.4), metadata={"axes": "ZYX", "spacing": 2.0})
    info = read_info(src)
    with open_planes(info) as reader:  # nearest-neighbour x2, plane by plane
        planes = [reader[(z,)].repeat(2, 0).repeat(2, 1) for z in range(2)]
    write_planes(tmp_path / "out.tif", info, (12, 16), np.uint16, planes, record={"made": "here"})
    out = read_info(tmp_path / "out.tif")
    assert out.kind == "imagej" and out.shape == (2, 12, 16) and out.z_spacing == 2.0
    assert out.pixel_size == pytest.approx((0.2, 0.2))
    assert read_record(tmp_path / "out.tif") == {"made": "here"}
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif")[:, ::2, ::2], data)
