"""The training pair sampler: scale distributions and the scientific-statistics options."""

import pytest
import torch

from diinn_napari.train.data import (LEVELS_RANGE, PairSampler, downsample, jitter_intensity, parse_scales, quantise_levels,
                                     sparse_spots)


def smooth_plane(size=(160, 200), seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 1, size[0] // 8, size[1] // 8, generator=g)
    return torch.nn.functional.interpolate(base, size=size, mode="bilinear", align_corners=False)[0]


@pytest.fixture
def planes():
    return [smooth_plane(seed=i) for i in range(3)]


def draw(sampler, seed=0, n=16):
    return sampler.sample_batch(torch.Generator().manual_seed(seed), n)


@pytest.mark.parametrize("text, expected", [
    ("2,3,4", ("choice", [2.0, 3.0, 4.0])),
    ("4,2", ("choice", [4.0, 2.0])),
    ("1-4", ("uniform", [1.0, 4.0])),
    ("1-4:0.85,4-8:0.15", ("mix", [[1.0, 4.0, 0.85], [4.0, 8.0, 0.15]])),
    ("1-4,6,8", ("mix", [[1.0, 4.0, 1.0], [6.0, 6.0, 1.0], [8.0, 8.0, 1.0]])),
])
def test_scale_distributions_parse(text, expected):
    assert parse_scales(text) == expected


@pytest.mark.parametrize("text", ["0.5-2", "4-2", "", "a,b", "2:0", "2:-1"])
def test_bad_scale_distributions_are_refused_clearly(text):
    with pytest.raises(ValueError, match="scale"):
        parse_scales(text)


def test_max_scale_of_every_kind(planes):
    for text, top in [("4,2", 4), ("1-4", 4), ("1-4:0.9,6-8:0.1", 8)]:
        assert PairSampler(planes, 16, parse_scales(text)).max_scale() == top


def test_same_seed_same_batch_and_shapes(planes):
    sampler = PairSampler(planes, 16, parse_scales("1-4:0.8,6-8:0.2"), noise=0.02, dark=0.3, sparse=0.3,
                          jitter=0.3, shot_noise=0.3, aniso=0.3)
    lr_a, hr_a = draw(sampler, seed=1)
    lr_b, hr_b = draw(sampler, seed=1)
    lr_c, _ = draw(sampler, seed=2)
    assert torch.equal(lr_a, lr_b) and all(torch.equal(a, b) for a, b in zip(hr_a, hr_b))
    assert not torch.equal(lr_a, lr_c)
    assert lr_a.shape == (16, 1, 16, 16) and len(hr_a) == 16
    for hr in hr_a:
        assert hr.shape[0] == 1 and 16 <= min(hr.shape[-2:]) and max(hr.shape[-2:]) <= 200
        assert torch.isfinite(hr).all()


def test_one_sample_is_a_batch_of_one(planes):
    sampler = PairSampler(planes, 16, parse_scales("2,3"))
    lr, hr = sampler.sample(torch.Generator().manual_seed(5))
    lrs, hrs = sampler.sample_batch(torch.Generator().manual_seed(5), 1)
    assert torch.equal(lr, lrs[0]) and torch.equal(hr, hrs[0])


def test_large_scales_are_drawn_and_capped_by_the_plane(planes):
    big = [smooth_plane((300, 300))]
    _, hrs = draw(PairSampler(big, 16, parse_scales("8")), n=4)
    assert all(hr.shape[-2:] == (128, 128) for hr in hrs)
    _, hrs = draw(PairSampler(planes, 32, parse_scales("8")), n=4)  # 160 x 200 planes: at most x5, isotropic
    assert all(hr.shape[-2:] == (160, 160) for hr in hrs)


def test_lr_is_the_downsampled_hr_without_noise(planes):
    sampler = PairSampler(planes, 16, parse_scales("1-4"), dark=0.5, sparse=0.5, jitter=0.5, aniso=0.5)
    lr, hrs = draw(sampler)
    for i, hr in enumerate(hrs):
        assert torch.allclose(lr[i], downsample(hr[None], (16, 16))[0], atol=1e-6)


def test_anisotropic_items_have_independent_axis_scales(planes):
    lr, hrs = draw(PairSampler(planes, 16, parse_scales("3-4"), aniso=1.0), n=32)
    shapes = [tuple(hr.shape[-2:]) for hr in hrs]
    assert lr.shape[-2:] == (16, 16)
    assert any(16 in s and max(s) >= 48 for s in shapes)  # the (s, 1) case, in either orientation
    assert any(min(s) > 16 and s[0] != s[1] for s in shapes)  # two different scales > 1
    _, iso = draw(PairSampler(planes, 16, parse_scales("3-4"), aniso=0.0), n=32)
    assert all(hr.shape[-2] == hr.shape[-1] for hr in iso)


def test_axial_items_are_point_samples_of_the_rows_at_the_lr_pixel_centres():
    """Z of a stack: rows only, LR row j = the (blurred) HR row (j + 1/2) * 3 - 1/2, columns untouched."""
    noise = [torch.rand(1, 160, 200, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    lr, hrs = draw(PairSampler(noise, 16, parse_scales("3"), axial=1.0), n=48)
    assert lr.shape == (48, 1, 16, 16) and all(hr.shape == (1, 48, 16) for hr in hrs)
    exact = [torch.equal(lr[i], hr[:, 1::3]) for i, hr in enumerate(hrs)]
    assert 6 <= sum(exact) <= 30  # a third without axial blur: pure point samples
    # the others are blurred down the rows (sigma up to the isotropic default): smoother than the samples
    smoothing = [float(lr[i].diff(dim=-2).abs().mean() / hr[:, 1::3].diff(dim=-2).abs().mean())
                 for i, hr in enumerate(hrs) if not exact[i]]
    assert max(smoothing) < 1 and sorted(smoothing)[len(smoothing) // 2] < 0.6
    again, _ = draw(PairSampler(noise, 16, parse_scales("3"), axial=1.0), n=48)
    torch.testing.assert_close(lr, again)


def test_dark_crops_are_background_dominated():
    # a plane that is bright on the left half and dark on the right
    plane = torch.zeros(1, 128, 256)
    plane[:, :, :128] = 0.8
    plane += 0.05 * smooth_plane((128, 256))
    plain = torch.stack([hr.mean() for hr in draw(PairSampler([plane], 16, parse_scales("2"), dark=0.0), n=64)[1]])
    dark = torch.stack([hr.mean() for hr in draw(PairSampler([plane], 16, parse_scales("2"), dark=1.0), n=64)[1]])
    assert dark.mean() < 0.5 * plain.mean()
    assert (dark < 0.1).float().mean() > 0.8


def test_sparse_items_are_dark_with_bright_spots(planes):
    _, hrs = draw(PairSampler(planes, 16, parse_scales("2-4"), sparse=1.0), n=32)
    values = torch.cat([hr.flatten() for hr in hrs])
    assert values.median() < 0.15  # background-dominated
    assert max(float(hr.max()) for hr in hrs) > 0.5  # spots
    assert min(float(hr.min()) for hr in hrs) < 0  # background below the normalised 0 occurs


def test_sparse_spots_are_deterministic_and_placed_on_the_crop():
    u = torch.rand(28, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    background = torch.zeros(1, 40, 50)
    a, b = sparse_spots(background, u), sparse_spots(background, u)
    assert a.shape == (1, 40, 50) and torch.equal(a, b)


def test_jitter_reaches_values_at_and_below_zero(planes):
    _, hrs = draw(PairSampler(planes, 16, parse_scales("2"), jitter=1.0), n=64)
    assert any(float(hr.min()) < -0.01 for hr in hrs)
    assert any(bool((hr == 0).any()) for hr in hrs)  # clipped at exactly 0
    # offset, contrast, gamma: the crop means spread out
    means = torch.stack([hr.mean() for hr in hrs])
    assert means.std() > 0.05


def test_jitter_keeps_the_sign_and_order_of_values():
    x = torch.linspace(-0.2, 1.2, 50)[None, None]
    out = jitter_intensity(x, torch.tensor([0.9, 0.5, 0.5, 0.99], dtype=torch.float64))  # no floor
    assert (out.diff(dim=-1) > 0).all()


def test_shot_noise_grows_with_the_signal():
    dim, bright = torch.full((1, 128, 128), 0.05), torch.full((1, 128, 128), 0.9)
    sampler = PairSampler([dim, bright], 16, parse_scales("2"), shot_noise=1.0)
    lr, hrs = draw(sampler, n=64)
    clean = torch.stack([downsample(hr[None], (16, 16))[0] for hr in hrs])
    residual = lr - clean
    is_dim = torch.tensor([float(hr.mean()) < 0.5 for hr in hrs])
    assert residual.abs().max() > 0
    assert residual[~is_dim].std() > 1.5 * residual[is_dim].std()
    assert abs(float(residual.mean())) < 0.01  # zero-mean: noise must not bias the training signal
    # the HR target stays clean
    assert all(torch.equal(hr, torch.full_like(hr, float(hr.flatten()[0]))) for hr in hrs)


def test_quantise_levels_gives_that_many_levels_over_each_items_range():
    ramp = torch.linspace(-0.3, 1.7, 400).view(1, 1, 20, 20)
    x = torch.cat([ramp, 0.1 * ramp.flip(-1), torch.full_like(ramp, 0.4)])
    out = quantise_levels(x, torch.tensor([8.0, 64.0, 13.0]))
    assert [len(torch.unique(item)) for item in out[:2]] == [8, 64]
    for item, source in zip(out, x):  # the extremes kept, every pixel within half a step of its value
        assert float(item.min()) == pytest.approx(float(source.min())) and float(item.max()) == pytest.approx(float(source.max()))
    assert (out[0] - x[0]).abs().max() <= 2.0 / 7 / 2 + 1e-6
    assert torch.equal(out[2], x[2])  # a constant item unchanged


def test_levels_items_have_few_equally_spaced_levels_and_a_smooth_target(planes):
    lr, hrs = draw(PairSampler(planes, 16, parse_scales("2"), levels=1.0, shot_noise=0.5), n=32)
    counts = []
    for item, hr in zip(lr, hrs):
        values = torch.unique(item).double()
        step = float(values.diff().min())
        on_grid = (values - values[0]) / step
        assert torch.allclose(on_grid, on_grid.round(), atol=1e-3)  # equally spaced levels from the minimum
        counts.append(round(float(on_grid[-1])) + 1)
        assert len(torch.unique(hr)) > 200  # the HR target untouched
    assert all(LEVELS_RANGE[0] <= c <= LEVELS_RANGE[1] for c in counts)
    assert max(counts) - min(counts) >= 10  # a range of level counts, not one
    smooth, _ = draw(PairSampler(planes, 16, parse_scales("2"), levels=0.0), n=32)
    assert all(len(torch.unique(item)) > 100 for item in smooth)
    part, _ = draw(PairSampler(planes, 16, parse_scales("2"), levels=0.3), n=64)
    few = sum(len(torch.unique(item)) <= LEVELS_RANGE[1] for item in part)
    assert 8 <= few <= 32


@pytest.mark.parametrize("option", ["dark", "sparse", "jitter", "shot_noise", "aniso", "axial", "levels"])
def test_fractions_outside_0_1_are_refused(planes, option):
    with pytest.raises(ValueError, match=option):
        PairSampler(planes, 16, parse_scales("2"), **{option: 1.5})

