import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diinn_napari.model import DIINN, VARIANTS
from diinn_napari.model.grid import axis_queries, cell_size

from conftest import tiny_model

SCALES = [1, 1.5, 2, 3.14, 4, 8.7]


def shape_at(scale, h=9, w=11):
    return (round(h * scale), round(w * scale))


def test_figure3_coordinates_of_2x2_to_4x4():
    index, rel = axis_queries(2, 4)
    assert index.tolist() == [0, 0, 1, 1]
    assert rel.tolist() == [-0.5, 0.5, -0.5, 0.5]
    assert cell_size(2, 4) == 0.5


def test_local_coordinates_stay_inside_one_lr_cell():
    for n_in, n_out in [(7, 7), (7, 11), (10, 31), (3, 26)]:
        index, rel = axis_queries(n_in, n_out)
        assert index.min() == 0 and index.max() == n_in - 1
        assert (rel >= -1).all() and (rel < 1).all()
        centres_out = -1 + (2 * np.arange(n_out) + 1) / n_out
        centres_in = -1 + (2 * index.numpy() + 1) / n_in
        np.testing.assert_allclose(rel.numpy(), (centres_out - centres_in) * n_in, atol=1e-6)


@pytest.mark.parametrize("scale", SCALES + [(2, 3.5)])
def test_output_shape_follows_each_axis(scale):
    model = tiny_model()
    sy, sx = (scale, scale) if np.isscalar(scale) else scale
    out_shape = (round(9 * sy), round(11 * sx))
    with torch.no_grad():
        out = model(torch.rand(2, 1, 9, 11), out_shape)
    assert out.shape == (2, 1) + out_shape


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fast_decoder_equals_reference(variant):
    model = tiny_model(variant=variant, skip="none")
    lr = torch.rand(2, 1, 9, 11)
    shapes = [shape_at(s) for s in SCALES] + [(20, 50)]
    with torch.no_grad():
        for shape in shapes:
            fast = model(lr, shape, mode="fast", chunk_size=97)
            reference = model(lr, shape, mode="reference")
            assert (fast - reference).abs().max() < 1e-4, shape


def test_fast_decoder_equals_reference_at_full_size():
    torch.manual_seed(1)
    model = DIINN(3).eval()  # the paper's decoder: 4 layers of 256, EDSR-baseline encoder
    lr = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        for scale in (3.14, 8.7):
            shape = shape_at(scale, 12, 10)
            assert (model(lr, shape) - model(lr, shape, mode="reference")).abs().max() < 1e-4


def test_bicubic_skip_matches_torch_bicubic():
    lr = torch.rand(2, 3, 13, 7)
    ours = DIINN.bicubic_window(lr, (13, 7), (40, 23), (0, 40, 0, 23))
    torch_bicubic = F.interpolate(lr, (40, 23), mode="bicubic", align_corners=False)
    assert (ours - torch_bicubic).abs().max() < 1e-5


def test_model_with_silent_decoder_returns_bicubic():
    model = tiny_model(skip="bicubic")
    torch.nn.init.zeros_(model.decoder.out.weight)
    torch.nn.init.zeros_(model.decoder.out.bias)
    lr = torch.rand(1, 1, 8, 9)
    with torch.no_grad():
        out = model(lr, (21, 30))
    assert (out - F.interpolate(lr, (21, 30), mode="bicubic", align_corners=False)).abs().max() < 1e-5


def test_window_decoding_equals_whole_output():
    model = tiny_model()
    lr = torch.rand(1, 1, 10, 12)
    with torch.no_grad():
        features = model.encode(lr)
        whole = model(lr, (31, 37))
        part = model.decode_window(lr, features, (10, 12), (31, 37), (5, 19, 11, 30))
    assert (whole[..., 5:19, 11:30] - part).abs().max() < 1e-6


def test_points_decoding_equals_grid_decoding():
    model = tiny_model()
    lr = torch.rand(2, 1, 8, 8)
    ys, xs = torch.tensor([0, 5, 17, 23]), torch.tensor([3, 0, 11, 23])
    with torch.no_grad():
        grid = model(lr, (24, 24))
        points = model.decode_points(lr, model.encode(lr), [((24, 24), ys, xs), ((24, 24), xs, ys)])
    assert (points[0] - grid[0][:, ys, xs]).abs().max() < 1e-6
    assert (points[1] - grid[1][:, xs, ys]).abs().max() < 1e-6


def test_rdn_encoder_keeps_size_and_states_its_receptive_field():
    model = DIINN(1, encoder="rdn", encoder_args={"n_blocks": 2, "n_convs": 2, "growth": 8, "features": 8})
    assert model.encoder(torch.rand(1, 1, 6, 7)).shape == (1, 8, 6, 7)
    assert model.encoder.receptive_radius == 2 * 2 + 3


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="variant"):
        DIINN(variant="z")
    with pytest.raises(ValueError, match="encoder"):
        DIINN(encoder="vgg")
    with pytest.raises(ValueError, match="skip"):
        DIINN(skip="bilinear")


# ---- CUDA (run on a GPU machine: python3 -m pytest -p no:cacheprovider tests/test_model.py -k cuda) ----------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_cuda_fast_decoder_equals_reference_and_the_cpu():
    torch.manual_seed(1)
    model = DIINN(3).eval()  # the paper's decoder
    lr = torch.rand(2, 3, 12, 10)
    shape = shape_at(3.14, 12, 10)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        cpu = model(lr, shape)
        model.cuda()
        fast = model(lr.cuda(), shape)
        reference = model(lr.cuda(), shape, mode="reference")
    assert (fast - reference).abs().max() < 1e-4
    assert (fast.cpu() - cpu).abs().max() < 1e-4


@needs_cuda
def test_cuda_autocast_decoder_stays_close_to_fp32():
    torch.manual_seed(1)
    model = DIINN(1, skip="bicubic").eval().cuda()
    lr = torch.rand(1, 1, 24, 24, device="cuda")
    with torch.no_grad():
        exact = model(lr, (80, 80))
        for dtype in (torch.float16, torch.bfloat16):
            with torch.autocast("cuda", dtype=dtype):
                approx = model(lr, (80, 80))
            assert approx.dtype == torch.float32  # the low precision is inside; the output is fp32
            diff = (approx - exact).abs()
            assert diff.max() < 0.05 and diff.mean() < 2e-3, (dtype, diff.max().item(), diff.mean().item())
