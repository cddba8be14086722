"""The command line of ``python -m diinn_napari.batch``: parse, check everything that would fail every file, run.

    python -m diinn_napari.batch INPUT... (--scale S | --scale SY,SX | --pixel-size P) --out DIR [options]
    python -m diinn_napari.batch INPUT... --scale S --self-adapt STEPS --out DIR
    python -m diinn_napari.batch STACK.tif... --isotropic [--z-step DZ] [--target DZ_OUT] [--adapt-steps N] --out DIR
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from ..intensity import INTENSITY_MODES
from ..train.self_adapt import MEASURED_HELPFUL_UP_TO, MEASURED_STEPS  # torch-free
from ..settings import DEFAULT_CONSISTENCY, OUTPUT_DTYPES, PRECISIONS, RunSettings
from .inputs import OUTPUT_FORMATS, check_output_names, collect_inputs
from .job import FUSIONS, Settings
from .runners import run_batch
from .summary import summary

DESCRIPTION = "Batch super-resolution of image files, keeping axes, dtype and metadata."
EPILOG = """\
Reads one YX plane at a time and writes frame by frame. Never writes over an
input. Each finished plane goes to a hidden partial file in the output folder
(.<name>.<host>-<pid>.partial, flushed to disk plane by plane); the output
is written from it to a temporary file and renamed into place, so an
interrupted run leaves no half-written output, and a rerun resumes a killed
file from its last finished plane. Every output records the settings it was
made with, a SHA-256 of its input's bytes and one of its own pixels; a rerun
skips outputs made with the same settings from the same content (an output
found cut short or damaged is recomputed) and refuses (that file fails) to
replace ones made with others unless --overwrite. One process at a time
writes an output (a lock file beside it; see docs/batch.md for network file
systems). Ctrl-C (exit 130) and SIGTERM (exit 143) stop the batch and its
workers within seconds, leaving every file resumable. One bad
file is reported and the batch goes on; the exit code is 1 when any file
failed.

