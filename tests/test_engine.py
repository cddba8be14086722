import threading

import numpy as np
import pytest
import torch

from diinn_napari import Cancelled, upscale
from diinn_napari.engine import iter_upscaled_planes
from diinn_napari.settings import output_size

from conftest import tiny_model


def silent(model):
    """Zero the decoder output: the model then returns exactly the bicubic interpolation."""
    torch.nn.init.zeros_(model.decoder.out.weight)
    torch.nn.init.zeros_(model.decoder.out.bias)
    return model


@pytest.mark.parametrize("scale", [1, 1.5, 2, 3.14, (2, 3.7)])
def test_tiled_output_equals_whole_image(model, rng, scale):
    image = rng.random((61, 47)).astype(np.float32) * 4000
    whole = upscale(image, scale, model=model, tile_size=1000)
    tiled = upscale(image, scale, model=model, tile_size=13)
    value_range = np.percentile(image, 99.9) - np.percentile(image, 0.1)
    assert np.abs(whole - tiled).max() / value_range < 1e-4


def test_tiled_equals_whole_for_the_paper_sized_model(rng):
    from diinn_napari.model import DIINN

    torch.manual_seed(0)
    model = DIINN(1, skip="bicubic").eval()  # receptive radius 36: overlap must cover it
    image = rng.random((90, 80)).astype(np.float32)
    whole = upscale(image, 2.5, model=model, tile_size=500, intensity="none")
    tiled = upscale(image, 2.5, model=model, tile_size=40, intensity="none")
    assert np.abs(whole - tiled).max() < 1e-4


@pytest.mark.parametrize("scale", [1, 1.5, 2, 3.14, 4, 8.7, (1.5, 4)])
def test_output_shape_is_round_n_times_scale(model, scale):
    out = upscale(np.zeros((13, 9), np.uint8), scale, model=model)
    sy, sx = (scale, scale) if np.isscalar(scale) else scale
    assert out.shape == (round(13 * sy), round(9 * sx))


def test_output_shape_can_be_given_directly(model):
    assert upscale(np.zeros((10, 10), np.uint8), output_shape=(17, 33), model=model).shape == (17, 33)
    assert output_size((5, 10, 10), output_shape=(17, 33)) == (17, 33)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_constant_image_round_trips_in_its_dtype(dtype):
    model = silent(tiny_model())
    image = np.full((12, 14), 200, dtype)
    out = upscale(image, 2.5, model=model)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, 200, atol=1e-3)


def test_uint16_keeps_its_range_and_floats_their_scale(rng):
    model = silent(tiny_model())
    ramp = np.add.outer(np.arange(16), np.arange(16)).astype(np.float64)
    out16 = upscale((ramp * 2000 + 1000).astype(np.uint16), 2, model=model)
    assert out16.dtype == np.uint16 and 900 < out16.mean() < 32000 + 1100
    floats = ramp * 1e-3 - 5.0
    out = upscale(floats, 2, model=model, consistency=0)  # the model alone: exactly bicubic
    assert out.dtype == np.float64  # a float image keeps its own dtype; the engine computes in float32
    bicubic = torch.nn.functional.interpolate(torch.from_numpy(floats)[None, None], (32, 32), mode="bicubic")[0, 0]
    np.testing.assert_allclose(out, bicubic.numpy(), atol=1e-5)


def test_integer_output_is_rounded_and_clipped():
    model = silent(tiny_model())
    edge = np.zeros((16, 16), np.uint8)
    edge[:, 8:] = 255  # bicubic overshoots at the edge
    out = upscale(edge, 3, model=model)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255


def test_every_leading_plane_is_upscaled_independently(model, rng):
    stack = (rng.random((2, 3, 10, 12)) * 60000).astype(np.uint16)
    out = upscale(stack, 2, model=model)
    assert out.shape == (2, 3, 20, 24) and out.dtype == np.uint16
    np.testing.assert_array_equal(out[1, 2], upscale(stack[1, 2], 2, model=model))


def test_rgb_images_use_the_colour_axis(rng):
    model = tiny_model(channels=3)
    out = upscale((rng.random((2, 10, 12, 3)) * 255).astype(np.uint8), 1.5, model=model, rgb=True)
    assert out.shape == (2, 15, 18, 3) and out.dtype == np.uint8


