"""Self-supervised adaptation to one image (no ground truth): never worse on its held-aside strip, caller's model untouched."""

import threading

import numpy as np
import pytest
import torch

from diinn_napari import upscale
from diinn_napari.engine import Cancelled
from diinn_napari.train.self_adapt import adapt_to_image, split_strip

from conftest import tiny_model


def picture(shape=(96, 120)):
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]] / 5.0
    img = np.sin(x) * np.cos(0.7 * y) + 0.5 * np.sin(0.2 * x * y / 5)
    return ((img - img.min()) / (img.max() - img.min()) * 50000).astype(np.uint16)


def poor_model():
    model = tiny_model()
    with torch.no_grad():
        model.decoder.out.weight.mul_(30)  # a noisy output that adaptation surely improves
    return model


def test_adaptation_improves_the_held_aside_strip_and_leaves_the_callers_model_alone():
    model = poor_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    result = adapt_to_image(picture(), 2, model=model, steps=20, learning_rate=3e-3, warmup=2, device="cpu",
                            progress=lambda i, n, loss: calls.append((i, n)))
    assert result.improved and result.steps == 20 and len(result.losses) == 20
    assert result.result["mean_gain"] > result.start["mean_gain"] and set(result.start) >= {"x2", "mean_gain"}
    assert calls[-1] == (20, 20)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in result.model.state_dict().items())
    out = upscale(picture(), 2, model=result.model, device="cpu")
    assert out.shape == (192, 240) and out.dtype == np.uint16


def test_an_adaptation_that_gets_worse_returns_the_start():
    model = tiny_model()
    result = adapt_to_image(picture(), 4, model=model, steps=6, learning_rate=0.5, warmup=0, device="cpu")
    assert not result.improved and result.result["mean_gain"] < result.start["mean_gain"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in result.model.state_dict().items())


def test_adaptation_can_be_cancelled_and_checks_its_input():
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled, match="after 0 of 5"):
        adapt_to_image(picture(), 2, model=tiny_model(), steps=5, device="cpu", cancel=stop)
    with pytest.raises(ValueError, match="one plane"):
        adapt_to_image(np.zeros((2, 40, 40)), 2, model=tiny_model(), device="cpu")
    with pytest.raises(ValueError, match="too small"):
        adapt_to_image(np.zeros((10, 10)), 2, model=tiny_model(), device="cpu")


def test_the_strip_is_cut_from_the_longer_axis():
    plane = np.zeros((1, 40, 100))
    train, strip = split_strip(plane, 0.25)
    assert train.shape == (1, 40, 75) and strip.shape == (1, 40, 25)
    train, strip = split_strip(np.zeros((1, 100, 40)), 0.25)
    assert train.shape == (1, 75, 40) and strip.shape == (1, 25, 40)
    assert split_strip(plane, 0)[1] is None


def test_adapt_plane_takes_a_plane_as_the_engine_does_and_refuses_what_was_not_measured_to_help():
    from diinn_napari import RunSettings
    from diinn_napari.train.self_adapt import adapt_plane

    rgba = np.dstack([picture()] * 3 + [np.full((96, 120), 65535, np.uint16)])  # alpha: not a colour
    result = adapt_plane(rgba, (2.0, 2.0), RunSettings(model=tiny_model(3), device="cpu"), 2, rgb=True)
    assert result.steps == 2 and result.model.in_channels == 3
    holes = picture().astype(np.float32)
    holes[:10, :10] = np.nan  # nodata, filled from the nearest valid pixel first (no NaN reaches the training)
    result = adapt_plane(holes, 1.5, RunSettings(model=tiny_model(), device="cpu", nodata=float("nan")), 2)
    assert result.start is not None and np.isfinite(result.result["mean_gain"])
    with pytest.raises(ValueError, match="measured to help up to x2"):
        adapt_plane(picture(), (2.0, 4.0), RunSettings(model=tiny_model(), device="cpu"), 2)
