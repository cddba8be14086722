"""The one settings object: validated once, torch-free, resolving sizes and the output dtype."""

import subprocess
import sys

import numpy as np
import pytest

from diinn_napari import RunSettings, upscale

from conftest import tiny_model


def test_importing_the_settings_does_not_import_torch():
    code = "import sys, diinn_napari.settings as s; s.RunSettings(scale=2); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("fields, message", [
    ({"scale": 0.5}, "only upscales"),
    ({"scale": 2, "pixel_size": 0.1}, "exactly one of scale"),
    ({"output_shape": (10, 0)}, "whole numbers >= 1"),
    ({"precision": "int3"}, "precision must be one of"),
    ({"mode": "quick"}, "mode must be one of"),
    ({"intensity": "bright"}, "intensity must be one of"),
    ({"tile_size": 0}, "tile_size must be a whole number >= 1"),
    ({"threads": 0}, "threads must be a whole number >= 1"),
    ({"consistency": True}, "consistency must be a whole number"),
    ({"outlier_clamp": (0.5, 2)}, "must contain the normalised range"),
    ({"out_dtype": "complex64"}, "unsupported pixel type"),
])
def test_bad_settings_are_refused_when_made(fields, message):
    with pytest.raises((ValueError, TypeError), match=message):
        RunSettings(**fields)


def test_size_requests_resolve_per_input():
    assert RunSettings(scale=2.5).output_yx((10, 20)) == (25, 50)
    assert RunSettings(scale=(2, 3)).output_yx((10, 10)) == (20, 30)
    assert RunSettings(output_shape=(31, 17)).output_yx((10, 10)) == (31, 17)
    assert RunSettings(pixel_size=0.1).output_yx((100, 50), input_pixel_size=(0.325, 0.2)) == (325, 100)
    with pytest.raises(ValueError, match="needs the input's pixel size"):
        RunSettings(pixel_size=0.1).output_yx((100, 50))
    with pytest.raises(ValueError, match="no size requested"):
        RunSettings().output_yx((10, 10))


def test_replace_swaps_the_size_request_and_validates_again():
    settings = RunSettings(scale=2, consistency=1)
    moved = settings.replace(output_shape=(40, 40))
    assert moved.scale is None and moved.output_shape == (40, 40) and moved.consistency == 1
    with pytest.raises(ValueError):
        settings.replace(consistency=-1)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float16, np.float32, np.float64])
def test_one_dtype_rule_for_every_shell(dtype):
    # the engine keeps the input's dtype (floats too) unless out_dtype says otherwise
    assert RunSettings().output_dtype(dtype) == np.dtype(dtype)
    assert RunSettings(out_dtype="uint16").output_dtype(dtype) == np.uint16
    image = (np.random.default_rng(0).random((6, 6)) * 100).astype(dtype)
    assert upscale(image, 2, model=tiny_model()).dtype == np.dtype(dtype)


def test_settings_object_and_keywords_give_the_same_result():
    model = tiny_model()
    image = (np.random.default_rng(1).random((9, 7)) * 255).astype(np.uint8)
    settings = RunSettings(scale=2.5, model=model, consistency=1, tile_size=4)
    np.testing.assert_array_equal(upscale(image, settings=settings),
                                  upscale(image, 2.5, model=model, consistency=1, tile_size=4))


def test_record_is_plain_data():
    import json

    record = RunSettings(scale=2, model=tiny_model()).record()
    assert json.loads(json.dumps(record))["model"] == "DIINN" and record["scale"] == [2.0, 2.0]


def test_a_target_pixel_size_through_upscale():
    image = np.zeros((10, 8), np.uint8)
    out = upscale(image, pixel_size=0.1, input_pixel_size=(0.25, 0.2), model=tiny_model())
    assert out.shape == (25, 16)
