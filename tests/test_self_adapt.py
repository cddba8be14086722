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


def scene_with_nodata():
    """A picture whose left 48 columns and a corner of the check strip are nodata (0), as a satellite scene's edge;
    (image, valid)."""
    image = (picture((96, 160)) // 2 + 20000).astype(np.uint16)  # data in 20000..45000
    valid = np.ones(image.shape, bool)
    valid[:, :48] = False
    valid[:30, 140:] = False  # in the strip (the last 40 columns)
    image[~valid] = 0
    return image, valid


def test_adaptation_trains_and_checks_on_data_only(monkeypatch):
    from diinn_napari.intensity import fit_intensity
    from diinn_napari.train import data as train_data

    image, valid = scene_with_nodata()
    fitted, crops, checked = [], [], []
    monkeypatch.setattr("diinn_napari.intensity.fit_intensity",
                        lambda a, mode="auto", *rest: fitted.append(np.asarray(a).copy()) or fit_intensity(a, mode, *rest))
    sample_batch = train_data.PairSampler.sample_batch

    def noted(self, gen, n):
        lr, hrs = sample_batch(self, gen, n)
        crops.extend(hrs)
        return lr, hrs

    monkeypatch.setattr(train_data.PairSampler, "sample_batch", noted)
    validate = __import__("diinn_napari.train.validation", fromlist=["validate"]).validate
    monkeypatch.setattr("diinn_napari.train.validation.validate",
                        lambda model, planes, *a, **k: checked.extend(planes) or validate(model, planes, *a, **k))
    result = adapt_to_image(image, 2, model=tiny_model(), steps=4, valid=valid, device="cpu")
    assert result.steps == 4 and crops and checked
    # normalised on data only: nodata (0) lies far below the data's 0..1, and no crop or check touches it
    assert all(float(hr.min()) > -0.5 for hr in crops), min(float(hr.min()) for hr in crops)
    assert all(float(plane.min()) > -0.5 for plane in checked)
    assert fitted[0].size == valid.sum() and fitted[0].min() >= 20000  # the map fitted on the data's values only
    with pytest.raises(ValueError, match="largest square on data is"):
        tiny = np.zeros((96, 160), bool)
        tiny[:8, :8] = True
        adapt_to_image(image, 2, model=tiny_model(), steps=1, valid=tiny, device="cpu")
    with pytest.raises(ValueError, match="valid has shape"):
        adapt_to_image(image, 2, model=tiny_model(), steps=1, valid=valid[:, :10], device="cpu")


def test_adapt_plane_leaves_the_engines_nodata_out():
    from diinn_napari import RunSettings
    from diinn_napari.train import self_adapt

    image, valid = scene_with_nodata()
    seen = {}
    real = self_adapt.adapt_to_image
    self_adapt.adapt_to_image = lambda *a, **k: seen.update(k) or real(*a, **k)
    try:
        self_adapt.adapt_plane(image, 2.0, RunSettings(model=tiny_model(), device="cpu", nodata=0), 2)
    finally:
        self_adapt.adapt_to_image = real
    np.testing.assert_array_equal(seen["valid"], valid)
