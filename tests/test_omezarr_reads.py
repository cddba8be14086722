"""A store's levels as napari reads them (io.omezarr.ReadHere): zarr's values, read in the reading thread."""

import threading

import numpy as np
import pytest
import zarr
import zarr.storage._local as zarr_local

from diinn_napari.io import omezarr
from diinn_napari.io.omezarr import ReadHere, read_here

KEYS = [(), (Ellipsis,), (1,), (1, slice(3, 50), slice(5, 89)), (slice(None), 5), (-1, slice(None), -3),
        (Ellipsis, slice(10, 20)), (slice(1, 3), slice(0, 70), slice(31, 33)), (2, slice(5, 5)),
        (np.int64(2), slice(60, 70), slice(70, 90)), (0, slice(None, None, 2)), (slice(None), slice(-20, None))]


@pytest.fixture
def stored(tmp_path):
    """A zarr array over several chunks per axis, partly written (the rest at its fill value), and its numpy twin."""
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=(3, 70, 90), chunks=(1, 16, 32), dtype="uint16",
                              fill_value=7)
    values = np.random.default_rng(0).integers(0, 60000, array.shape, dtype="uint16")
    values[:, 60:, 80:] = 7  # a chunk corner never written
    array[:, :60, :] = values[:, :60, :]
    array[:, 60:, :80] = values[:, 60:, :80]
    return array, values


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_reads_equal_zarr(stored, key):
    array, values = stored
    got = ReadHere(array)[key]
    assert got.shape == values[key].shape and got.dtype == values.dtype
    np.testing.assert_array_equal(got, values[key])
    np.testing.assert_array_equal(read_here(array, key), values[key])


def test_view_looks_like_the_array(stored):
    array, values = stored
    view = ReadHere(array)
    assert (view.shape, view.dtype, view.ndim, view.chunks, view.size, len(view)) == \
        (values.shape, values.dtype, 3, (1, 16, 32), values.size, 3)
    np.testing.assert_array_equal(np.asarray(view), values)
    with pytest.raises(IndexError):
        view[3]


def test_files_read_in_the_reading_thread(stored, monkeypatch):
    array, values = stored
    seen = set()
    get = zarr_local._get

    def noted(*args, **kwargs):
        seen.add(threading.get_ident())
        return get(*args, **kwargs)

    monkeypatch.setattr(zarr_local, "_get", noted)
    np.testing.assert_array_equal(ReadHere(array)[1, 3:50, 5:89], values[1, 3:50, 5:89])
    assert seen == {threading.get_ident()}
    seen.clear()
    np.testing.assert_array_equal(array[1, 3:50, 5:89], values[1, 3:50, 5:89])  # zarr's own path: its pool
    assert seen and threading.get_ident() not in seen


def test_a_selection_is_read_one_chunk_at_a_time(stored, monkeypatch):
    array, values = stored
    reads = []

    def one_read(array, key):
        reads.append(key)
        return read_here(array, key)

    monkeypatch.setattr(omezarr, "read_here", one_read)
    np.testing.assert_array_equal(ReadHere(array)[1, 3:50, 5:89], values[1, 3:50, 5:89])
    assert len(reads) == 4 * 3  # rows 3-50 over chunks of 16: 4; columns 5-89 over chunks of 32: 3
    for key in reads:
        ys, xs = key[1:]
        assert ys.start // 16 == (ys.stop - 1) // 16 and xs.start // 32 == (xs.stop - 1) // 32, key


@pytest.mark.parametrize("key", [(1, slice(3, 50), slice(5, 89)), (0, 2, slice(0, 20)), (0, slice(None, None, 2))],
                         ids=["chunks", "one chunk", "a step"])
def test_reads_are_read_only(stored, key):
    got = ReadHere(stored[0])[key]
    with pytest.raises(ValueError, match="read-only"):
        got[...] = 0


def test_a_region_read_again_while_held_is_refilled_in_place(stored):
    """napari's refresh reads the displayed region while its slice holds the last read: one buffer, the store's values."""
    array, values = stored
    view = ReadHere(array)
    key = (1, slice(3, 50), slice(5, 89))
    held = view[key]
    array[1, 10:20, 40:60] = 3  # a block written meanwhile
    values[1, 10:20, 40:60] = 3
    again = view[key]
    assert again is held and not again.flags.writeable
    np.testing.assert_array_equal(held, values[key])  # the holder sees the store as it is now
    other = view[1, 3:50, 5:88]  # another region: an array of its own
    assert other is not held
    np.testing.assert_array_equal(held, values[key])
    del held, again
    fresh = view[1, 3:50, 5:88]
    assert fresh is other  # still held: refilled
    del other, fresh
    assert view[key].base is None and view[key].shape == values[key].shape  # nobody held it: a new array
