"""The fast inference paths: no-grad decoder, banded windows, bf16 on the CPU, thread settings.

No napari and no Qt here: this file also runs on GPU machines without them.
"""

import numpy as np
import pytest
import torch

import diinn_napari.model.diinn as diinn_module
from diinn_napari import upscale
from diinn_napari.engine import torch_threads
from diinn_napari.model import DIINN
from diinn_napari.model.grid import AxisSamples

from conftest import tiny_model

# bf16 (CPU or CUDA) against fp32, in the normalised [0, 1] range, measured with the bundled gray model
# (docs/speed.md): worst pixel and mean |difference| on this test's image 0.003 and 1.2e-4; docs/speed.md has
# Set14 with the v0.3 weights (worst 0.028 at x4, mean <= 2.1e-4), which this tiny image does not reach
BF16_MAX_ABS = 0.02
BF16_MEAN_ABS = 5e-4


def _paper_model(seed=0, channels=1):
    torch.manual_seed(seed)
    return DIINN(channels, skip="bicubic").eval()


def test_inference_decoder_equals_the_autograd_formula():
    model = _paper_model(1)
    table = torch.randn(300, 4 * 256)
    rows = torch.randint(0, 300, (777,))
    p = torch.rand(777, 4) * 2 - 1
    with torch.no_grad():
        fast = model.decoder(table.clone(), rows, p, "fast")
    with torch.enable_grad():  # the training path: no in-place chain, no cached weights
        slow = model.decoder(table.clone(), rows, p, "fast")
    assert (fast - slow).abs().max() < 1e-5


def test_cached_weights_follow_in_place_updates():
    model = tiny_model(skip="none")
    lr = torch.rand(1, 1, 6, 7)
    with torch.no_grad():
        before = model(lr, (13, 15))
        for param in model.decoder.parameters():  # what an optimizer step does: in place
            param.mul_(1.5)
        after = model(lr, (13, 15))
        reference = model(lr, (13, 15), mode="reference")
    assert (after - reference).abs().max() < 1e-5
    assert (after - before).abs().max() > 1e-3


def test_cached_weights_follow_load_state_dict():
    model, other = tiny_model(skip="none", seed=0), tiny_model(skip="none", seed=1)
    lr = torch.rand(1, 1, 6, 7)
    with torch.no_grad():
        model(lr, (12, 14))  # fills the cache
        model.load_state_dict(other.state_dict())
        assert (model(lr, (12, 14)) - other(lr, (12, 14))).abs().max() < 1e-6


@pytest.mark.parametrize("variant", ["f", "d", "b"])
def test_banded_window_equals_one_band(monkeypatch, variant):
    """Bands of output rows (bounded memory) give the same pixels as one band, batch and anisotropic scale included."""
    model = tiny_model(variant=variant)
    lr = torch.rand(2, 1, 11, 9)
    with torch.no_grad():
        features = model.encode(lr)
        whole = model.decode_window(lr, features, (11, 9), (37, 20), (3, 31, 2, 19), chunk_size=64)
        monkeypatch.setattr(diinn_module, "BAND_QUERIES", 7)  # one output row per band, many bands
        banded = model.decode_window(lr, features, (11, 9), (37, 20), (3, 31, 2, 19), chunk_size=64)
    assert banded.shape == (2, 1, 28, 17)
    assert (whole - banded).abs().max() < 1e-6


def test_banded_window_with_explicit_sample_positions(monkeypatch):
    model = tiny_model()
    lr = torch.rand(1, 1, 8, 10)
    rows = AxisSamples(np.array([0.0, 0.4, 0.8, 1.7, 2.0, 3.3, 5.9, 7.2, 7.5]), 0.4)
    with torch.no_grad():
        features = model.encode(lr)
        whole = model.decode_window(lr, features, (8, 10), (9, 21), (0, 9, 0, 21), samples=(rows, None))
        monkeypatch.setattr(diinn_module, "BAND_QUERIES", 20)
        banded = model.decode_window(lr, features, (8, 10), (9, 21), (0, 9, 0, 21), samples=(rows, None))
    assert (whole - banded).abs().max() < 1e-6


