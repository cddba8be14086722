"""Isotropic Z super-resolution: geometry, the explicit-position decoder, the pipeline and adaptation.

The planner has its own tests (test_isotropic_plan.py); the file command is
``batch --isotropic`` (test_batch_isotropic.py).
"""

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from conftest import tiny_model

from diinn_napari.adapt import adapt, adaptation_lr
from diinn_napari.core import Cancelled
from diinn_napari.quality import degrade_axis
from diinn_napari.isotropic import (
    isotropic,
    isotropic_shape,
    isotropic_steps,
    iter_isotropic_volumes,
    output_spacing,
    z_step,
)
from diinn_napari.model.grid import (
    AxisSamples,
    axis_queries,
    bicubic_matrix,
    sample_bicubic_matrix,
    sample_queries,
)
from diinn_napari.weights import save_weights


def phantom(shape=(25, 24, 28), seed=0) -> np.ndarray:
    """A 3D phantom: Gaussian blobs and a tube running obliquely through Z, in [0, 1]."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    vol = np.zeros(shape)
    for _ in range(6):
        c = rng.random(3) * np.array(shape)
        s = 1.5 + 2 * rng.random()
        vol += np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * s * s))
    # a tube along Z, drifting in Y and X
    cy, cx = shape[1] * (0.3 + 0.4 * z / shape[0]), shape[2] * (0.6 - 0.3 * z / shape[0])
    vol += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 1.5**2))
    return (vol / vol.max()).astype(np.float32)


# ---- geometry --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "z, dz, target, expected",
    [(7, 3.0, 1.0, 19), (2, 0.3, 0.1, 4), (5, 1.0, 0.4, 11), (10, 0.5, 0.5, 10), (4, 1.0, 0.3, 11)],
)
def test_output_plane_count(z, dz, target, expected):
    # floor((Z - 1) * dz / target) + 1, robust to 0.3 / 0.1 = 2.9999999999999996
    assert isotropic_shape((z, 5, 6), (dz, 0.2, 0.2), target) == (expected, 5, 6)


def test_target_defaults_to_xy_pixel_and_keeps_leading_axes():
    assert isotropic_shape((2, 3, 9, 4, 5), (2.0, 0.5, 0.5)) == (2, 3, 33, 4, 5)
    assert output_spacing((2.0, 0.5, 0.5)) == (0.5, 0.5, 0.5)
    assert z_step((2.0, 0.5, 0.5)) == 0.25


@pytest.mark.parametrize(
    "spacing, target, message",
    [((1, 1), None, "three"), ((0, 1, 1), None, "> 0"), ((1, 1, float("nan")), None, "finite"),
     ((1, 0.5, 0.5), 2.0, "larger than the input Z step"), ((1, 0.5, 0.5), -1, "target")],
)
def test_bad_spacing_is_refused(spacing, target, message):
    with pytest.raises(ValueError, match=message):
        isotropic_shape((4, 5, 5), spacing, target)


def test_bad_volumes_are_refused(model):
    with pytest.raises(ValueError, match="Z, Y, X"):
        isotropic(np.zeros((5, 5)), (2, 1, 1), model=model, device="cpu")
    with pytest.raises(ValueError, match="at least 2"):
        isotropic(np.zeros((1, 5, 5)), (2, 1, 1), model=model, device="cpu")
    with pytest.raises(TypeError, match="unsupported pixel type"):
        isotropic(np.zeros((3, 5, 5), bool), (2, 1, 1), model=model, device="cpu")
    with pytest.raises(ValueError, match="fusion"):
        isotropic(np.zeros((3, 5, 5)), (2, 1, 1), model=model, device="cpu", fusion="median")
    with pytest.raises(ValueError, match="max_output_voxels"):
        isotropic(np.zeros((3, 5, 5)), (2, 1, 1), model=model, device="cpu", max_output_voxels=10)


# ---- explicit sample positions in the model ---------------------------------------------------------
@pytest.mark.parametrize("n_in, n_out", [(7, 19), (10, 25), (5, 5), (9, 40)])
def test_explicit_positions_reproduce_the_pixel_centre_grid(n_in, n_out):
    centres = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    k, rel = axis_queries(n_in, n_out)
    k2, rel2 = sample_queries(AxisSamples(centres, n_in / n_out), n_in)
    assert torch.equal(k, k2)
    torch.testing.assert_close(rel, rel2, atol=1e-5, rtol=0)
    torch.testing.assert_close(bicubic_matrix(n_in, n_out, 0, n_out, 0, n_in),
                               sample_bicubic_matrix(centres, n_in, 0, n_out, 0, n_in))


def test_point_samples_on_lr_pixels_are_the_lr_pixels():
    k, rel = sample_queries(AxisSamples(np.arange(6, dtype=float), 1 / 3), 6)
    assert torch.equal(k, torch.arange(6)) and torch.all(rel == 0)
    assert torch.equal(sample_bicubic_matrix(np.arange(6, dtype=float), 6, 0, 6, 0, 6), torch.eye(6))
    with pytest.raises(ValueError, match="sample positions"):
        sample_queries(AxisSamples(np.array([0.0, 6.0]), 1.0), 6)


def test_decode_window_with_samples_matches_the_default_grid(model):
    lr = torch.rand(2, 1, 7, 9)
    features = model.encode(lr)
    out_shape = (17, 9)
    centres = (np.arange(17) + 0.5) * 7 / 17 - 0.5
    with torch.no_grad():
        plain = model.decode_window(lr, features, (7, 9), out_shape, (0, 17, 0, 9))
        explicit = model.decode_window(lr, features, (7, 9), out_shape, (0, 17, 0, 9),
                                       samples=(AxisSamples(centres, 7 / 17), None))
        part = model.decode_window(lr, features, (7, 9), out_shape, (3, 11, 2, 7),
                                   samples=(AxisSamples(centres, 7 / 17), None))
    torch.testing.assert_close(plain, explicit, atol=1e-5, rtol=0)
    torch.testing.assert_close(part, explicit[:, :, 3:11, 2:7], atol=1e-6, rtol=0)


# ---- the pipeline ----------------------------------------------------------------------------------
def test_integer_ratio_puts_output_planes_on_input_planes(model):
    vol = (phantom((7, 12, 14)) * 4000).astype(np.uint16)
    out = isotropic(vol, (1.5, 0.5, 0.5), model=model, device="cpu", consistency=1)
    assert out.shape == (19, 12, 14) and out.dtype == np.uint16
    # one back-projection step with the point-sampling degradation makes plane 3 j equal input plane j
    np.testing.assert_array_equal(out[::3], vol)
    plain = isotropic(vol, (1.5, 0.5, 0.5), model=model, device="cpu")
    assert not np.array_equal(plain[::3], vol)  # the random tiny network alone does not interpolate


def test_tiles_and_blocks_do_not_change_the_result(model):
    vol = phantom((6, 13, 11))
    whole = isotropic(vol, (2.5, 1, 1), model=model, device="cpu", block_rows=13, tile_size=64)
    tiled = isotropic(vol, (2.5, 1, 1), model=model, device="cpu", block_rows=4, tile_size=3)
    assert whole.dtype == np.float32 and whole.shape == (13, 13, 11)  # floor(5 * 2.5) + 1
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_the_shells_settings_object_gives_the_keywords_result(model):
    from diinn_napari import RunSettings

    vol = (phantom((5, 9, 10)) * 3000).astype(np.uint16)
    settings = RunSettings(model=model, device="cpu", tile_size=4, intensity="dtype", consistency=1,
                           out_dtype="float32", outlier_clamp=None)
    by_settings = isotropic(vol, (2.0, 1, 1), settings=settings)
    by_keywords = isotropic(vol, (2.0, 1, 1), model=model, device="cpu", tile_size=4, intensity="dtype",
                            consistency=1, out_dtype="float32", outlier_clamp=None)
    assert by_settings.dtype == np.float32
    np.testing.assert_array_equal(by_settings, by_keywords)
    assert not np.array_equal(by_settings, isotropic(vol, (2.0, 1, 1), model=model, device="cpu"))


def test_float64_volumes_keep_their_dtype(model):
    # the engine's one dtype rule: the input's own, computed in float32
    out = isotropic(phantom((4, 6, 7)).astype(np.float64), (2.0, 1, 1), model=model, device="cpu")
    assert out.dtype == np.float64


def test_leading_axes_are_independent_volumes(model):
    vol = np.stack([phantom((5, 9, 10), seed=s) * (1 + s) for s in range(2)])
    out = isotropic(vol, (2.0, 1, 1), model=model, device="cpu")
    assert out.shape == (2, 9, 9, 10)
    for c in range(2):
        np.testing.assert_allclose(out[c], isotropic(vol[c], (2.0, 1, 1), model=model, device="cpu"), atol=1e-5)
    volumes = list(iter_isotropic_volumes(vol, (2.0, 1, 1), model=model, device="cpu", block_rows=4))
    assert [index for index, _ in volumes] == [(0,), (1,)]
    for index, v in volumes:
        np.testing.assert_allclose(v, out[index], atol=1e-5)


def test_fusions(model):
    vol = phantom((5, 9, 10))
    views = {f: isotropic(vol, (2.0, 1, 1), model=model, device="cpu", fusion=f) for f in ("xz", "yz", "mean", "max")}
    assert not np.allclose(views["xz"], views["yz"])  # the two views really differ
    np.testing.assert_allclose(views["mean"], (views["xz"] + views["yz"]) / 2, atol=1e-5)
    np.testing.assert_allclose(views["max"], np.maximum(views["xz"], views["yz"]), atol=1e-5)


def test_outlier_default_is_the_engines(model):
    from diinn_napari import engine

    vol = phantom((4, 8, 9))
    vol[2, 4, 4] = 40.0  # an outlier for every clamp the engine may choose
    default = isotropic(vol, (2.0, 1, 1), model=model, device="cpu", intensity="none")
    explicit = isotropic(vol, (2.0, 1, 1), model=model, device="cpu", intensity="none",
                         outlier_clamp=engine.OUTLIER_CLAMP)
    other = isotropic(vol, (2.0, 1, 1), model=model, device="cpu", intensity="none", outlier_clamp=None)
    np.testing.assert_array_equal(default, explicit)
    assert not np.allclose(default, other)


def test_out_array_is_filled(model):
    vol = phantom((4, 6, 7))
    out = np.zeros((7, 6, 7), np.float32)
    result = isotropic(vol, (2.0, 1, 1), model=model, device="cpu", out=out)
    assert result is out and out.any()
    with pytest.raises(ValueError, match="out has shape"):
        isotropic(vol, (2.0, 1, 1), model=model, device="cpu", out=np.zeros((6, 6, 7), np.float32))


def test_a_volume_isotropic_already_needs_a_target(model):
    vol = phantom((4, 6, 7))
    with pytest.raises(ValueError, match="isotropic already"):
        isotropic(vol, (1.0, 1.0, 1.0), model=model, device="cpu")
    assert isotropic(vol, (1.0, 1.0, 1.0), 0.5, model=model, device="cpu").shape == (7, 6, 7)


def test_nan_in_a_volume_is_refused(model):
    vol = phantom((4, 6, 7))
    vol[2, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        isotropic(vol, (2.0, 1, 1), model=model, device="cpu")


def test_the_callers_model_and_grad_mode_are_left_alone(rng):
    net = tiny_model().train()
    vol = phantom((4, 10, 7))
    steps = isotropic_steps(vol, (2.0, 1, 1), model=net, device="cpu", block_rows=4)
    next(steps)
    assert torch.is_grad_enabled()  # no gradient-free mode held over the caller's code between steps
    for _ in steps:
        pass
    assert net.training
    np.testing.assert_array_equal(isotropic(vol, (2.0, 1, 1), model=net, device="cpu"),
                                  isotropic(vol, (2.0, 1, 1), model=tiny_model(), device="cpu"))


def test_progress_blocks_and_cancel(model):
    vol = phantom((4, 10, 7))
    seen = []
    steps = list(isotropic_steps(vol, (2.0, 1, 1), model=model, device="cpu", block_rows=4,
                                 progress=lambda d, t: seen.append((d, t))))
    assert seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == list(range(1, len(seen) + 1))
    assert [s.rows for s in steps if s.block is not None] == [(0, 4), (4, 8), (8, 10)]
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        isotropic(vol, (2.0, 1, 1), model=model, device="cpu", cancel=stop)


def test_hot_voxel_spreads_only_along_its_z_column(model):
    vol = (phantom((6, 12, 12)) * 1000).astype(np.float32)
    hot = vol.copy()
    hot[3, 6, 6] = 1e6  # far outside the robust range: an outlier
    # the network sees the clamped 3x3x3 median instead; compare with that volume
    from scipy.ndimage import median_filter

    from diinn_napari.isotropic import fit_volume_intensity

    mapping = fit_volume_intensity(hot)
    from diinn_napari.engine import OUTLIER_CLAMP

    med = np.clip(median_filter(mapping.normalize(hot), size=3, mode="nearest"), *OUTLIER_CLAMP)[3, 6, 6]
    replaced = vol.copy()
    replaced[3, 6, 6] = med * (mapping.hi - mapping.lo) + mapping.lo
    a = isotropic(hot, (2.0, 1, 1), model=model, device="cpu", intensity="none")
    b = isotropic(replaced, (2.0, 1, 1), model=model, device="cpu", intensity="none")
    diff = np.abs(a.astype(np.float64) - b)
    column = np.zeros_like(diff, bool)
    column[:, 6, 6] = True
    assert diff[column].max() > 1e5  # the excess comes back at its own position
    assert diff[~column].max() < 1e-2  # and nowhere else


# ---- adaptation ------------------------------------------------------------------------------------
def test_degrade_axis_is_point_sampling_after_blur():
    hr = torch.rand(2, 1, 13, 5)
    torch.testing.assert_close(degrade_axis(hr, 3.0, 0.0, 5), hr[:, :, ::3])
    torch.testing.assert_close(degrade_axis(hr, 3.0, 0.0, 4, offset=1), hr[:, :, 1::3])
    flat = torch.full((1, 1, 20, 4), 0.3)
    torch.testing.assert_close(degrade_axis(flat, 2.0, 1.5, 6, offset=5), torch.full((1, 1, 6, 4), 0.3))
    half = degrade_axis(hr, 1.5, 0.0, 3)  # row 1.5: halfway between rows 1 and 2
    torch.testing.assert_close(half[:, :, 1], (hr[:, :, 1] + hr[:, :, 2]) / 2)
    with pytest.raises(ValueError, match="need"):
        degrade_axis(hr, 3.0, 0.0, 6)


def test_adaptation_improves_xz_views_and_leaves_the_model_alone():
    torch.manual_seed(0)
    base = tiny_model()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    truth = phantom((25, 40, 40), seed=3)
    kept = truth[::3]  # 9 planes, Z step 3 x the XY pixel
    spacing = (3.0, 1.0, 1.0)

    def error(m):
        return float(np.abs(isotropic(kept, spacing, model=m, device="cpu") - truth).mean())

    adapted = adapt(kept, spacing, model=base, steps=60, axial_sigma=0.0, batch=4, learning_rate=2e-3,
                    device="cpu", seed=0)
    assert error(adapted) < 0.7 * error(base)
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k])


def test_adaptation_schedule_is_the_trainers_cosine_down_to_a_tenth():
    from diinn_napari.train.config import learning_rate
    import argparse

    assert adaptation_lr(1e-4, 0, 100) == pytest.approx(1e-4)
    assert adaptation_lr(1e-4, 50, 100) == pytest.approx(0.55e-4)
    assert adaptation_lr(1e-4, 100, 100) == pytest.approx(1e-5)
    trainer = learning_rate(argparse.Namespace(schedule="cosine", lr=1e-4, warmup=0), 30, 100)
    assert adaptation_lr(1e-4, 30, 100) == pytest.approx(1e-5 + 0.9 * trainer)


def test_adaptation_leaves_a_callers_training_model_in_training_mode(model):
    net = model.train()
    adapted = adapt(phantom((4, 12, 12)), (2.0, 1, 1), model=net, steps=1, axial_sigma=0.0, device="cpu")
    assert net.training and not adapted.training and adapted is not net


def test_adaptation_options_are_checked(model):
    vol = phantom((4, 10, 10))
    with pytest.raises(ValueError, match="axial_sigma"):
        adapt(vol, (2.0, 1, 1), model=model, steps=1, axial_sigma=-1, device="cpu")
    with pytest.raises(ValueError, match="too small"):
        adapt(vol, (2.0, 1, 1), model=model, steps=1, axial_sigma=5.0, device="cpu")
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        adapt(vol, (2.0, 1, 1), model=model, steps=3, axial_sigma=0.0, device="cpu", cancel=stop)


# ---- import ---------------------------------------------------------------------------------------
def test_import_does_not_load_torch():
    code = ("import sys, diinn_napari.isotropic as m, diinn_napari.adapt; m.isotropic_shape((3, 4, 4), (2, 1, 1)); "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
