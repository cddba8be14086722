"""The widget's planner: what the next run does, from a layer's geometry and the control values.

No Qt, no napari, no torch: a test (or a script) describes the layer as a
:class:`Source`, the controls as a :class:`Request`, and gets the
:class:`RunPlan` the widget would run::

    source = Source("cells", shape=(40, 50), dtype=np.dtype("uint16"), scale=(0.5, 0.4))
    plan = plan_run(source, Request(factor=(2.5, 2.5)))
    plan.out_yx, plan.run          # (100, 125), RunSettings(output_shape=(100, 125), ...)

The plane-wise modes (factor, pixel size, output shape) resolve their size
with :class:`~diinn_napari.settings.RunSettings`; "isotropic voxels" asks
:func:`~diinn_napari.isotropic_plan.plan_isotropic`, the rule the batch tool
and the library share, and adds the layer's own remedies to its refusals.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .isotropic_plan import IsotropicPlan, IsotropicPlanError, plan_isotropic
from .settings import DEFAULT_CONSISTENCY, RunSettings

ISOTROPIC = "isotropic voxels"
SIZE_MODES = ("factor", "pixel size", "output shape", ISOTROPIC)
SAME_DTYPE = "same as input"
DTYPES = (SAME_DTYPE, "float32", "uint16", "uint8")
AUTO_MODEL = "auto"
# What a run's progress counts, and how a partial layer's name says it: the plane-wise modes finish one
# (leading-index) plane at a time, isotropic voxels one block of Y rows of one volume at a time.
UNIT_WORDS = {"planes": "planes", "rows": "Y rows"}


@dataclass(frozen=True)
class Source:
    """The image a run reads, as far as planning goes: level 0 of a napari image layer.

    shape: the data's shape, colour samples last when ``rgb``; scale and
    translate: napari's, one per spatial axis (the pixel size and the
    position of pixel 0 in world units); path: the file napari read it
    from (``layer.source.path``), if any; result_of: for a layer that is
    itself a DIINN result, the name of the layer it was made from; nodata
    and mask: the pixels without data, as the GeoTIFF reader puts them in
    ``layer.metadata`` (the nodata value; a (Y, X) bool mask, True where
    there is data, shared by every plane).
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    rgb: bool = False
    scale: tuple[float, ...] | None = None
    translate: tuple[float, ...] | None = None
    path: str | None = None
    result_of: str | None = None
    nodata: float | None = None
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    reader: str | None = None  # the plugin napari read ``path`` with (layer.source.reader_plugin)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        n = len(self.spatial_shape)
        for name in ("scale", "translate"):
            value = getattr(self, name)
            value = (1.0 if name == "scale" else 0.0,) * n if value is None else tuple(float(v) for v in value)
            if len(value) != n:
                raise ValueError(f"{name} needs one value per spatial axis ({n}), got {value}")
            object.__setattr__(self, name, value)

    @classmethod
    def of(cls, layer) -> Source:
        """The source of a napari image layer (its level 0 when multiscale)."""
        data = layer.data[0] if layer.multiscale else layer.data
        path = getattr(getattr(layer, "source", None), "path", None)
        reader = getattr(getattr(layer, "source", None), "reader_plugin", None)
        meta = layer.metadata if isinstance(layer.metadata, dict) else {}
        made = meta.get("diinn")
        result_of = str(made.get("source", "?")) if isinstance(made, dict) else None
        nodata = meta.get("nodata")
        nodata = float(nodata) if isinstance(nodata, (int, float, np.number)) and not isinstance(nodata, bool) else None
        yx = tuple(data.shape[-3:-1] if layer.rgb else data.shape[-2:])
        mask = meta.get("mask")
        mask = mask if isinstance(mask, np.ndarray) and mask.shape == yx else None  # one for every plane
        return cls(layer.name, tuple(data.shape), data.dtype, bool(layer.rgb), tuple(layer.scale), tuple(layer.translate),
                   None if path is None else str(path), result_of, nodata, mask,
                   None if path is None or reader is None else str(reader))

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[:-1] if self.rgb else self.shape)


