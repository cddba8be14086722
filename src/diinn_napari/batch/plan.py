"""The plan of one file: what its output is (path, shape, dtype, physical sizes), how it is made, its record.

Everything a file's processing needs is decided here, once, from the file's
:class:`~diinn_napari.io.ImageInfo` and the batch :class:`~.job.Settings`,
before any pixel is read; :mod:`.process` then only carries it out. Torch is
not imported here except to resolve the model's weights file.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__, io
from ..isotropic_plan import IsotropicPlan, IsotropicPlanError, plan_isotropic, volume_axes
from ..settings import output_size
from .inputs import output_kind, output_path
from .job import Settings
from .record import compared, content_size, file_identity

# What the batch user can do about a refused isotropic plan (IsotropicPlanError.reason).
_REMEDIES = {
    "no_z_step": "{name} has no Z calibration (no ImageJ 'spacing', no OME PhysicalSizeZ); pass --z-step with its Z "
                 "step, in the unit of its XY pixel size",
    "bad_z_step": "{name}: {error}; pass --z-step with the right one",
    "no_pixel_size": "{name} has no XY pixel size (resolution tags or OME PhysicalSizeX) to make Z match; pass "
                     "--target with the output Z step",
    "isotropic_already": "{name}: {error}; --target gives a smaller Z step if you want one",
}


@dataclass(frozen=True)
class VolumePlan:
    """How ``--isotropic`` resamples one file: its (Z, Y, X) volumes, in the file's own axis order.

    order: the file's axes -> (..., Z, Y, X); z_axis: where Z is in the file;
    volumes: the leading shape of the volumes (the axes in front of Z, file
    order); z: the plan of one volume (steps, planes, default axial blur).
    """

    order: tuple[int, ...]
    z_axis: int
    volumes: tuple[int, ...]
    z: IsotropicPlan
    fusion: str
    adapt: dict | None  # {"steps", "axial_sigma", "seed"} when the model is adapted to the stack first

    @property
    def count(self) -> int:
        return math.prod(self.volumes)

    def volume_index(self, flat: int) -> tuple[int, ...]:
        """The leading index of volume number ``flat``."""
        return tuple(int(i) for i in np.unravel_index(flat, self.volumes)) if self.volumes else ()

    def file_index(self, volume: tuple[int, ...], z: int) -> tuple[int, ...]:
        """The leading index, in the file's axis order, of plane ``z`` of volume ``volume``."""
        index = [0] * (len(self.order) - 2)
        for axis, i in zip(self.order[:-3], volume):
            index[axis] = int(i)
        index[self.z_axis] = int(z)
        return tuple(index)

    def output_order(self, out_leading: tuple[int, ...]):
        """(volume number, output Z plane) of every output plane, in the file's order."""
        for index in np.ndindex(*out_leading):
            volume = tuple(index[a] for a in self.order[:-3])
            yield (int(np.ravel_multi_index(volume, self.volumes)) if self.volumes else 0), index[self.z_axis]

    def record(self) -> dict:
        entry = {"z_step_in": self.z.z_step, "z_step_out": self.z.target, "z_planes": [self.z.shape[-3], self.z.planes],
                 "fusion": self.fusion}
        if self.adapt is not None:
            entry["adapt"] = self.adapt
        return entry


@dataclass(frozen=True)
class FilePlan:
    """What to make of one input file (see the module docstring)."""

    source: Path
    info: io.ImageInfo  # the input
    output: io.ImageInfo  # the output, at its final path
    record: dict  # the settings record it will carry
    volumes: VolumePlan | None  # --isotropic: Z resampling of whole volumes; None: plane by plane
    save_model: Path | None = None  # where adapted weights go

    @property
    def unit(self) -> str:
        """What one partial-file record holds: a "plane", or with --isotropic a whole output "volume"."""
        return "plane" if self.volumes is None else "volume"

    @property
    def count(self) -> int:
        return self.info.n_planes if self.volumes is None else self.volumes.count

    @property
    def unit_shape(self) -> tuple[int, ...]:
        if self.volumes is None:
            return self.output.plane_shape
        return (self.volumes.z.planes, *self.output.yx)

    @property
    def header_record(self) -> dict:
        """The part of the record a partial file must match to be resumed."""
        return compared(self.record)