--isotropic resamples the Z axis of TIFF stacks to their XY pixel size (or
--target), one (Z, Y, X) volume at a time, resumable per volume; with
--adapt-steps the model is first fine-tuned on each stack's own XY planes.
The output's Z spacing (ImageJ spacing, OME PhysicalSizeZ) is the new Z step.
"""
# the options that only --isotropic reads, with their defaults
ISOTROPIC_ONLY = {"z_step": None, "target": None, "fusion": "mean", "adapt_steps": 0, "axial_sigma": None,
                  "seed": 0, "save_model": None}


def parse_scale(text: str) -> tuple[float, float]:
    """``"S"`` or ``"SY,SX"`` -> (sy, sx), each a finite number >= 1 (argparse type)."""
    message = f"--scale takes S or SY,SX with numbers >= 1 (DIINN only upscales), got {text!r}"
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not all(math.isfinite(v) and v >= 1 for v in values):
        raise argparse.ArgumentTypeError(message)
    return (values[0], values[1])


def _number(low: float, strict: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > low if strict else value >= low)):
            raise argparse.ArgumentTypeError(f"must be a number {'>' if strict else '>='} {low:g}, got {text!r}")
        return value

    return parse


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m diinn_napari.batch``, in groups: input/output, size, isotropic, model,
    quality, performance."""
    p = argparse.ArgumentParser(prog="python -m diinn_napari.batch", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    files = p.add_argument_group("input and output")
    files.add_argument("inputs", nargs="+", help="files, folders or glob patterns (TIFF, OME-TIFF, ImageJ, PNG, JPEG, OME-Zarr .zarr folders)")
    files.add_argument("--out", required=True, type=Path,
                       help="output folder (required; created when the first output is written)")
    files.add_argument("--cog", action="store_true",
                       help="write GeoTIFF outputs as Cloud-Optimized GeoTIFFs (tiled, internal overviews, DEFLATE "
                            "with a predictor), through GDAL (needs rasterio)")
    files.add_argument("--overwrite", action="store_true",
                       help="replace existing outputs, also those made with other settings (same settings are "
                            "skipped otherwise)")
    files.add_argument("--format", choices=OUTPUT_FORMATS, default="auto",
                       help="output format: auto (OME-Zarr for OME-Zarr inputs, TIFF for TIFF, PNG for PNG/JPEG), "
                            "tiff (OME-Zarr inputs become OME-TIFF), or ome-zarr (a multiscale OME-Zarr image "
                            "<name>.ome.zarr, NGFF 0.5; 0.4 for a 0.4 input)")

    size = p.add_argument_group("size (one of --scale, --pixel-size, --isotropic)")
    request = size.add_mutually_exclusive_group(required=True)
    request.add_argument("--scale", type=parse_scale, default=None,
                         help="output/input size ratio: S, or SY,SX for Y and X apart; each >= 1")
    request.add_argument("--pixel-size", type=_number(0, strict=True), default=None,
                         help="target XY pixel size in each file's own unit (the factor comes from its metadata)")
    request.add_argument("--isotropic", action="store_true",
                         help="resample Z instead: TIFF Z stacks (ZYX, ZCYX, TZCYX, ...) get Z planes at their XY "
                              "pixel size (or --target), point-sampled from the first plane; Y and X keep their pixels")

    iso = p.add_argument_group("isotropic Z resampling (with --isotropic)")
    iso.add_argument("--z-step", type=_number(0, strict=True), default=None,
                     help="the input Z step, for files without one (ImageJ spacing, OME PhysicalSizeZ) or to "
                          "override it; in the unit of the XY pixel size")
    iso.add_argument("--target", type=_number(0, strict=True), default=None,
                     help="the output Z step in each file's unit (None: its XY pixel size); at most the input Z step")
    iso.add_argument("--fusion", choices=FUSIONS, default="mean",
                     help="how the XZ and YZ reconstructions combine: mean, max, min, or one view (xz, yz: half the time)")
    iso.add_argument("--adapt-steps", type=_int_at_least(0), default=0,
                     help="self-supervised fine-tuning steps on each stack's own XY planes before its Z is resampled "
                          "(0 = off; the adapted weights are kept with the partial file, so a resumed file uses them)")
    iso.add_argument("--axial-sigma", type=_number(0, strict=False), default=None,
                     help="with --adapt-steps: the axial blur the adaptation teaches, in XY pixels (default: from "
                          "each file's Z step, assuming Nyquist sampling)%(default).0s")
    iso.add_argument("--seed", type=int, default=0, help="with --adapt-steps: the seed of the adaptation's crops")
    iso.add_argument("--save-model", type=Path, default=None,
                     help="with --adapt-steps: keep the adapted weights, in this .safetensors file (one input) or "
                          "folder (<output name>.safetensors per file); default: not kept%(default).0s")

    own = p.add_argument_group("self-adaptation (with --scale or --pixel-size)")
    own.add_argument("--self-adapt", type=_int_at_least(0), default=0, metavar="STEPS",
                     help="before each plane is upscaled, fine-tune a copy of the model for STEPS steps on the "
                          "plane's own downsampled copies (no ground truth; a strip of the plane checks it, and the "
                          f"model is used as it is when the adapted copy is not better there). {MEASURED_STEPS} "
                          "steps were measured at +0.20 dB at x2 on held-aside files (docs/finetuning.md); factors "
                          f"above x{MEASURED_HELPFUL_UP_TO:g}, where it lost, are refused. Costs about a minute per "
                          "plane on a 2-core CPU; 0 = off")

    model = p.add_argument_group("model")
    model.add_argument("--model", default="default",
                       help="'default' (bundled gray or RGB model by the file's channels), a bundled name, or a "
                            "weights file")
    model.add_argument("--device", default="auto",
                       help="'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'")

    quality = p.add_argument_group("quality and values")
    quality.add_argument("--intensity", choices=INTENSITY_MODES, default="auto",
                         help="intensity mapping: auto (uint8 by range, others by robust percentiles of each plane), "
                              "percentile, dtype (the integer range) or none (values already 0..1)")
    # default None = the mode's own; "%(default).0s" prints nothing, so argparse adds no "(default: None)"
    quality.add_argument("--consistency", type=_int_at_least(0), default=None,
                         help="data consistency: back-projection steps after the network, so that the output "
                              "downsampled with the training degradation gives back the input (0 = off; default: "
                              f"{DEFAULT_CONSISTENCY}, and 0 with --isotropic, whose planes may be axially blurred)"
                              "%(default).0s")
    quality.add_argument("--ensemble", action="store_true",
                         help="geometric self-ensemble: every tile decoded for the 8 flips and transposes, mapped back "
                              "and averaged (about 8x the time for a small PSNR gain, docs/quality.md); not with "
                              "--isotropic")
    quality.add_argument("--dtype", choices=("input",) + OUTPUT_DTYPES, default="input",
                         help="output pixel type; 'input' keeps each file's own (float16 and float64 included)")

    speed = p.add_argument_group("performance")
    speed.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="fp32 (exact); bf16: about 1.5x faster on CPUs with avx512_bf16/AMX and on CUDA, within "
                            "0.01 dB (docs/speed.md), slower on CPUs without them; fp16: CUDA only")
    speed.add_argument("--tile-size", type=_int_at_least(0), default=0,
                       help="LR tile edge in pixels; bounds memory per tile; 0 = automatic for the device")
    speed.add_argument("--workers", type=_int_at_least(1), default=1,
                       help="files processed in parallel on this machine (each gets cores / N torch threads unless "
                            "--threads)")
    speed.add_argument("--threads", type=_int_at_least(1), default=None,
                       help="torch CPU threads per worker (default: all cores, or cores / --workers)%(default).0s")
    speed.add_argument("--scheduler", default=None,
                       help="address of a dask.distributed scheduler to send the files to (e.g. tcp://10.0.0.5:8786)")
    return p