@dataclass(frozen=True)
class Request:
    """What the user asks for, as the widget's controls hold it (defaults are the controls' defaults)."""

    size_mode: str = "factor"
    factor: tuple[float, float] = (2.0, 2.0)  # (Y, X) output/input size ratio
    pixel_size: float = 0.5  # target pixel size, in the layer's units
    output_shape: tuple[int, int] = (512, 512)
    model: str = AUTO_MODEL  # "auto": the bundled gray or RGB model by the layer; else a bundled name or a weights path
    device: str = "auto"
    tile_size: int = 0  # 0: automatic
    intensity: str = "auto"
    out_dtype: str = SAME_DTYPE
    precision: str = "fp32"
    consistency: int = DEFAULT_CONSISTENCY
    trust_map: bool = False
    plane_only: bool = False  # only the plane on screen
    plane: tuple[int, ...] = ()  # the plane on screen: its index on each leading (non-YX) axis
    z_target: float = 0.0  # isotropic voxels: output Z step (0 = the XY pixel size)
    z_consistency: int = 0  # isotropic voxels: back-projection steps along Z
    adapt_steps: int = 0  # isotropic voxels: self-supervised steps on the stack first (0 = none)
    ensemble: bool = False  # plane-wise modes: geometric self-ensemble (8 flips/transposes, about 8x the time)
    self_adapt_steps: int = 0  # plane-wise modes: self-supervised steps on each plane first (0 = none)
    memory_budget: int = 0  # bytes: a larger result is written to an OME-Zarr store (0 = no budget)
    to_zarr: bool = False  # write the result to an OME-Zarr store whatever its size
    zarr_path: str = ""  # the store ("" = a temporary one named after the settings)


@dataclass(frozen=True)
class RunPlan:
    """Everything one run needs, fixed when it starts (later changes to the controls do not leak in)."""

    source: Source
    in_yx: tuple[int, int]
    out_yx: tuple[int, int]
    ratio: tuple[float, float]  # real output/input size ratio per axis (Y, X)
    shape: tuple[int, ...]  # of the whole result
    dtype: np.dtype
    run: RunSettings  # what the engine does, its size resolved to out_yx
    record: dict[str, Any] = field(default_factory=dict)  # recorded in the result's metadata["diinn"]
    trust_map: bool = False  # also show the trust map (plane-wise modes)
    plane_only: bool = False  # only the plane on screen (plane-wise modes)
    plane: tuple[int, ...] = ()  # the plane on screen (leading indices): what plane_only and the preview take
    unit: str = "planes"  # what finishes at a time: "planes" or (isotropic voxels) "rows"
    units_total: int = 1
    isotropic: IsotropicPlan | None = None  # isotropic voxels: the Z geometry
    adapt_steps: int = 0  # isotropic voxels: adaptation steps before the reconstruction
    axial_sigma: float | None = None  # and their axial blur (XY pixels)
    self_adapt_steps: int = 0  # plane-wise modes: each plane upscaled by a copy of the model adapted to it first
    store: str | None = None  # out of memory: the OME-Zarr store the result is written to (None: in memory)
    store_named: bool = False  # the store is a temporary one the widget named (not the user's path)
    memory_note: str = ""  # why the result goes to the store: asked, or above the memory budget

    @property
    def label(self) -> str:
        """How the result's name says what was done: 'x2.5', 'x1.5,3' or 'isotropic z1'."""
        if self.isotropic is not None:
            return f"isotropic z{self.isotropic.target:.3g}"
        ry, rx = self.ratio
        return f"x{ry:.3g}" if abs(ry - rx) < 1e-9 else f"x{ry:.3g},{rx:.3g}"

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def describe(self, device: str) -> str:
        """The widget's info line: output shape, dtype, memory and device (and Z for isotropic voxels)."""
        text = f"output {' x '.join(map(str, self.shape))} {self.dtype}, {self.nbytes / 2**20:,.1f} MiB, on {device}"
        if self.run.ensemble:
            text += ", self-ensemble (about 8x the time)"
        if self.self_adapt_steps:
            text += (f", each plane adapted to first ({self.self_adapt_steps} steps, about a minute per plane on a "
                     "2-core CPU)")
        if self.store is not None:
            text += f"; written to OME-Zarr {self.store} ({self.memory_note})"
        if self.source.result_of is not None:
            text = (f"{self.source.name!r} is itself a DIINN result (of {self.source.result_of!r}): Run upscales the "
                    f"upscaled image again; {text}")
        if self.isotropic is not None:
            text += f"; {self.isotropic.describe()}"
            if self.adapt_steps:
                text += f", after {self.adapt_steps} adaptation steps"
        return text


