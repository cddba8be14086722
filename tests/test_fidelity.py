"""Fidelity: the degradation and metrics (quality.py), data consistency, trust map, outliers, RGBA."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diinn_napari import upscale, upscale_steps
from diinn_napari.engine import get_model
from diinn_napari.intensity import fit_intensity
from diinn_napari import quality

from conftest import tiny_model


def silent(model):
    """Zero the decoder output: the model then returns exactly the bicubic interpolation."""
    torch.nn.init.zeros_(model.decoder.out.weight)
    torch.nn.init.zeros_(model.decoder.out.bias)
    return model


def textbook_back_projection(x: np.ndarray, y: np.ndarray, steps: int, floor: float = -np.inf,
                             deep: float = 0.0) -> np.ndarray:
    """x_0 up to ``deep`` below ``floor`` lifted to it, then x <- max(x + U(y - D(x)), min(x_0, floor)),
    on whole (Y, X) float64 images with torch's own resampling."""
    x = np.where((x < floor) & (x >= floor - deep), floor, x)
    xt, yt = torch.from_numpy(x)[None, None].double(), torch.from_numpy(y)[None, None].double()
    lower = xt.clamp(max=floor)
    for _ in range(steps):
        down = F.interpolate(xt, size=y.shape, mode="bicubic", antialias=True, align_corners=False)
        xt = torch.maximum(xt + F.interpolate(yt - down, size=x.shape, mode="bicubic", align_corners=False), lower)
    return xt[0, 0].numpy()


# ---- the degradation -----------------------------------------------------------------------------
@pytest.mark.parametrize("n_hr, n_lr", [(100, 50), (100, 33), (37, 11), (10, 9), (7, 3), (5, 1), (64, 17)])
def test_antialias_matrix_is_torchs_downsampling_on_any_window(n_hr, n_lr, rng):
    x = rng.random((2, n_hr))
    whole = quality.downsample(torch.from_numpy(x)[None, None], (2, n_lr))[0, 0].numpy()
    np.testing.assert_allclose(x @ quality.antialias_matrix(n_hr, n_lr, 0, n_lr, 0, n_hr).T, whole, atol=1e-12)
    start, stop = n_lr // 3, max(n_lr // 3 + 1, n_lr - 1)
    lo, hi = quality.antialias_support(n_hr, n_lr, start, stop)
    part = x[:, lo:hi] @ quality.antialias_matrix(n_hr, n_lr, start, stop, lo, hi).T
    np.testing.assert_allclose(part, whole[:, start:stop], atol=1e-12)
    if lo > 0:
        with pytest.raises(ValueError, match="misses the support"):
            quality.antialias_matrix(n_hr, n_lr, start, stop, lo + 1, hi)


# ---- metrics -------------------------------------------------------------------------------------
def test_identical_images_have_zero_bias_and_no_clipping(rng):
    ref = (rng.random((30, 40)) * 1000).astype(np.uint16)
    assert quality.mean_bias_percent(ref, ref) == 0
    assert quality.clipped_fraction(ref, ref) == 0
    assert quality.psnr(ref, ref, 1000) == np.inf


def test_a_known_offset_gives_the_known_bias(rng):
    ref = rng.normal(500, 100, (64, 64))
    value_range = np.percentile(ref, 99.9) - np.percentile(ref, 0.1)
    assert quality.robust_range(ref) == pytest.approx(value_range)
    assert quality.mean_bias_percent(ref + 7.5, ref) == pytest.approx(100 * 7.5 / value_range)
    assert quality.mean_bias_percent(ref - 2, ref, value_range=400) == pytest.approx(-0.5)


def test_clipped_fraction_counts_only_new_clipping():
    ref = np.array([[0, 5, 10, 250], [255, 100, 3, 7]], np.uint8)
    out = np.array([[0, 0, 0, 255], [255, 100, 3, 7]], np.uint8)
    # (0,0) and (1,0) are at the limit in the reference too; 5 -> 0, 10 -> 0 and 250 -> 255 are new
    assert quality.clipped_fraction(out, ref) == pytest.approx(3 / 8)
    assert quality.clipped_fraction(out.astype(np.float32), ref.astype(np.float32)) == 0  # floats do not clip
    assert quality.clipped_fraction(np.array([-0.1, 0.5]), np.array([0.1, 0.5]), limits=(0, 1)) == 0.5
    with pytest.raises(ValueError, match="same shape"):
        quality.clipped_fraction(out, ref[:1])


