"""The isotropic plan: where a stack's Z step comes from, whether Z can be super-resolved, and to what.

    from diinn_napari.isotropic_plan import plan_isotropic
    plan = plan_isotropic((25, 512, 512), z_step=2.0, pixel_size=(0.5, 0.5))
    plan.output_shape, plan.output_spacing        # (97, 512, 512), (0.5, 0.5, 0.5)

One rule for the widget, the batch command and the library, in plain values
(no torch, no napari, no files): the shells read the Z step and pixel size
from a layer's scale or a file's metadata and hand them here.

Z planes are *point samples*: input plane ``j`` lies at ``z0 + j * dz`` and
output plane ``k`` at ``z0 + k * target``, so the output has
``floor((Z - 1) * dz / target) + 1`` planes and, when ``dz / target`` is an
integer ``r``, output plane ``r * j`` lies on input plane ``j``.

Tolerance: two steps closer than :data:`REL_TOL` (relative) are the same step.
A stack whose Z step is within it of the XY pixel size is isotropic already;
a target within it of the Z step is the Z step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Steps that differ by less than this, relatively, are equal (metadata stored as float32, 1/resolution round trips).
REL_TOL = 1e-6
# FWHM / sigma of a Gaussian.
FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))
# Why a plan was refused (IsotropicPlanError.reason): the shells add their own remedy (an option, a layer's scale).
REASONS = ("not_a_volume", "empty", "too_few_planes", "no_z_step", "bad_z_step", "no_pixel_size", "bad_pixel_size",
           "bad_target", "target_above_z_step", "isotropic_already")


class IsotropicPlanError(ValueError):
    """A stack that cannot be resampled as asked; ``reason`` is one of :data:`REASONS`, the message says why."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class IsotropicPlan:
    """How Z of one (..., Z, Y, X) stack is resampled. Steps are in ``unit`` (or the stack's own unit if None).

    ``shape``: the input (..., Z, Y, X); ``z_step``: the input Z step;
    ``pixel_size``: (dy, dx) (the target when the stack had none: only
    ``target / z_step`` matters then); ``target``: the output Z step;
    ``planes``: the output Z plane count; ``axial_sigma``: the default axial
    blur of adaptation (XY pixels, :func:`default_axial_sigma`);
    ``target_given``: whether ``target`` was asked for (else the XY pixel size).
    """

    shape: tuple[int, ...]
    z_step: float
    pixel_size: tuple[float, float]
    target: float
    planes: int
    axial_sigma: float
    unit: str | None = None
    target_given: bool = False

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(dz, dy, dx) of the input."""
        return (self.z_step, *self.pixel_size)

    @property
    def output_spacing(self) -> tuple[float, float, float]:
        """(dz, dy, dx) of the output: Z at ``target``, Y and X unchanged."""
        return (self.target, *self.pixel_size)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """(..., planes, Y, X): only Z changes."""
        return self.shape[:-3] + (self.planes,) + self.shape[-2:]

    @property
    def step(self) -> float:
        """The output Z step in input planes, ``target / z_step`` (<= 1)."""
        return self.target / self.z_step

    @property
    def ratio(self) -> float:
        """Output planes per input plane, ``z_step / target`` (>= 1)."""
        return self.z_step / self.target

    def positions(self) -> np.ndarray:
        """The output planes' Z positions in input-plane units (:func:`z_positions`)."""
        return z_positions(self.shape[-3], self.step)

    def describe(self) -> str:
        """One line for a user: 'Z step 3 -> 1 µm (9 -> 25 planes)'."""
        unit = f" {self.unit}" if self.unit else ""
        return f"Z step {self.z_step:g} -> {self.target:g}{unit} ({self.shape[-3]} -> {self.planes} planes)"


