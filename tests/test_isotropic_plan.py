"""The one isotropic planner: where the Z step comes from, what is refused, and the output geometry."""

import subprocess
import sys

import pytest

from diinn_napari.isotropic_plan import (
    REL_TOL,
    IsotropicPlanError,
    default_axial_sigma,
    isotropic_shape,
    output_spacing,
    plan_isotropic,
    volume_axes,
)


def test_target_defaults_to_the_xy_pixel_size():
    plan = plan_isotropic((2, 9, 24, 30), z_step=3.0, pixel_size=(1.0, 1.0), unit="µm")
    assert plan.output_shape == (2, 25, 24, 30) and plan.planes == 25
    assert plan.spacing == (3.0, 1.0, 1.0) and plan.output_spacing == (1.0, 1.0, 1.0)
    assert plan.ratio == 3.0 and plan.step == pytest.approx(1 / 3)
    assert plan.axial_sigma == pytest.approx(default_axial_sigma(3.0)) and not plan.target_given
    assert plan.describe() == "Z step 3 -> 1 µm (9 -> 25 planes)"
    assert list(plan.positions()[::3]) == list(range(9))  # integer ratio: every third output plane is an input plane


def test_non_square_pixels_go_to_the_finer_one():
    plan = plan_isotropic((5, 8, 8), z_step=2.0, pixel_size=(0.5, 0.4))
    assert plan.target == 0.4 and plan.planes == 21


def test_an_override_wins_over_the_metadata_z_step():
    plan = plan_isotropic((4, 12, 12), z_step=1.0, pixel_size=0.5, z_step_override=1.5)
    assert plan.z_step == 1.5 and plan.planes == 10  # floor(3 * 1.5 / 0.5) + 1


def test_without_a_pixel_size_a_target_sets_the_ratio():
    plan = plan_isotropic((7, 12, 12), z_step=2.0, target=0.5)
    assert plan.pixel_size == (0.5, 0.5) and plan.planes == 25 and plan.target_given


@pytest.mark.parametrize("z, dz, target, expected",
                         [(7, 3.0, 1.0, 19), (2, 0.3, 0.1, 4), (5, 1.0, 0.4, 11), (10, 0.5, 0.5, 10), (4, 1.0, 0.3, 11)])
def test_output_plane_count_is_robust_to_float_rounding(z, dz, target, expected):
    assert plan_isotropic((z, 5, 6), dz, 0.2, target=target).planes == expected


@pytest.mark.parametrize("kwargs, reason, words", [
    ({"shape": (8, 8), "z_step": 2.0, "pixel_size": 1.0}, "not_a_volume", "no Z axis"),
    ({"shape": (0, 8, 8), "z_step": 2.0, "pixel_size": 1.0}, "empty", "empty"),
    ({"shape": (1, 8, 8), "z_step": 2.0, "pixel_size": 1.0}, "too_few_planes", "at least 2"),
    ({"shape": (4, 8, 8), "pixel_size": 1.0}, "no_z_step", "Z step is not known"),
    ({"shape": (4, 8, 8), "z_step": float("nan"), "pixel_size": 1.0}, "bad_z_step", "finite number > 0"),
    ({"shape": (4, 8, 8), "z_step": 2.0}, "no_pixel_size", "give a target Z step"),
    ({"shape": (4, 8, 8), "z_step": 2.0, "pixel_size": (1.0, 1.0, 1.0)}, "bad_pixel_size", "(dy, dx)"),
    ({"shape": (4, 8, 8), "z_step": 2.0, "pixel_size": 1.0, "target": 0}, "bad_target", "target Z step"),
    ({"shape": (4, 8, 8), "z_step": 2.0, "pixel_size": 1.0, "target": 3.0}, "target_above_z_step",
     "larger than the input Z step"),
    ({"shape": (4, 8, 8), "z_step": 0.4, "pixel_size": 0.5}, "isotropic_already", "isotropic already"),
])
def test_refusals_say_why(kwargs, reason, words):
    with pytest.raises(IsotropicPlanError, match=words.replace("(", r"\(").replace(")", r"\)")) as err:
        plan_isotropic(**kwargs)
    assert err.value.reason == reason and isinstance(err.value, ValueError)


def test_one_tolerance_for_equal_steps():
    # a Z step within REL_TOL of the pixel size is isotropic already; a target within it of the Z step is the Z step
    with pytest.raises(IsotropicPlanError, match="isotropic already"):
        plan_isotropic((4, 8, 8), 0.5 * (1 + REL_TOL / 2), 0.5)
    assert plan_isotropic((4, 8, 8), 0.5 * (1 + 2 * REL_TOL), 0.5).planes == 4
    same = plan_isotropic((10, 8, 8), 1.0, 0.25, target=1.0 * (1 + REL_TOL / 2))
    assert same.target == 1.0 and same.planes == 10  # not 9: no plane lost to rounding
    with pytest.raises(IsotropicPlanError, match="larger"):
        plan_isotropic((10, 8, 8), 1.0, 0.25, target=1.0 * (1 + 2 * REL_TOL))


def test_an_explicit_target_resamples_an_isotropic_stack():
    assert plan_isotropic((3, 8, 8), 0.4, 0.5, target=0.2).planes == 5


def test_the_library_spacing_helpers():
    assert isotropic_shape((2, 3, 9, 4, 5), (2.0, 0.5, 0.5)) == (2, 3, 33, 4, 5)
    assert output_spacing((2.0, 0.5, 0.5), 1.0) == (1.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="three"):
        isotropic_shape((4, 5, 5), (1, 1))


@pytest.mark.parametrize("axes, order", [("ZYX", [0, 1, 2]), ("QYX", [0, 1, 2]), ("ZCYX", [1, 0, 2, 3]),
                                         ("TZCYX", [0, 2, 1, 3, 4])])
def test_volume_axes_put_z_before_y_x(axes, order):
    assert volume_axes(axes, "f.tif") == order


@pytest.mark.parametrize("axes, words", [("YX", "no Z axis"), ("ZYXS", "colour"), ("ZAYX", "only T, C, Z")])
def test_volume_axes_refuse_what_they_cannot_take(axes, words):
    with pytest.raises(ValueError, match=words):
        volume_axes(axes, "f.tif")


def test_the_planner_imports_without_torch():
    code = ("import sys; from diinn_napari.isotropic_plan import plan_isotropic; plan_isotropic((3, 4, 4), 2, 1); "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