def test_table_of_a_window_equals_the_padded_whole_table():
    model = tiny_model()
    features = torch.rand(2, 16, 7, 9)
    whole = model.decoder.table(features, (0, 7, 0, 9), "fast").view(2, 7, 9, -1)
    for window in [(0, 3, 0, 4), (2, 7, 3, 9), (1, 6, 1, 8), (6, 7, 8, 9)]:
        r0, r1, c0, c1 = window
        part = model.decoder.table(features, window, "fast").view(2, r1 - r0, c1 - c0, -1)
        assert (part - whole[:, r0:r1, c0:c1]).abs().max() < 1e-5, window


def _bf16_agreement(device: str):
    image = np.zeros((48, 56), np.float32)
    yy, xx = np.mgrid[:48, :56]
    image += 0.4 + 0.3 * np.sin(xx / 3.0) * np.cos(yy / 5.0) + 0.2 * (xx > 30)  # texture and an edge
    kwargs = dict(model="default", device=device, intensity="none", consistency=0)
    exact = upscale(image, 3.5, precision="fp32", **kwargs)
    approx = upscale(image, 3.5, precision="bf16", **kwargs)
    diff = np.abs(approx - exact)
    return diff, float(np.mean(approx - exact))


def test_bf16_on_the_cpu_agrees_with_fp32_within_its_stated_tolerance():
    diff, bias = _bf16_agreement("cpu")
    assert diff.max() < BF16_MAX_ABS
    assert diff.mean() < BF16_MEAN_ABS
    assert abs(bias) < BF16_MEAN_ABS / 4  # no systematic shift


def test_bf16_is_not_the_default_and_fp32_stays_exact(rng):
    model = _paper_model()
    image = rng.random((20, 24)).astype(np.float32)
    default = upscale(image, 2.5, model=model, intensity="none")
    explicit = upscale(image, 2.5, model=model, intensity="none", precision="fp32")
    assert np.array_equal(default, explicit)
    with torch.no_grad():
        whole = model(torch.from_numpy(image)[None, None], (50, 60), mode="reference")[0, 0].numpy()
    assert np.abs(upscale(image, 2.5, model=model, intensity="none", consistency=0) - whole).max() < 1e-4


@pytest.mark.parametrize("precision, message", [("fp16", "needs a CUDA device"), ("int4", "must be one of")])
def test_precisions_the_cpu_cannot_run_are_refused(model, precision, message):
    with pytest.raises(ValueError, match=message):
        upscale(np.zeros((8, 8), np.uint8), 2, model=model, device="cpu", precision=precision)


def test_threads_option_sets_torch_threads_during_the_work_and_restores_them(model, monkeypatch):
    seen = []
    encode = model.encode

    def spy(x):
        seen.append(torch.get_num_threads())
        return encode(x)

    monkeypatch.setattr(model, "encode", spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        upscale(np.zeros((12, 12), np.uint8), 2, model=model, threads=1, tile_size=6)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
        seen.clear()
        upscale(np.zeros((12, 12), np.uint8), 2, model=model)  # None: torch's current setting
        assert set(seen) == {2}
    finally:
        torch.set_num_threads(before)


def test_threads_setting_is_back_while_the_steps_generator_is_paused(model):
    from diinn_napari import upscale_steps

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        steps = upscale_steps(np.zeros((12, 12), np.uint8), 2, model=model, threads=1, tile_size=6)
        next(steps)
        assert torch.get_num_threads() == 2
        for _ in steps:
            pass
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_bad_thread_counts_are_refused(model, threads):
    with pytest.raises(ValueError, match="threads must be a whole number"):
        upscale(np.zeros((8, 8), np.uint8), 2, model=model, threads=threads)


def test_torch_threads_restores_after_an_error():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with pytest.raises(RuntimeError):
        with torch_threads(target):
            assert torch.get_num_threads() == target
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