def test_lr_consistency_of_a_consistent_image():
    flat = np.full((40, 40), 3.0)
    exact = quality.lr_consistency(flat, np.full((20, 20), 3.0), 1.0)
    assert exact["psnr"] > 100 and exact["bias"] == pytest.approx(0, abs=1e-4)  # float32 rounding only
    scores = quality.lr_consistency(flat + 0.01, np.full((20, 20), 3.0), 1.0)
    assert scores["psnr"] == pytest.approx(40.0, abs=1e-2) and scores["bias"] == pytest.approx(1.0, abs=1e-3)


# ---- data consistency ----------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [2, 2.6, (2, 3.7), (1, 1.5)])
def test_consistency_is_textbook_back_projection(model, rng, scale):
    image = rng.random((31, 27)).astype(np.float32) * 4000
    mapping = fit_intensity(image)
    start = upscale(image, scale, model=model, consistency=0)
    lo, hi = np.percentile(mapping.normalize(image).astype(np.float64), (0.1, 99.9))  # the plane's floor and range
    expected = textbook_back_projection(mapping.normalize(start).astype(np.float64), mapping.normalize(image), 2, lo,
                                        0.02 * (hi - lo))
    got = mapping.normalize(upscale(image, scale, model=model, consistency=2))
    assert np.abs(got - expected).max() < 1e-5


def test_consistency_makes_the_output_agree_with_the_input(model, rng):
    image = (np.add.outer(np.arange(40), np.arange(36)) * 40 + rng.random((40, 36)) * 300).astype(np.float32)
    value_range = quality.robust_range(image)
    agreement = [quality.lr_consistency(upscale(image, 2.5, model=model, consistency=k), image, value_range)["psnr"]
                 for k in (0, 1, 3)]
    assert agreement[0] < agreement[1] < agreement[2]
    assert agreement[2] > agreement[0] + 10


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
@pytest.mark.parametrize("scale", [2, 3.14, (1.5, 4)])
def test_tiled_equals_whole_with_consistency_on(model, rng, dtype, scale):
    image = rng.random((45, 38)) * 200
    image = (image - 100 if np.dtype(dtype).kind == "i" else image).astype(dtype)
    whole, trust_whole = upscale(image, scale, model=model, tile_size=1000, consistency=3, return_trust=True)
    tiled, trust_tiled = upscale(image, scale, model=model, tile_size=11, consistency=3, return_trust=True)
    value_range = quality.robust_range(image)
    if np.dtype(dtype).kind in "ui":  # integers: the same value, or one rounding step at a .5 tie
        assert np.abs(whole.astype(np.int64) - tiled).max() <= 1
        assert (whole != tiled).mean() < 1e-3
    else:
        assert np.abs(whole - tiled).max() / value_range < 1e-4
    assert np.abs(trust_whole - trust_tiled).max() / value_range < 1e-4


def test_consistency_respects_the_planes_floor():
    # a dark plane with bright spots, and a random model that undershoots almost everywhere: its
    # output a little below the plane's floor (p0.1 = 3 counts, less 0.45 of a count) is lifted to
    # the floor, deeper undershoot is kept as the network's own, and the back-projection steps dig
    # no lower than either (the dtype's 0 was the only bound before)
    model = tiny_model()
    image = np.full((32, 32), 3, np.uint16)
    image[8::10, 8::10] = 3000
    floor, deep = 3 - 0.45, 0.02 * (3000 - 3)
    start = upscale(image, 2, model=model, consistency=0, out_dtype=np.float32)  # the network alone
    assert ((start < floor - 1e-3) & (start >= floor - deep + 1e-3)).any()  # shallow undershoot, lifted below
    floats = upscale(image, 2, model=model, consistency=3, out_dtype=np.float32)
    assert (floats >= np.where(start >= floor - deep, floor, start) - 1e-3).all()
    ints, ints_start = (upscale(image, 2, model=model, consistency=k) for k in (3, 0))
    assert ints.dtype == np.uint16 and (ints.astype(np.int64) >= np.minimum(ints_start, 3)).all()