class LazyStack:
    """An array-like that counts reads and refuses to be loaded whole."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, []

    def __getitem__(self, index):
        self.reads.append(index)
        return self.data[index]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole lazy array was loaded")


def test_lazy_arrays_are_read_one_plane_at_a_time(model, rng):
    lazy = LazyStack((rng.random((3, 9, 9)) * 255).astype(np.uint8))
    planes = list(iter_upscaled_planes(lazy, 2, model=model))
    assert [index for index, _ in planes] == [(0,), (1,), (2,)]
    assert lazy.reads == [(0,), (1,), (2,)]


def test_dask_arrays_work(model, rng):
    da = pytest.importorskip("dask.array")
    data = (rng.random((2, 20, 20)) * 255).astype(np.uint8)
    out = upscale(da.from_array(data, chunks=(1, 20, 20)), 2, model=model)
    np.testing.assert_array_equal(out, upscale(data, 2, model=model))


def test_progress_reports_every_tile(model):
    calls = []
    upscale(np.zeros((2, 20, 20), np.uint8), 2, model=model, tile_size=10, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 8) for i in range(1, 9)]


@pytest.mark.parametrize("kind", ["event", "callable"])
def test_cancel_stops_between_tiles(model, kind):
    event = threading.Event()
    cancel = event if kind == "event" else event.is_set
    done = []

    def progress(d, t):
        done.append(d)
        event.set()

    with pytest.raises(Cancelled):
        upscale(np.zeros((20, 20), np.uint8), 2, model=model, tile_size=5, progress=progress, cancel=cancel)
    assert done == [1]


@pytest.mark.parametrize(
    "image, kwargs, message",
    [
        (np.zeros((0, 5), np.uint8), {}, "empty"),
        (np.zeros(5, np.uint8), {}, "at least 2 axes"),
        (np.zeros((4, 4), bool), {}, "unsupported pixel type bool"),
        (np.zeros((4, 4), complex), {}, "unsupported pixel type complex"),
        (np.zeros((4, 4), object), {}, "unsupported pixel type object"),
        (np.array([[0, np.nan], [1, 2]], np.float32), {}, "NaN or infinite"),
        (np.array([[0, np.inf], [1, 2]], np.float32), {}, "NaN or infinite"),
        (np.zeros((4, 4), np.uint8), {"scale": 0}, "scale must be a finite number > 0"),
        (np.zeros((4, 4), np.uint8), {"scale": -2}, "scale must be a finite number > 0"),
        (np.zeros((4, 4), np.uint8), {"scale": 0.5}, "only upscales"),
        (np.zeros((4, 4), np.uint8), {"scale": (2, 3, 4)}, "pair"),
        (np.zeros((4, 4), np.uint8), {"scale": None}, "exactly one of scale"),
        (np.zeros((4, 4), np.uint8), {"scale": 2, "output_shape": (8, 8)}, "exactly one of scale"),
        (np.zeros((3, 100, 100), np.uint8), {"scale": 4, "max_output_pixels": 100_000}, r"480,000 pixels"),
        (np.zeros((8, 8, 3), np.uint8), {"scale": 2, "rgb": False}, "3-channel"),
        (np.zeros((8, 8, 5), np.uint8), {"scale": 2, "rgb": True}, r"last axis of 3 colour channels \(RGB\) or 4"),
        (np.zeros((8, 8), np.uint8), {"scale": 2, "consistency": -1}, "consistency must be a whole number"),
        (np.zeros((8, 8), np.uint8), {"scale": 2, "consistency": 1.5}, "consistency must be a whole number"),
        (np.zeros((8, 8), np.uint8), {"scale": 2, "outlier_clamp": (0.2, 1.5)}, "must contain the normalised range"),
        (np.zeros((8, 8), np.uint8), {"scale": 2, "outlier_clamp": 3}, r"outlier_clamp must be None or a \(low, high\)"),
        (np.zeros((8, 8), np.uint8), {"scale": 2, "precision": "fp16", "device": "cpu"}, "needs a CUDA device"),
    ],
)
def test_bad_input_gets_a_clear_error(image, kwargs, message):
    model = tiny_model(channels=3) if image.shape[-1:] in ((3,), (5,)) else tiny_model()
    kwargs = {"scale": 2, **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        upscale(image, kwargs.pop("scale"), model=model, **kwargs)


def test_unavailable_device_is_refused(model):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(ValueError, match="not available"):
        upscale(np.zeros((4, 4), np.uint8), 2, model=model, device="cuda:0")


def test_data_consistency_is_on_by_default(model, rng):
    from diinn_napari.settings import DEFAULT_CONSISTENCY

    image = (rng.random((20, 20)) * 1000).astype(np.uint16)
    assert DEFAULT_CONSISTENCY == 2
    default = upscale(image, 2, model=model)
    np.testing.assert_array_equal(default, upscale(image, 2, model=model, consistency=2))
    assert not np.array_equal(default, upscale(image, 2, model=model, consistency=0))


# ---- CUDA (run on a GPU machine: python3 -m pytest -p no:cacheprovider tests/test_engine.py -k cuda) ---------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_cuda_engine_matches_the_cpu_engine():
    from diinn_napari.model import DIINN

    torch.manual_seed(0)
    image = np.random.default_rng(0).random((70, 60)).astype(np.float32)
    cpu = upscale(image, 2.5, model=DIINN(1, skip="bicubic").eval(), device="cpu", intensity="none")
    torch.manual_seed(0)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # fp32 convolutions, as on the CPU
        gpu = upscale(image, 2.5, model=DIINN(1, skip="bicubic").eval(), device="cuda", intensity="none")
    assert np.abs(gpu - cpu).max() < 1e-4


@needs_cuda
def test_cuda_tiled_output_equals_whole_image():
    from diinn_napari.model import DIINN

    torch.manual_seed(0)
    model = DIINN(1, skip="bicubic").eval()
    image = np.random.default_rng(1).random((90, 80)).astype(np.float32)
    whole = upscale(image, 3, model=model, device="cuda", tile_size=500, intensity="none")
    tiled = upscale(image, 3, model=model, device="cuda", tile_size=40, intensity="none")
    assert np.abs(whole - tiled).max() < 1e-4


@needs_cuda
def test_cuda_low_precisions_agree_with_fp32(monkeypatch):
    # an image with structure (white noise is no image: the first GPU run failed this test on noise);
    # the fp32 reference without TF32 convolutions
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    y, x = np.mgrid[0:40, 0:48] / 6.0
    image = (0.5 + 0.25 * np.sin(x + 0.3 * y) * np.cos(0.7 * y) + 0.2 * np.exp(-((x - 4) ** 2 + (y - 3) ** 2))).astype(np.float32)
    exact = upscale(image, 3, model="default", device="cuda", intensity="none")
    for precision in ("fp16", "bf16"):
        approx = upscale(image, 3, model="default", device="cuda", intensity="none", precision=precision)
        diff = np.abs(approx - exact)
        assert diff.max() < 0.02 and diff.mean() < 5e-4, (precision, diff.max(), diff.mean())


# ---- the caller's model is left alone ----------------------------------------------------------------
def test_a_callers_model_keeps_its_training_mode_and_is_used_without_a_copy(rng, monkeypatch):
    import copy

    from diinn_napari import engine

    net = tiny_model().train()
    net.encoder.eval()  # a mixed state comes back as it was, module by module
    modes = {name: m.training for name, m in net.named_modules()}
    copies = []
    real_deepcopy = copy.deepcopy
    monkeypatch.setattr(engine.copy, "deepcopy", lambda obj, *a: copies.append(obj) or real_deepcopy(obj, *a))
    image = rng.random((12, 10)).astype(np.float32)
    out = upscale(image, 2, model=net, device="cpu")
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert copies == []  # on its device already: switched to eval for the run, not copied
    np.testing.assert_array_equal(out, upscale(image, 2, model=tiny_model(), device="cpu"))


def test_a_callers_eval_model_on_its_device_is_the_model_itself(model):
    from diinn_napari.engine import get_model, inference_model

    assert get_model(model, 1, "cpu") is model
    with inference_model(model, 1, "cpu") as net:
        assert net is model and not net.training


def test_a_model_elsewhere_is_copied_not_moved(model, monkeypatch, rng):
    # as if the model sat on another device: the engine copies it to the run's device and leaves it where it was
    from diinn_napari import engine

    monkeypatch.setattr(engine, "_is_on", lambda m, device: m is not model)
    net = model.train()
    got = engine.get_model(net, 1, "cpu")
    assert got is not net and not got.training and net.training
    for a, b in zip(got.parameters(), net.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    upscale(rng.random((8, 8)).astype(np.float32), 2, model=net, device="cpu")
    assert net.training


def test_a_paused_run_restores_the_mode_when_it_is_closed(model, rng):
    from diinn_napari import upscale_steps

    net = model.train()
    steps = upscale_steps(rng.random((40, 40)).astype(np.float32), 2, model=net, device="cpu", tile_size=8)
    next(steps)
    assert not net.training  # in eval for the run
    steps.close()
    assert net.training
