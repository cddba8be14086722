"""The core the engine and the isotropic pipeline share: checks, the dtype rule, outliers, cancel, assembly."""

import subprocess
import sys
import threading

import numpy as np
import pytest

from diinn_napari.core import (Assembly, Cancelled, auto_tile_size, cast, check_array, check_cancel, collect,
                               replace_outliers, valid_range)
from diinn_napari.intensity import Intensity


def test_cast_rounds_and_clips_integers_and_keeps_narrow_floats_finite():
    values = np.array([-3.4, 0.5, 1.5, 254.6, 300.0], np.float32)
    np.testing.assert_array_equal(cast(values, np.uint8), [0, 0, 2, 255, 255])  # round half to even, then clip
    np.testing.assert_array_equal(cast(np.array([-1e6, 1e6], np.float32), np.int16), [-32768, 32767])
    half = cast(np.array([1e6, -1e6, 1.5], np.float32), np.float16)
    assert half.dtype == np.float16 and np.isfinite(half).all() and half[2] == 1.5
    assert cast(values, np.float64).dtype == np.float64
    same = np.arange(4, dtype=np.uint16)
    assert cast(same, np.uint16) is same  # nothing to do: no copy


def test_valid_range_is_the_dtype_range_in_normalised_units():
    assert valid_range(Intensity(0.0, 255.0), np.uint8) == (0.0, 1.0)
    assert valid_range(Intensity(10.0, 20.0), np.float32) == (-np.inf, np.inf)


def test_outliers_see_the_clamped_median_and_keep_their_excess():
    values = np.full((1, 5, 5), 0.5, np.float32)
    values[0, 2, 2] = 40.0
    seen, excess = replace_outliers(values, (-0.5, 1.5), size=(1, 3, 3))
    assert seen[0, 2, 2] == 0.5 and excess[0, 2, 2] == pytest.approx(39.5)
    np.testing.assert_array_equal(seen + excess, values)
    assert replace_outliers(np.zeros((3, 3), np.float32), (-0.5, 1.5))[1] is None
    assert replace_outliers(values, None)[1] is None


def test_array_checks_name_the_problem():
    with pytest.raises(TypeError, match="array-like"):
        check_array([[1, 2]])
    with pytest.raises(TypeError, match="unsupported pixel type"):
        check_array(np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="volume is empty"):
        check_array(np.zeros((0, 2)), "volume")


def test_cancel_by_event_or_callable():
    check_cancel(None, 0, 1)
    check_cancel(lambda: False, 0, 1)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled, match="after 3 of 7 tiles"):
        check_cancel(stop, 3, 7, "tiles")


class Piece:
    def __init__(self, where, values):
        self.piece = None if values is None else (where, values)


def test_assembly_places_pieces_and_checks_out():
    steps = [Piece(None, None), Piece((0,), np.ones((2, 3), np.uint16)), Piece((1,), np.full((2, 3), 2, np.uint16))]
    result = collect(steps, (2, 2, 3))
    assert result.dtype == np.uint16 and result[1, 0, 0] == 2 and result[0].sum() == 6
    partial = Assembly((3, 2, 3), fill=0)
    partial.add(steps[1])
    assert partial.result[1:].sum() == 0  # not done: zeros, not garbage
    with pytest.raises(ValueError, match="out has shape"):
        Assembly((2, 2, 3), out=np.zeros((2, 2, 2)))


def test_auto_tile_size_by_device_and_scale():
    assert auto_tile_size("cpu", 2) == 256 and auto_tile_size("cuda:0", 2) == 512
    assert auto_tile_size("cpu", 64) == 64 and auto_tile_size("cpu", 1000) == 32
    assert auto_tile_size("cpu", axial=True) == 128 and auto_tile_size("cuda", axial=True) == 256


def test_core_imports_without_torch():
    code = "import sys, diinn_napari.core, diinn_napari.intensity; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