def test_bad_consistency_values_are_refused(model):
    for bad in (-1, 1.5, "on", True):
        with pytest.raises(ValueError, match="consistency must be a whole number"):
            upscale(np.zeros((8, 8), np.uint8), 2, model=model, consistency=bad)


# ---- trust map -----------------------------------------------------------------------------------
def test_trust_map_is_the_correction_in_image_units(model, rng):
    image = rng.random((24, 20)).astype(np.float32) * 1000 + 50
    mapping = fit_intensity(image)
    span = mapping.hi - mapping.lo
    out0, trust0 = upscale(image, 2, model=model, consistency=0, return_trust=True)
    step = textbook_back_projection(mapping.normalize(out0).astype(np.float64), mapping.normalize(image), 1)
    expected0 = np.abs(step - mapping.normalize(out0)) * span  # what one step would correct
    assert trust0.shape == out0.shape and trust0.dtype == np.float32
    assert np.abs(trust0 - expected0).max() / span < 1e-5
    out2, trust2 = upscale(image, 2, model=model, consistency=2, return_trust=True)
    np.testing.assert_allclose(trust2, np.abs(out2 - out0), atol=1e-4 * span)
    assert upscale(image, 2, model=model, consistency=2).shape == out2.shape  # no pair without return_trust


def test_trust_map_is_zero_where_the_model_is_consistent():
    flat = np.full((16, 16), 1234, np.uint16)
    out, trust = upscale(flat, 3, model=silent(tiny_model()), return_trust=True)
    assert (out == 1234).all() and np.abs(trust).max() < 1e-3


def test_steps_carry_the_trust_map_of_finished_planes(model):
    stack = np.random.default_rng(1).random((2, 12, 12)).astype(np.float32)
    steps = list(upscale_steps(stack, 2, model=model, tile_size=6, return_trust=True))
    finished = [s for s in steps if s.plane is not None]
    assert [s.index for s in finished] == [(0,), (1,)]
    assert all(s.trust.shape == (24, 24) for s in finished)
    assert all(s.trust is None for s in steps if s.plane is None)
    assert all(s.trust is None for s in upscale_steps(stack, 2, model=model))


# ---- outliers ------------------------------------------------------------------------------------
def _lr_distance(shape_out, scale, where):
    """Chebyshev distance, in LR pixels, of each output pixel centre from LR pixel ``where``."""
    yy, xx = np.mgrid[0 : shape_out[0], 0 : shape_out[1]]
    return np.maximum(np.abs((yy + 0.5) / scale - 0.5 - where[0]), np.abs((xx + 0.5) / scale - 0.5 - where[1]))


@pytest.mark.parametrize("consistency", [0, 2])
def test_a_hot_pixel_stays_local(consistency):
    """One dtype-max pixel on a dim uint16 plane, x2 with the bundled gray model.

    Beyond the bicubic support (2 LR pixels) the output equals the output
    without the hot pixel within 2 counts (the rounding of the output, plus
    the shift of the plane's p99.9 that the extra pixel causes); beyond 3 LR
    pixels within 1 count. Without the outlier handling it spreads thousands
    of counts over more than 6 LR pixels.
    """
    net = get_model("default", 1, "cpu")
    rng = np.random.default_rng(1)
    plane = np.clip(rng.poisson(20, (48, 48)) + rng.normal(0, 3, (48, 48)), 0, None).astype(np.uint16)
    hot = plane.copy()
    hot[22, 25] = 65535
    base = upscale(plane, 2, model=net, consistency=consistency).astype(np.int64)
    out = upscale(hot, 2, model=net, consistency=consistency).astype(np.int64)
    distance = _lr_distance(out.shape, 2, (22, 25))
    change = np.abs(out - base)
    assert change[distance >= 2].max() <= 2
    assert change[distance >= 3].max() <= 1
    assert out[distance < 1].max() > 30000  # the hot pixel is still there
    spread = np.abs(upscale(hot, 2, model=net, consistency=consistency, outlier_clamp=None).astype(np.int64) - base)
    assert spread[distance >= 3].max() > 100  # what the handling prevents


