"""benchmarks/selfcheck.py: the blend it measures is the one it names (issue 21's self-check, not in the engine)."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from selfcheck import bicubic, bicubic_blended, blend_weight  # noqa: E402

from diinn_napari import upscale  # noqa: E402
from diinn_napari.quality import dark_fluorescence  # noqa: E402

from conftest import tiny_model  # noqa: E402


def test_blend_weight_is_the_least_squares_weight_clipped():
    rng = np.random.default_rng(0)
    base, model = rng.normal(size=(2, 16, 16))
    assert abs(blend_weight(model, base, base + 0.3 * (model - base)) - 0.3) < 1e-9
    assert blend_weight(model, base, base + 2.0 * (model - base)) == 1.0
    assert blend_weight(model, base, base - 0.5 * (model - base)) == 0.0


def test_weight_zero_decodes_bicubic_and_one_the_network():
    """w = 0 without the engine's steps gives bicubic of the LR (the blend's base is the training grid's
    bicubic); w = 1 is the network untouched; w = 0.5 lies half way."""
    lr = dark_fluorescence((24, 24), np.uint16, 1).astype(np.float32) / 1000
    net = tiny_model()
    options = {"output_shape": (48, 48), "consistency": 0, "outlier_clamp": None, "intensity": "none"}
    zero = upscale(lr, model=bicubic_blended(net, 0.0), **options)
    np.testing.assert_allclose(zero, bicubic(lr, (48, 48)), atol=1e-5)
    assert bicubic_blended(net, 1.0) is net
    full = upscale(lr, model=net, **options)
    half = upscale(lr, model=bicubic_blended(net, 0.5), **options)
    np.testing.assert_allclose(half, 0.5 * (zero + full), atol=1e-5)