def scale_for(info: io.ImageInfo, settings: Settings) -> tuple[float, float]:
    """Per-axis factor from --scale, or from --pixel-size and the file's own pixel size."""
    if settings.run.pixel_size is not None and info.pixel_size is None:
        raise ValueError(f"{info.path.name} has no pixel size in its metadata; use --scale instead of --pixel-size")
    return settings.run.factors(info.pixel_size)


def output_dtype(info: io.ImageInfo, settings: Settings) -> np.dtype:
    """The output's dtype: --dtype, else the input's own (float16 and float64 included)."""
    dtype = settings.run.output_dtype(info.dtype)
    if info.kind in ("png", "jpeg") and dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{info.path.name}: the output is a PNG, which holds uint8 or uint16, not {dtype}; use --dtype uint8 or uint16")
    return dtype


def plan_volumes(info: io.ImageInfo, settings: Settings) -> VolumePlan:
    """How ``--isotropic`` resamples the file ``info``; a ValueError naming the file and the option that helps."""
    name = info.path.name
    if not io.format_of(info).holds_stacks:
        raise ValueError(f"{name}: --isotropic needs a TIFF Z stack (ImageJ, OME or multi-page TIFF); "
                         f"a {info.kind.upper()} file holds one plane")
    order = tuple(volume_axes(info.axes, name))
    try:
        z = plan_isotropic(tuple(info.shape[i] for i in order), info.z_spacing, info.pixel_size,
                           z_step_override=settings.z_step, target=settings.target, unit=info.unit)
    except IsotropicPlanError as err:
        remedy = _REMEDIES.get(err.reason, "{name}: {error}")
        raise ValueError(remedy.format(name=name, error=err)) from None
    adapt = None
    if settings.adapt_steps:
        sigma = z.axial_sigma if settings.axial_sigma is None else settings.axial_sigma
        adapt = {"steps": settings.adapt_steps, "axial_sigma": sigma, "seed": settings.seed}
    return VolumePlan(order, order[-3], tuple(info.shape[i] for i in order[:-3]), z, settings.fusion, adapt)


def model_identity(model, channels: int) -> dict:
    """The weights file ``model`` resolves to for ``channels``, by name and content hash."""
    from ..weights import resolve  # imports torch: only where the work happens

    return file_identity(resolve(model, channels))


def plan_file(path: Path, settings: Settings, inputs: frozenset[Path] = frozenset()) -> FilePlan:
    """Plan input ``path``: a ValueError naming the file when it cannot be processed as asked."""
    out = output_path(path, settings.out_dir, settings.out_format)
    if out.resolve() == path.resolve() or out.resolve() in {p.resolve() for p in inputs}:
        raise ValueError(f"output {out} would overwrite an input; choose another --out folder")
    info = io.read_info(path)
    volumes = plan_volumes(info, settings) if settings.isotropic else None
    dtype = output_dtype(info, settings)
    if volumes is None:
        out_yx = output_size(info.yx, scale_for(info, settings))
        limit = settings.run.max_output_pixels
        if out_yx[0] * out_yx[1] > limit:  # said here in the command line's terms (it has no option for the limit)
            raise ValueError(f"{info.path.name}: one output plane would be {out_yx[0]} x {out_yx[1]} = "
                             f"{out_yx[0] * out_yx[1]:,} pixels, above the limit of {limit:,} per plane; lower "
                             "--scale (or raise --pixel-size), or process a crop of the file")
        output = info.output(out, info.upscaled_shape(out_yx), dtype)
        if settings.self_adapt:  # --pixel-size: the factor is the file's own
            from ..train.self_adapt import refusal

            reason = refusal(scale_for(info, settings))
            if reason is not None:
                raise ValueError(f"{info.path.name}: --self-adapt: {reason}; leave --self-adapt out for this file")
    else:
        shape = list(info.shape)
        shape[volumes.z_axis] = volumes.z.planes
        output = info.output(out, tuple(shape), dtype, z_spacing=volumes.z.target)
    output = converted(info, output, output_kind(info.kind, settings.out_format))
    if settings.cog:
        if info.kind != "geotiff":
            raise ValueError(f"{path.name}: --cog writes GeoTIFF outputs, and this is a {info.kind.upper()} file without "
                             "georeferencing; leave --cog out for it")
        output.metadata = {**output.metadata, "cog": True}
    save_model = None
    if settings.save_model is not None:
        save_model = settings.save_model
        if save_model.suffix != ".safetensors":
            save_model = save_model / f"{out.stem}.safetensors"
    return FilePlan(path, info, output, _record(info, output, settings, volumes), volumes, save_model)