def _check_options(p: argparse.ArgumentParser, a: argparse.Namespace, n_inputs: int) -> None:
    """Option combinations that cannot work, refused with exit code 2 before anything is created."""
    given = [name for name, default in ISOTROPIC_ONLY.items() if getattr(a, name) != default]
    if not a.isotropic and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        p.error(f"{flags} go with --isotropic (Z resampling); --scale and --pixel-size size Y and X")
    if a.self_adapt and a.isotropic:
        p.error("--self-adapt adapts the model to upscaling Y and X; --isotropic adapts to the stack with --adapt-steps N")
    if a.self_adapt and a.scale is not None:
        from ..train.self_adapt import refusal

        reason = refusal(a.scale)
        if reason is not None:
            p.error(f"--self-adapt: {reason}; leave --self-adapt out at this scale")
    if a.ensemble and a.isotropic:
        p.error("--ensemble is for plane-wise upscaling (--scale, --pixel-size); --isotropic fuses its XZ and YZ "
                "decodings already: drop --ensemble")
    if not a.adapt_steps:
        for name in ("axial_sigma", "save_model"):
            if getattr(a, name) is not None:
                p.error(f"--{name.replace('_', '-')} goes with --adapt-steps N (N > 0)")
    if a.cog and a.format == "ome-zarr":
        p.error("--cog writes Cloud-Optimized GeoTIFFs and --format ome-zarr writes OME-Zarr; choose one")
    if a.save_model is not None and a.save_model.suffix == ".safetensors" and n_inputs > 1:
        p.error(f"--save-model {a.save_model} is one file, for {n_inputs} inputs; give a folder "
                "(each file's weights go to <output name>.safetensors there)")