def plan_run(source: Source, request: Request) -> RunPlan:
    """The plan of a run on ``source`` as ``request`` asks; a ValueError says what is wrong and what to do."""
    shape = source.spatial_shape
    if len(shape) < 2:
        raise ValueError(f"layer {source.name!r} has fewer than 2 spatial axes")
    if request.size_mode == ISOTROPIC:
        return _isotropic_plan(source, request)
    if request.size_mode not in SIZE_MODES:
        raise ValueError(f"size mode must be one of {SIZE_MODES}, got {request.size_mode!r}")
    if request.size_mode == "factor":
        size = {"scale": tuple(request.factor)}
    elif request.size_mode == "pixel size":
        size = {"pixel_size": request.pixel_size}
    else:
        size = {"output_shape": tuple(request.output_shape)}
    run = run_settings(source, request, request.consistency).replace(ensemble=bool(request.ensemble), **size)
    in_yx = tuple(shape[-2:])
    out = run.output_yx(in_yx, input_pixel_size=source.scale[-2:])
    run = run.replace(output_shape=out)  # the size this run resolved to
    dtype = run.output_dtype(source.dtype)
    leading = (1,) * (len(shape) - 2) if request.plane_only else shape[:-2]
    colour = (source.shape[-1],) if source.rgb else ()
    ratio = (out[0] / in_yx[0], out[1] / in_yx[1])
    steps = int(request.self_adapt_steps)
    if steps:
        from .train.self_adapt import refusal  # torch-free

        reason = refusal(ratio)
        if reason is not None:
            raise ValueError(f"adapt to each plane first: {reason}; untick it (Advanced) for this size")
    record = {"source": source.name, "size_mode": request.size_mode, "size_ratio": list(ratio), **run.record(),
              "output_dtype": str(dtype), "trust_map": bool(request.trust_map), "plane_only": bool(request.plane_only),
              "source_path": source.path, "source_shape": list(source.shape), "rgb": source.rgb,
              "source_reader": source.reader, "source_mask": source.mask is not None}
    if steps:
        record["self_adapt_steps"] = steps
    if request.plane_only:
        record["plane"] = list(_plane(request.plane, shape))
    plan = RunPlan(source, in_yx, out, ratio, tuple(leading) + out + colour, dtype, run, record,
                   trust_map=bool(request.trust_map), plane_only=bool(request.plane_only),
                   plane=_plane(request.plane, shape), units_total=int(np.prod(leading, dtype=np.int64)),
                   self_adapt_steps=steps)
    return with_store(plan, request)


def with_store(plan: RunPlan, request: Request) -> RunPlan:
    """``plan`` written to an OME-Zarr store when the request asks for it or its result exceeds the memory budget.

    The store is ``request.zarr_path``, or a temporary one named after the
    settings (so a rerun with the same settings finds it and resumes). Every
    run can go there: gray, RGB and RGBA layers, the trust map, adaptation to
    each plane, isotropic voxels (with adaptation to the stack too).
    """
    budget = int(request.memory_budget)
    over = budget > 0 and plan.nbytes > budget
    if not (request.to_zarr or over):
        return plan
    path = request.zarr_path.strip()
    note = "asked" if request.to_zarr else f"above the memory budget of {budget / 2**20:,.0f} MiB"
    store = str(Path(path).expanduser()) if path else str(temporary_store(plan))
    return replace(plan, store=store, store_named=not path, memory_note=note)


