"""The geometric self-ensemble (RunSettings.ensemble): the mean of the 8 flipped/transposed runs, mapped back."""

import numpy as np
import pytest

from diinn_napari import RunSettings, upscale
from diinn_napari.engine import Engine


def members(image, scale, model, **options):
    """The 8 members computed the long way: transform, upscale, transform back."""
    sy, sx = scale
    outs = []
    for transpose in (False, True):
        for flip_y in (False, True):
            for flip_x in (False, True):
                x = image.T if transpose else image
                x = x[::-1] if flip_y else x
                x = x[:, ::-1] if flip_x else x
                out = upscale(np.ascontiguousarray(x), (sx, sy) if transpose else (sy, sx), model=model, **options)
                out = out[:, ::-1] if flip_x else out
                out = out[::-1] if flip_y else out
                outs.append((out.T if transpose else out).astype(np.float64))
    return outs


@pytest.mark.parametrize("scale", [(2.0, 2.0), (1.5, 3.25)])
def test_the_ensemble_is_the_mean_of_the_eight_symmetric_runs(model, rng, scale):
    image = rng.random((13, 11)).astype(np.float32)
    options = dict(intensity="none", device="cpu", consistency=2)
    ours = upscale(image, scale, model=model, ensemble=True, **options)
    expected = np.mean(members(image, scale, model, **options), axis=0)
    assert ours.shape == expected.shape == (round(13 * scale[0]), round(11 * scale[1]))
    np.testing.assert_allclose(ours, expected, atol=2e-5)
    assert not np.allclose(ours, upscale(image, scale, model=model, **options), atol=1e-4)  # it does something


@pytest.mark.parametrize("scale", [2.5, (1.75, 3.0)])
def test_tiled_equals_whole_with_the_ensemble(model, rng, scale):
    image = rng.random((19, 22)).astype(np.float32)
    image[5, 7] = 40.0  # an outlier: its excess travels the bicubic path in every member
    options = dict(model=model, ensemble=True, intensity="none", device="cpu", return_trust=True)
    whole, trust = upscale(image, scale, tile_size=64, **options)
    tiled, trust_tiled = upscale(image, scale, tile_size=8, **options)
    # the engine's own tiled == whole rule (float round-off of differently sized convolutions only)
    np.testing.assert_allclose(tiled, whole, atol=1e-4)
    np.testing.assert_allclose(trust_tiled, trust, atol=1e-4)


def test_the_window_of_an_ensemble_is_the_run_there(model, rng):
    plane = (rng.random((15, 13, 3)) * 255).astype(np.uint8)
    settings = RunSettings(scale=(2.0, 3.0), model=model, ensemble=True, device="cpu")
    from conftest import tiny_model
    rgb = tiny_model(3)
    settings = settings.replace(model=rgb)
    whole = Engine(settings).run(plane, rgb=True)
    window = Engine(settings).window(plane, (4, 25, 5, 33), rgb=True)
    np.testing.assert_array_equal(window, whole[4:25, 5:33])


def test_ensemble_must_be_a_bool_and_is_recorded():
    with pytest.raises(ValueError, match="ensemble must be True or False"):
        RunSettings(ensemble="yes")
    assert RunSettings(ensemble=True).record()["ensemble"] is True


def test_isotropic_refuses_the_ensemble(rng):
    from diinn_napari.isotropic import isotropic

    with pytest.raises(ValueError, match="plane-wise"):
        isotropic(rng.random((4, 8, 8)).astype(np.float32), (2.0, 1.0, 1.0), settings=RunSettings(ensemble=True))
