"""What a batch does to every file (:class:`Settings`) and what happened to one file (:class:`Result`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..isotropic import FUSIONS  # torch-free at import
from ..settings import OUTPUT_DTYPES, RunSettings


@dataclass(frozen=True)
class Settings:
    """What to do to every file (picklable: it travels to worker processes and dask workers).

    out_dir: output folder (created when the first output is written).
    run: the engine's :class:`~diinn_napari.settings.RunSettings` (model,
        device, tile size, intensity, output dtype, data consistency, threads,
        ...). Its size is ``scale`` (sy, sx) or ``pixel_size`` (the target XY
        pixel size in each file's own unit); with ``isotropic=True`` it has no
        size (Y and X keep their pixels).
    isotropic: resample Z instead, to each file's XY pixel size or ``target``.
    z_step, target: with isotropic, the input Z step (default: each file's
        ImageJ spacing / OME PhysicalSizeZ) and the output Z step (default:
        each file's XY pixel size), in the file's unit.
    fusion: with isotropic, how the XZ and YZ views combine (see :data:`FUSIONS`).
    adapt_steps, axial_sigma, seed: with isotropic, self-supervised adaptation
        of the model to each stack before its Z is resampled (0 steps: none;
        axial_sigma None: from the Z step; see :func:`diinn_napari.adapt.adapt`).
    save_model: with adapt_steps, where the adapted weights go: a
        ``.safetensors`` file (one input) or a folder (``<output stem>.safetensors`` per file).
    out_format: "auto" (each output in its input's format), "tiff" or "ome-zarr" (a multiscale OME-Zarr image).
    self_adapt: self-supervised adaptation to each plane before it is upscaled (XY, not with
        isotropic): that many steps of :func:`diinn_napari.train.self_adapt.adapt_plane` on the
        plane's own downsampled copies (0: none). Refused for factors it was not measured to
        help (:func:`~diinn_napari.train.self_adapt.refusal`).
    cog: write GeoTIFF outputs as Cloud-Optimized GeoTIFFs (tiled, overviews, DEFLATE + predictor; needs rasterio).
    overwrite: replace existing outputs even when they were made with other settings.
    show_progress: a progress bar on stderr (only when stderr is a terminal).
    """

    out_dir: Path
    run: RunSettings = RunSettings()
    isotropic: bool = False
    z_step: float | None = None
    target: float | None = None
    fusion: str = "mean"
    adapt_steps: int = 0
    axial_sigma: float | None = None
    seed: int = 0
    save_model: Path | None = None
    out_format: str = "auto"
    self_adapt: int = 0
    cog: bool = False
    overwrite: bool = False
    show_progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if not isinstance(self.run, RunSettings):
            raise TypeError(f"run must be a diinn_napari.RunSettings, got {type(self.run).__name__}")
        if self.run.output_shape is not None:
            raise ValueError("a batch sizes each file by scale or pixel_size, not by one output_shape")
        if (self.run.scale is not None) + (self.run.pixel_size is not None) + bool(self.isotropic) != 1:
            raise ValueError("give exactly one of scale (sy, sx), pixel_size or isotropic=True")
        for name in ("z_step", "target"):
            value = getattr(self, name)
            if value is None:
                continue
            self._isotropic_only(name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a number > 0 (in the files' unit), got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.fusion != "mean":
            self._isotropic_only("fusion")
        if isinstance(self.adapt_steps, bool) or not isinstance(self.adapt_steps, int) or self.adapt_steps < 0:
            raise ValueError(f"adapt_steps must be a whole number >= 0 (0 = no adaptation), got {self.adapt_steps!r}")
        if self.adapt_steps:
            self._isotropic_only("adapt_steps")
        for name in ("axial_sigma", "save_model"):
            if getattr(self, name) is not None and not self.adapt_steps:
                raise ValueError(f"{name} is an option of the adaptation (adapt_steps > 0, --adapt-steps)")
        if self.axial_sigma is not None:
            if not (isinstance(self.axial_sigma, (int, float)) and math.isfinite(self.axial_sigma) and self.axial_sigma >= 0):
                raise ValueError(f"axial_sigma must be a number >= 0 (XY pixels), got {self.axial_sigma!r}")
            object.__setattr__(self, "axial_sigma", float(self.axial_sigma))
        if self.save_model is not None:
            object.__setattr__(self, "save_model", Path(self.save_model))
        if self.out_format not in ("auto", "tiff", "ome-zarr"):
            raise ValueError(f"out_format must be 'auto', 'tiff' or 'ome-zarr', got {self.out_format!r}")
        if isinstance(self.self_adapt, bool) or not isinstance(self.self_adapt, int) or self.self_adapt < 0:
            raise ValueError(f"self_adapt must be a whole number of steps >= 0 (0 = off), got {self.self_adapt!r}")
        if self.self_adapt and self.isotropic:
            raise ValueError("self_adapt (--self-adapt) adapts the model to upscaling Y and X; --isotropic has its own "
                             "adaptation to the stack: adapt_steps (--adapt-steps)")
        if self.self_adapt and self.out_format == "ome-zarr":
            raise ValueError("self_adapt (--self-adapt) is not available for OME-Zarr outputs (written block by block "
                             "with the run's model); use --format tiff")
        if self.self_adapt and self.run.scale is not None:
            from ..train.self_adapt import refusal  # torch-free

            reason = refusal(self.run.scale)
            if reason is not None:
                raise ValueError(f"self_adapt (--self-adapt): {reason}")
        if self.run.out_dtype is not None and self.run.out_dtype not in OUTPUT_DTYPES:
            raise ValueError(f"the output dtype must be one of {OUTPUT_DTYPES} or None (the input's), got {self.run.out_dtype!r}")

    def _isotropic_only(self, name: str) -> None:
        if not self.isotropic:
            raise ValueError(f"{name} is an option of isotropic resampling (isotropic=True, --isotropic)")


@dataclass
class Result:
    """What happened to one input file."""

    path: Path
    status: str  # "done", "skipped", "failed"
    output: Path | None = None
    shape: tuple[int, ...] | None = None
    seconds: float = 0.0
    message: str = ""