def plan_isotropic(
    shape: Sequence[int],
    z_step: float | None = None,
    pixel_size: float | Sequence[float] | None = None,
    *,
    z_step_override: float | None = None,
    target: float | None = None,
    unit: str | None = None,
) -> IsotropicPlan:
    """Plan the Z resampling of a (..., Z, Y, X) stack; an :class:`IsotropicPlanError` says what is missing.

    shape: the stack's (..., Z, Y, X) sizes (axes in front of Z are volumes of their own).
    z_step: the Z step the stack's metadata gives, or None if unknown.
    pixel_size: the XY pixel size, one number or (dy, dx), or None if unknown.
    z_step_override: a Z step the user gave; wins over ``z_step``.
    target: the output Z step; default the XY pixel size ``min(dy, dx)``.
        Without a pixel size a target is needed (only ``target / z_step`` matters).
    unit: the unit of all steps (for messages and :meth:`IsotropicPlan.describe`).

    Refused (``reason``): fewer than 3 axes or 2 Z planes, no or a bad Z step,
    no pixel size and no target, a target above the Z step (that drops
    planes), and, without a target, a Z step not larger than the XY pixel
    size (isotropic already). Steps within :data:`REL_TOL` count as equal.
    """
    shape = tuple(int(n) for n in shape)
    unit_text = f" {unit}" if unit else ""
    if len(shape) < 3:
        raise IsotropicPlanError(f"shape {shape} has no Z axis: isotropic resampling needs a (..., Z, Y, X) stack",
                                 "not_a_volume")
    if min(shape) < 1:
        raise IsotropicPlanError(f"the stack is empty (shape {shape})", "empty")
    if shape[-3] < 2:
        raise IsotropicPlanError(f"the stack has {shape[-3]} Z plane: isotropic resampling needs at least 2",
                                 "too_few_planes")
    dz = z_step_override if z_step_override is not None else z_step
    if dz is None:
        raise IsotropicPlanError("the Z step is not known (no calibration); give it, in the unit of the XY pixel size",
                                 "no_z_step")
    dz = _positive(dz, "the Z step", "bad_z_step")
    if target is not None:
        target = _positive(target, "the target Z step", "bad_target")
    if pixel_size is None:
        if target is None:
            raise IsotropicPlanError("the XY pixel size is not known, so the Z step to reach is not either; "
                                     "give a target Z step", "no_pixel_size")
        dy = dx = target
    else:
        dy, dx = _pixel_pair(pixel_size)
    xy = min(dy, dx)
    if target is None:
        if dz <= xy * (1 + REL_TOL):
            raise IsotropicPlanError(
                f"the Z step {dz:g}{unit_text} is not larger than the XY pixel size {xy:g}{unit_text}: the voxels "
                f"are isotropic already (no Z anisotropy); give a target Z step smaller than {dz:g} to add planes anyway",
                "isotropic_already")
        resolved = xy
    elif math.isclose(target, dz, rel_tol=REL_TOL):
        resolved = dz  # the same step: no plane may be lost to rounding
    elif target > dz:
        raise IsotropicPlanError(
            f"the target Z step {target:g}{unit_text} is larger than the input Z step {dz:g}{unit_text}: isotropic "
            f"resampling only adds planes; give a target <= {dz:g} (default: the XY pixel size)", "target_above_z_step")
    else:
        resolved = target
    return IsotropicPlan(shape=shape, z_step=dz, pixel_size=(dy, dx), target=resolved,
                         planes=len(z_positions(shape[-3], resolved / dz)), axial_sigma=default_axial_sigma(dz / xy),
                         unit=unit, target_given=target is not None)