def temporary_store(plan: RunPlan) -> Path:
    """The temporary store of ``plan``: under the system's temporary folder, named by the source, the size and
    a hash of the settings record (the same settings, the same store)."""
    digest = hashlib.sha256(json.dumps(plan.record, sort_keys=True, default=str).encode()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", plan.source.name).strip("._") or "image"
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", plan.label)
    return Path(tempfile.gettempdir()) / "diinn-napari" / f"{name}-{label}-{digest}.ome.zarr"


def run_settings(source: Source, request: Request, consistency: int) -> RunSettings:
    """The engine settings the request asks for, without a size; the automatic model follows the layer (gray or RGB)."""
    model = request.model if request.model not in (AUTO_MODEL, None) else ("rgb" if source.rgb else "gray")
    return RunSettings(model=model, device=request.device, tile_size=request.tile_size or None,
                       intensity=request.intensity, out_dtype=None if request.out_dtype == SAME_DTYPE else request.out_dtype,
                       precision=request.precision, consistency=int(consistency), nodata=source.nodata)


def _plane(plane: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The plane on screen, clipped into the stack (a missing index is 0)."""
    plane = tuple(plane) + (0,) * (len(shape) - 2 - len(plane))
    return tuple(int(min(max(i, 0), n - 1)) for i, n in zip(plane, shape[:-2]))


def _isotropic_plan(source: Source, request: Request) -> RunPlan:
    """Isotropic voxels: Z (third axis from the end) resampled to the XY pixel size or the target Z step."""
    name, shape = source.name, source.spatial_shape
    if source.rgb:
        raise ValueError(f"layer {name!r} is RGB: isotropic voxels needs a single-channel Z stack "
                         "(split the colour channels into separate layers first)")
    if len(shape) < 3:
        raise ValueError(f"layer {name!r} is 2D {tuple(shape)}: isotropic voxels needs a Z stack "
                         "(axes ..., Z, Y, X); use the factor, pixel size or output shape modes for 2D images")
    dz, dy, dx = source.scale[-3:]
    target = float(request.z_target) or None
    try:
        iso = plan_isotropic(shape, dz, (dy, dx), target=target)
    except IsotropicPlanError as err:
        remedy = ""
        if err.reason == "isotropic_already":  # the usual cause: a layer opened without its voxel size
            remedy = (f". If the stack is anisotropic, set the layer's scale to its voxel size (dz, dy, dx), e.g. in "
                      f"the console viewer.layers[{name!r}].scale = (2.0, 0.5, 0.5) for dz=2, dy=dx=0.5")
        raise ValueError(f"layer {name!r} (scale {dz:g}, {dy:g}, {dx:g}): {err}{remedy}") from None
    run = run_settings(source, request, request.z_consistency)
    dtype = run.output_dtype(source.dtype)
    steps = int(request.adapt_steps)
    sigma = iso.axial_sigma if steps else None
    record = {"source": name, "size_mode": ISOTROPIC, **run.record(), "spacing_in": list(iso.spacing),
              "z_step_in": iso.z_step, "z_step_out": iso.target, "target_z_step": target,
              "z_planes": [int(shape[-3]), iso.planes], "fusion": "mean", "output_dtype": str(dtype),
              "adapt_steps": steps, "axial_sigma": sigma, "source_path": source.path, "source_shape": list(source.shape),
              "rgb": source.rgb}
    yx = tuple(shape[-2:])
    plan = RunPlan(source, yx, yx, (1.0, 1.0), iso.output_shape, dtype, run, record, plane=_plane(request.plane, shape),
                   unit="rows", units_total=int(np.prod(shape[:-3], dtype=np.int64)) * int(shape[-2]),
                   isotropic=iso, adapt_steps=steps, axial_sigma=sigma)
    return with_store(plan, request)


def visible_window(in_yx: tuple[int, int], out_yx: tuple[int, int], corners, budget: tuple[int, int]
                   ) -> tuple[int, int, int, int]:
    """The output window (y0, y1, x0, x1) that covers the visible part of an input plane.

    corners: ((y0, x0), (y1, x1)) of the visible input pixels (level 0),
    as napari's ``corner_pixels``; budget: at most this many output pixels
    per axis (the canvas size), centred on the view, so a preview costs
    about one screenful. Nothing visible (a canvas never drawn): the whole plane.
    """
    (h, w), (H, W) = in_yx, out_yx
    corners = np.asarray(corners, dtype=np.float64)
    lo = np.clip(np.floor(corners[0]), 0, [h - 1, w - 1]).astype(int)
    hi = np.clip(np.ceil(corners[1]) + 1, lo + 1, [h, w]).astype(int)
    if np.all(hi - lo <= 1):
        lo, hi = np.array([0, 0]), np.array([h, w])
    window = []
    for axis, (n_in, n_out) in enumerate(((h, H), (w, W))):
        a = math.floor(lo[axis] * n_out / n_in)
        b = math.ceil(hi[axis] * n_out / n_in)
        most = max(64, int(budget[axis]))
        if b - a > most:
            middle = (a + b) // 2
            a, b = middle - most // 2, middle - most // 2 + most
        window += [max(0, a), min(n_out, b)]
    return tuple(window)