def test_the_output_is_linear_in_the_excess(model, rng):
    plane = rng.random((40, 40)).astype(np.float32) * 10
    outs = {}
    for value in (1e4, 3e4):  # the hot pixel stays the maximum: the intensity map does not move
        hot = plane.copy()
        hot[20, 17] = value
        outs[value] = upscale(hot, 2.5, model=model)
    delta = np.zeros((40, 40), np.float32)
    delta[20, 17] = 2e4
    bicubic = F.interpolate(torch.from_numpy(delta)[None, None], (100, 100), mode="bicubic", align_corners=False)[0, 0]
    np.testing.assert_allclose(outs[3e4] - outs[1e4], bicubic.numpy(), atol=0.05)


def test_in_range_content_is_unchanged_by_the_clamp(model, rng):
    image = rng.random((30, 30)).astype(np.float32)
    np.testing.assert_array_equal(upscale(image, 2, model=model), upscale(image, 2, model=model, outlier_clamp=None))


def test_tiled_equals_whole_with_outliers(model, rng):
    image = rng.random((40, 40)).astype(np.float32) * 100
    image[5, 5], image[19, 20], image[20, 20], image[33, 2] = 1e5, -4e4, 9e4, 7e4
    whole = upscale(image, 2.5, model=model, consistency=2, tile_size=500)
    tiled = upscale(image, 2.5, model=model, consistency=2, tile_size=9)
    assert np.abs(whole - tiled).max() / quality.robust_range(image) < 1e-4


# ---- the gate's synthetic fluorescence image -----------------------------------------------------
def test_sparse_fluorescence_keeps_its_mean_with_consistency():
    net = get_model("default", 1, "cpu")
    image = quality.sparse_fluorescence((96, 96), spots=6, seed=3)
    assert image.dtype == np.uint16 and np.median(image) < 30
    value_range = quality.robust_range(image)
    out = upscale(image, 2, model=net, consistency=2)
    down = quality.downsample_array(out, image.shape)
    assert abs(quality.mean_bias_percent(down, image, value_range)) < 0.3
    assert abs(out.mean() - image.mean()) / image.mean() < 0.003