def converted(info: io.ImageInfo, output: io.ImageInfo, kind: str) -> io.ImageInfo:
    """``output`` as an image of ``kind`` (another format: TIFF <-> OME-Zarr), with what that format's writer needs.

    Every output keeps the source's Y/X size and pixel size (``source_yx``,
    ``source_pixel_size``): a format that stores an origin (OME-Zarr's
    translation) moves it by the pixel-centre rule of the napari overlay.
    """
    meta = {**output.metadata, "source_yx": list(info.yx), "source_pixel_size": info.pixel_size}
    if kind != output.kind:
        meta = {k: v for k, v in meta.items() if k in ("source_yx", "source_pixel_size")
                or (kind == "ome-zarr" and k == "ngff")}
    return dataclasses.replace(output, kind=kind, metadata=meta)


def run_record(run, channels: int) -> dict:
    """The compared keys a run's settings decide (model, intensity, consistency, clamp, precision, ensemble):
    the part of an output's record that the batch tool and the widget's OME-Zarr store share."""
    record = {"model": model_identity(run.model, channels), "intensity": run.intensity,
              "consistency": run.consistency,
              "outlier_clamp": None if run.outlier_clamp is None else list(run.outlier_clamp)}
    if run.precision != "fp32":
        record["precision"] = run.precision
    if run.ensemble:
        record["ensemble"] = True
    return record


def _record(info: io.ImageInfo, output: io.ImageInfo, settings: Settings, volumes: VolumePlan | None) -> dict:
    """The settings an output is made with, stored in the output and (the compared part) in its partial file.

    The keys in :data:`~.record.COMPARED` decide whether two runs make the
    same file; the rest (how the size was asked for, the software version) is information.
    """
    run = settings.run
    if settings.isotropic:
        request = {"isotropic": True, "z_step": settings.z_step, "target": settings.target}
    else:
        request = {"scale": list(run.scale)} if run.scale else {"pixel_size": list(run.pixel_size)}
    record = {
        # the content itself (a streamed SHA-256 of the bytes): a file of the same name and size, or one edited in
        # place, is other work, for the skip and for resuming a partial file (whose header holds this record)
        "input": {"name": info.path.name, "shape": list(info.shape), "dtype": str(info.dtype),
                  "bytes": content_size(info.path), "sha256": file_identity(info.path)["sha256"]},
        "output_yx": list(output.yx),
        "dtype": output.dtype.name,
        **run_record(run, 3 if info.rgb else 1),
        "request": {**request, "device": str(run.device), "tile_size": run.tile_size},
        "software": f"diinn-napari {__version__}",
    }
    if volumes is not None:
        record["isotropic"] = volumes.record()
    if info.nodata is not None:  # JSON has no NaN: the GDAL_NODATA text
        record["nodata"] = repr(info.nodata)
    if settings.cog:
        record["cog"] = True
    if settings.self_adapt:  # each plane upscaled by a copy of the model adapted to it
        record["self_adapt"] = {"steps": settings.self_adapt, "seed": 0, "each": "plane"}
    return record