def _positive(value, what: str, reason: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise IsotropicPlanError(f"{what} must be a number > 0, got {value!r}", reason) from None
    if not (math.isfinite(number) and number > 0):
        raise IsotropicPlanError(f"{what} must be a finite number > 0, got {value!r}", reason)
    return number


def _pixel_pair(pixel_size) -> tuple[float, float]:
    values = (pixel_size, pixel_size) if np.ndim(pixel_size) == 0 else tuple(pixel_size)
    if len(values) != 2:
        raise IsotropicPlanError(f"the XY pixel size must be one number or (dy, dx), got {pixel_size!r}",
                                 "bad_pixel_size")
    return (_positive(values[0], "the Y pixel size", "bad_pixel_size"),
            _positive(values[1], "the X pixel size", "bad_pixel_size"))


def z_positions(n_in: int, step: float) -> np.ndarray:
    """Point sampling: output plane positions ``k * step`` in input-plane units, ``k = 0 .. floor((n_in - 1) / step)``.

    Positions within 1e-9 of an integer are snapped to it, so float rounding
    (0.3 / 0.1 = 2.9999999999999996) cannot move an output plane off the
    input plane it should coincide with, nor drop the last one.
    """
    n_out = int(np.floor((n_in - 1) / step + 1e-9)) + 1
    p = np.arange(n_out, dtype=np.float64) * step
    snapped = np.rint(p)
    return np.minimum(np.where(np.abs(p - snapped) < 1e-9, snapped, p), n_in - 1)


def default_axial_sigma(ratio: float) -> float:
    """Default extra axial blur, in XY pixels, for a Z step ``ratio`` times the XY pixel size.

    Assumes both axes are sampled at Nyquist of their optics (PSF FWHM = 2
    samples: 2 dz axially, 2 dx laterally); the axial blur an XY plane lacks
    is then a Gaussian of sigma ``2 / 2.355 * sqrt(ratio^2 - 1)`` XY pixels.
    """
    return 2 / FWHM_PER_SIGMA * math.sqrt(max(ratio * ratio - 1.0, 0.0))


# ---- the library's spacing form: (dz, dy, dx) ---------------------------------------------------------
def check_spacing(spacing) -> tuple[float, float, float]:
    """(dz, dy, dx) as three finite numbers > 0, or a ValueError."""
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be (dz, dy, dx), three numbers, got {spacing!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be (dz, dy, dx), three finite numbers > 0 in one unit, got {spacing!r}")
    return values


def plan_spacing(shape: Sequence[int], spacing, target: float | None = None) -> IsotropicPlan:
    """:func:`plan_isotropic` of a known (dz, dy, dx) ``spacing``: what the library functions take."""
    dz, dy, dx = check_spacing(spacing)
    return plan_isotropic(shape, dz, (dy, dx), target=target)


def isotropic_shape(shape: tuple[int, ...], spacing, target: float | None = None) -> tuple[int, ...]:
    """Output shape for a (..., Z, Y, X) input: Z becomes ``floor((Z - 1) * dz / target) + 1``."""
    return plan_spacing(shape, spacing, target).output_shape


def output_spacing(spacing, target: float | None = None) -> tuple[float, float, float]:
    """(dz, dy, dx) of the output: Z at ``target`` (default the XY pixel size)."""
    return plan_spacing((2, 1, 1), spacing, target).output_spacing


def z_step(spacing, target: float | None = None) -> float:
    """The output Z step in input-plane units, ``target / dz`` (``target`` defaults to the XY pixel size)."""
    return plan_spacing((2, 1, 1), spacing, target).step


# ---- files' axes --------------------------------------------------------------------------------------
def volume_axes(axes: str, name: str) -> list[int]:
    """Permutation that puts a file's axes (e.g. 'TZCYX') in (..., Z, Y, X) order; a ValueError naming ``name``.

    Any of T, C, Z in front of Y, X; a plain multi-page TIFF ('QYX', 'IYX')
    has its pages taken as the Z planes. Colour (S) stacks are refused.
    """
    if not axes.endswith("YX"):
        raise ValueError(f"{name}: axes {axes!r}: need gray planes (Y, X last); colour (S) stacks are not supported")
    if len(axes) == 3 and axes[0] in "QI":  # a plain multi-page TIFF: its pages are the Z planes
        axes = "ZYX"
    if "Z" not in axes:
        raise ValueError(f"{name}: axes {axes!r} have no Z axis; isotropic resampling needs a Z stack")
    unknown = set(axes) - set("TCZYX")
    if unknown:
        raise ValueError(f"{name}: axes {axes!r} include {''.join(sorted(unknown))}; only T, C, Z, Y, X are supported")
    lead = [i for i, a in enumerate(axes[:-2]) if a != "Z"]
    return lead + [axes.index("Z"), len(axes) - 2, len(axes) - 1]