# ---- RGBA ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_rgba_keeps_its_alpha(rng, dtype):
    model = tiny_model(channels=3)
    scale = 255 if dtype == np.uint8 else 60000 if dtype == np.uint16 else 1.0
    image = (rng.random((2, 10, 12, 4)) * scale).astype(dtype)
    image[..., 3] = 0
    image[:, 3:7, 4:9, 3] = scale  # a binary mask
    out = upscale(image, 2.5, model=model, rgb=True)
    assert out.shape == (2, 25, 30, 4) and out.dtype == (np.float32 if dtype == np.float32 else dtype)
    np.testing.assert_array_equal(out[..., :3], upscale(image[..., :3], 2.5, model=model, rgb=True))
    alpha = out[..., 3].astype(np.float64)
    assert alpha.min() >= 0 and alpha.max() <= scale  # no overshoot: bilinear
    assert (alpha[:, :5] == 0).all() and (alpha[:, 10:16, 13:20] == pytest.approx(scale))
    bilinear = F.interpolate(torch.from_numpy(image[0, ..., 3].astype(np.float32))[None, None], (25, 30),
                             mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(alpha[0], bilinear, atol=0.5 if dtype != np.float32 else 1e-5)


# ---- dark backgrounds: the consistency step digs no holes ----------------------------------------
def _on_output_grid(image: np.ndarray, out_shape) -> np.ndarray:
    """Each output pixel's nearest input pixel."""
    from diinn_napari.model.grid import nearest_lr_index

    return image[nearest_lr_index(image.shape[0], out_shape[0])][:, nearest_lr_index(image.shape[1], out_shape[1])]


@pytest.mark.parametrize("dtype, seed", [(np.uint8, 2), (np.uint16, 1)])
@pytest.mark.parametrize("scale", [2, 4])
def test_dark_background_fluorescence_gets_no_holes(dtype, seed, scale):
    """Nuclei and spots on a dark, Poisson-noisy background, the bundled gray model, default settings.

    Before the data-bounded step (bicubic back-projection clipped to the
    dtype's range) the uint8 plane got 0.46 % (x2) and 0.60 % (x4) new zero
    pixels, the uint16 plane 1.9 % and 2.5 %; now none may exceed 0.1 %, for
    integer and float output, and the output still explains its input.
    """
    net = get_model("default", 1, "cpu")
    image = quality.dark_fluorescence((96, 96), dtype, seed=seed)
    value_range = quality.robust_range(image)
    out = upscale(image, scale, model=net)
    assert out.dtype == dtype
    assert quality.new_zero_fraction(out, _on_output_grid(image, out.shape)) <= 0.001
    assert quality.undershoot_fraction(out, image) <= 0.001
    floats = upscale(image, scale, model=net, out_dtype=np.float32)
    assert quality.undershoot_fraction(floats, image) <= 0.001
    assert quality.new_zero_fraction(floats, _on_output_grid(image, out.shape)) <= 0.001
    agreement = quality.lr_consistency(floats, image.astype(np.float32), value_range)
    assert agreement["psnr"] > 50 and abs(agreement["bias"]) <= 0.3


def degraded_with_bicubic(hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """``hr`` downsampled by the training degradation and rounded to its integer dtype, and bicubic of that LR."""
    limit = np.iinfo(hr.dtype).max
    lr = np.clip(np.rint(quality.downsample_array(hr, (hr.shape[0] // scale, hr.shape[1] // scale))), 0, limit)
    lr = lr.astype(hr.dtype)
    bicubic = F.interpolate(torch.from_numpy(lr.astype(np.float32))[None, None], hr.shape, mode="bicubic",
                            align_corners=False)[0, 0].numpy()
    return lr, np.clip(np.rint(bicubic), 0, limit).astype(hr.dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_dark_background_ground_truth_clips_no_more_than_bicubic(dtype):
    """Downsample, upscale back, compare: newly clipped pixels never more than bicubic's, at most 0.1 %.

    The 0.1 % holds where the LR itself has no pixel at 0. The degradation's
    negative lobes clip the LR of the 16-bit plane (spots of thousands of
    counts on a background of 6) to 0 in rings around the spots; there the
    output keeps some of those zeros, still far fewer than bicubic.
    """
    net = get_model("default", 1, "cpu")
    hr = quality.dark_fluorescence((96, 96), dtype, seed=5)
    for scale in (2, 4):
        lr, bicubic = degraded_with_bicubic(hr, scale)
        out = upscale(lr, output_shape=hr.shape, model=net)
        clipped = quality.clipped_fraction(out, hr)
        assert clipped <= quality.clipped_fraction(bicubic, hr)
        if not (lr == 0).any():
            assert clipped <= 0.001


def test_the_bounds_bind_and_tiles_still_agree(rng):
    """A random model undershoots everywhere: the bounds bind, and tiled equals whole (floats and integers)."""
    model = tiny_model()
    image = quality.dark_fluorescence((45, 38), np.uint16, seed=3)
    floor = float(np.percentile(image, 0.1)) - 0.45
    for dtype in (np.uint16, np.float32):
        for scale in (2, 3.14, (1.5, 4)):
            whole = upscale(image, scale, model=model, tile_size=1000, out_dtype=dtype)
            tiled = upscale(image, scale, model=model, tile_size=11, out_dtype=dtype)
            start = upscale(image, scale, model=model, tile_size=11, out_dtype=dtype, consistency=0)
            assert (whole.astype(np.float64) >= np.minimum(start.astype(np.float64), floor) - 1).all()
            assert np.abs(whole.astype(np.float64) - tiled).max() / quality.robust_range(image) < 1e-4


def test_a_plane_clipped_at_zero_gets_no_more_zeros_than_bicubic():
    """Real use on nuclei whose background the camera clipped at 0 (half the pixels are 0, p0.1 = 0): the floor
    cannot keep the back-projection off 0, so before the hole bound the bundled model made 3.9 / 4.5 / 4.7 %
    new zero pixels at x2 / x3 / x4 where bicubic makes 2.4 / 2.7 / 2.9 % (as on microscopy/xyzc_16bit__dna_conf_wf);
    now fewer than bicubic, and the bound keeps tiles equal to the whole."""
    net = get_model("default", 1, "cpu")
    image = np.clip(quality.dark_fluorescence((96, 96), np.uint16, seed=1).astype(np.int64) - 6, 0, None).astype(np.uint16)
    assert 0.4 < (image == 0).mean() < 0.6
    for scale in (2, 3, 4):
        out = upscale(image, scale, model=net)
        bicubic = F.interpolate(torch.from_numpy(image.astype(np.float32))[None, None], out.shape, mode="bicubic",
                                align_corners=False)[0, 0].numpy()
        nearest = _on_output_grid(image, out.shape)
        assert quality.new_zero_fraction(out, nearest) <= quality.new_zero_fraction(np.rint(bicubic), nearest)
        agreement = quality.lr_consistency(out.astype(np.float32), image.astype(np.float32), quality.robust_range(image))
        assert agreement["psnr"] > 50
    tiled = upscale(image, (1.5, 4), model=tiny_model(), out_dtype=np.uint16, tile_size=11)
    whole = upscale(image, (1.5, 4), model=tiny_model(), out_dtype=np.uint16, tile_size=1000)
    assert np.abs(whole.astype(np.int64) - tiled).max() <= 1 and (whole != tiled).mean() < 1e-3


# ---- few levels: dim data whose quantisation step is a large part of its range -------------------
def test_data_bounds_flag_few_level_planes():
    from diinn_napari.engine import FEW_LEVELS, _normalised

    few = quality.few_levels((64, 64), 13, np.uint16, seed=0)
    many = quality.dark_fluorescence((64, 64), np.uint16, seed=0)
    floats = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    levels = np.round(floats * 10) / 10  # a float plane with 11 values
    flags = {name: _normalised(plane, False, "auto", np.dtype(np.float32))[3].few[0]
             for name, plane in (("few", few), ("many", many), ("floats", floats), ("levels", levels))}
    assert flags == {"few": True, "many": False, "floats": False, "levels": True}
    bounds = _normalised(few, False, "auto", np.dtype(np.uint16))[3]
    mapping = fit_intensity(few)
    assert bounds.step[0] == pytest.approx(1 / (mapping.hi - mapping.lo))
    assert FEW_LEVELS == 64


def few_level_gains(levels: int, dtype, seed: int) -> dict[int, float]:
    """The bundled gray model's PSNR gain over bicubic at x2 and x4 on a 96 px ``quality.few_levels`` plane."""
    net = get_model("default", 1, "cpu")
    hr = quality.few_levels((96, 96), levels, dtype, seed=seed)
    value_range = quality.robust_range(hr)
    gains = {}
    for scale in (2, 4):
        lr, bicubic = degraded_with_bicubic(hr, scale)
        out = upscale(lr, output_shape=hr.shape, model=net)
        gains[scale] = quality.psnr(out, hr, value_range) - quality.psnr(bicubic, hr, value_range)
    return gains


@pytest.mark.parametrize("levels, dtype, seed", [(13, np.uint16, 3), (8, np.uint8, 4)])
def test_few_level_planes_do_not_lose_to_bicubic(levels, dtype, seed):
    """A smooth texture spanning 8 or 13 counts: before, the network sharpened the quantisation steps and the
    back-projection enforced them (-0.50 / -0.27 dB at x2 / x4 for 13 levels, -0.67 dB at x2 for 8); now the
    output stays within 0.05 dB of bicubic (measured -0.03 / +0.04 and -0.01 dB)."""
    for scale, gain in few_level_gains(levels, dtype, seed).items():
        assert gain > -0.05, f"x{scale}: {gain:+.3f} dB over bicubic"


@pytest.mark.parametrize("levels, dtype, seed, scales", [(13, np.uint16, 4, (4,)), (32, np.uint8, 5, (3, 4))])
def test_few_level_structure_above_the_step_is_kept(levels, dtype, seed, scales):
    """Where the structure spans more than the rounding (13+ levels at x4, 32 at x3), the back-projection still
    enforces it: its residual is Wiener-shrunk by the rounding noise, not cut by a fixed half-step dead zone
    (that one: 13 levels x4 +0.08 dB, 32 levels x3 / x4 +0.57 / +0.82 dB; now +0.18, +0.79 / +1.12)."""
    net = get_model("default", 1, "cpu")
    hr = quality.few_levels((96, 96), levels, dtype, seed=seed)
    value_range = quality.robust_range(hr)
    for scale in scales:
        lr, bicubic = degraded_with_bicubic(hr, scale)
        gain = quality.psnr(upscale(lr, output_shape=hr.shape, model=net), hr, value_range) - quality.psnr(
            bicubic, hr, value_range)
        assert gain > {3: 0.7, 4: 0.15 if levels < 32 else 1.0}[scale], f"x{scale}: {gain:+.3f} dB over bicubic"


@pytest.mark.parametrize("out_dtype", [np.uint16, np.float32])
def test_few_level_planes_tiled_equal_whole(out_dtype):
    """The few-level path (detail threshold, residual statistics over 3x3 LR neighbours) with a random model,
    anisotropic and non-integer ratios: tiles read the neighbours the whole plane reads."""
    image = quality.few_levels((45, 38), 13, np.uint16, seed=2)
    for scale in (2, 3.14, (1.5, 4)):
        whole = upscale(image, scale, model=tiny_model(), tile_size=1000, consistency=3, out_dtype=out_dtype)
        tiled = upscale(image, scale, model=tiny_model(), tile_size=11, consistency=3, out_dtype=out_dtype)
        if out_dtype == np.uint16:
            assert np.abs(whole.astype(np.int64) - tiled).max() <= 1 and (whole != tiled).mean() < 1e-3
        else:
            assert np.abs(whole - tiled).max() / quality.robust_range(image) < 1e-4


# Not met yet (issue 21 stays open): a 72-minute CPU continuation with --levels 0.3 moved these by
# under 0.01 dB, and at x2 (and 8 levels at x4) the best linear filter fitted on the truth gains only
# +0.04 to +0.09 dB over bicubic here (docs/fidelity.md, the oracles). strict: the day a model gains
# here, the marker fails and must come off.
@pytest.mark.xfail(strict=True, reason="the bundled gray model ties with bicubic on few-level planes (issue 21)")
@pytest.mark.parametrize("levels, dtype, seed", [(8, np.uint16, 3), (13, np.uint16, 4), (32, np.uint8, 5)])
def test_few_level_planes_beat_bicubic(levels, dtype, seed):
    """Issue 21: dim data of 8 to 32 levels must gain over bicubic, not only tie with it, at x2 and x4.

    The planes of ``benchmarks/fidelity.py --sets synthetic``. Not having seen a quantised input, the
    bundled gray model v0.4 sharpens the quantisation steps; the engine's soft threshold only brings it
    back to bicubic at x2 (measured -0.00 / -0.01 / +0.02 dB); at x4 the Wiener residual gives -0.02 /
    +0.18 / +1.12 dB. A model trained with ``--levels`` items could use the structure under the steps.
    """
    for scale, gain in few_level_gains(levels, dtype, seed).items():
        assert gain > FEW_LEVEL_MARGIN, f"x{scale}: {gain:+.3f} dB over bicubic"


FEW_LEVEL_MARGIN = 0.1  # dB over bicubic: a clear gain, well above the +-0.01 dB of a tie