def _check_model_and_device(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    from ..devices import pick_device
    from ..weights import BUNDLED, WeightsError, bundled_path

    try:
        pick_device(a.device)
    except ValueError as err:
        p.error(f"argument --device: {err}")
    from ..weights import load_weights

    try:
        if a.model in BUNDLED:
            bundled_path(a.model)
        elif a.model != "default":
            path = Path(a.model).expanduser()
            if not path.is_file():
                raise WeightsError(f"weights file not found: {a.model} (bundled models: {sorted(BUNDLED)})")
            load_weights(path)  # a corrupt file (metadata, config, tensors, NaN) fails here, not once per file
    except WeightsError as err:
        p.error(f"argument --model: {err}")


def _check_out(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """--out must be a folder, or a path where one can be made."""
    out = a.out
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                where = f"--out {out}" if folder == out else f"--out {out}: {folder}"
                p.error(f"{where} is a file, not a folder; give a folder for the outputs")
            break


def settings_from(a: argparse.Namespace) -> Settings:
    """The batch :class:`Settings` the parsed options ask for (ValueError if they do not make one)."""
    consistency = a.consistency if a.consistency is not None else 0 if a.isotropic else DEFAULT_CONSISTENCY
    run = RunSettings(scale=a.scale, pixel_size=a.pixel_size, model=a.model, device=a.device,
                      tile_size=a.tile_size or None, intensity=a.intensity, threads=a.threads, precision=a.precision,
                      out_dtype=None if a.dtype == "input" else a.dtype, consistency=consistency,
                      ensemble=a.ensemble)
    return Settings(a.out, run, isotropic=a.isotropic, z_step=a.z_step, target=a.target, fusion=a.fusion,
                    adapt_steps=a.adapt_steps, axial_sigma=a.axial_sigma, seed=a.seed, save_model=a.save_model,
                    out_format=a.format, overwrite=a.overwrite, cog=a.cog, self_adapt=a.self_adapt)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``timeout``, ``kill`` and job schedulers send), handled as Ctrl-C: workers stopped, partials kept."""


def _on_terminate(signum, frame) -> None:
    raise Terminated()


def _terminate_as_interrupt():
    """Make SIGTERM stop the batch as Ctrl-C does; the previous handler, or None where it cannot be set."""
    try:
        return signal.signal(signal.SIGTERM, _on_terminate)
    except ValueError:  # not the main thread (e.g. main() called from a thread): leave the signal alone
        return None


def main(argv: list[str] | None = None) -> int:
    """Run the batch command line; returns the exit code (0 ok, 1 a file failed, 2 bad arguments, 130 interrupted,
    143 terminated by SIGTERM)."""
    p = build_parser()
    a = p.parse_args(argv)
    try:
        paths = collect_inputs(a.inputs)
    except FileNotFoundError as err:
        p.error(str(err))
    if not paths:
        p.error("no input files found")
    # everything that would make every file fail is checked before anything is created
    _check_out(p, a)
    _check_model_and_device(p, a)
    _check_options(p, a, len(paths))
    if a.cog:
        try:
            import rasterio  # noqa: F401
        except ImportError:
            p.error("--cog writes through GDAL: install rasterio (pip install rasterio, or diinn-napari[geotiff])")
    try:
        settings = settings_from(a)
        check_output_names(paths, settings.out_dir, settings.out_format)
    except ValueError as err:
        p.error(str(err))
    previous = _terminate_as_interrupt()
    try:
        results = run_batch(paths, settings, a.workers, a.scheduler)
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"{'terminated' if isinstance(err, Terminated) else 'interrupted'}: finished files are kept and the "
              "files in progress keep their finished planes; rerun the same command to resume", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    try:  # a file name that is not UTF-8 is printed with escapes, never a UnicodeEncodeError after the work
        sys.stdout.reconfigure(errors="backslashreplace")
    except (AttributeError, ValueError):
        pass
    print(summary(results))
    return 1 if any(r.status == "failed" for r in results) else 0
