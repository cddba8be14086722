"""Batch super-resolution of image files, keeping axes, dtype and metadata.

    python -m diinn_napari.batch INPUT... (--scale S | --scale SY,SX | --pixel-size P) --out DIR
        [--model M] [--device D] [--tile-size T] [--overwrite] [--workers N] [--scheduler ADDRESS]

Reads one YX plane at a time and writes frame by frame. Never writes over an
input; writes to a temporary file and renames it, so an interrupted run leaves
no half-written output; existing outputs are skipped unless --overwrite, so a
rerun resumes where the last one stopped. One bad file is reported and the
batch goes on; the exit code is 1 when any file failed.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .tiff import SUFFIXES, ImageInfo, PlaneReader, read_info, write_planes


@dataclass(frozen=True)
class Settings:
    """What to do to every file (picklable: it travels to worker processes and dask workers)."""

    out_dir: Path
    scale: tuple[float, float] | None = None
    pixel_size: float | None = None
    model: str = "default"
    device: str = "auto"
    tile_size: int | None = None
    overwrite: bool = False
    threads: int | None = None
    show_progress: bool = True


@dataclass
class Result:
    path: Path
    status: str  # "done", "skipped", "failed"
    output: Path | None = None
    shape: tuple[int, ...] | None = None
    seconds: float = 0.0
    message: str = ""


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their image files, not recursive) and glob patterns -> sorted unique paths.

    Files named explicitly are kept whatever their type (a wrong one is reported
    as failed); inside folders only image suffixes count.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += [p for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in SUFFIXES]
        elif path.exists():
            found.append(path)
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no such file, folder or matching pattern: {item}")
            found += [Path(m) for m in matches if Path(m).is_file()]
    return list(dict.fromkeys(p.resolve() for p in found))


def output_path(path: Path, out_dir: Path) -> Path:
    """TIFFs keep their name; PNG and JPEG become PNG (no second lossy compression)."""
    name = path.name if path.suffix.lower() in (".tif", ".tiff", ".png") else path.stem + ".png"
    return out_dir / name


def scale_for(info: ImageInfo, settings: Settings) -> tuple[float, float]:
    """Per-axis factor from --scale, or from --pixel-size and the file's own pixel size."""
    if settings.scale is not None:
        return settings.scale
    if info.pixel_size is None:
        raise ValueError(f"{info.path.name} has no pixel size in its metadata; use --scale instead of --pixel-size")
    return (info.pixel_size[0] / settings.pixel_size, info.pixel_size[1] / settings.pixel_size)


def process_file(path: Path, settings: Settings, inputs: frozenset[Path] = frozenset()) -> Result:
    """Upscale one file into ``settings.out_dir``; never raises for a bad file, returns a Result."""
    from .engine import iter_upscaled_planes, output_size  # torch loads here, in the worker

    started = time.time()
    out = output_path(path, settings.out_dir)
    try:
        if out.resolve() == path.resolve() or out.resolve() in inputs:
            raise ValueError(f"output {out} would overwrite an input; choose another --out folder")
        if out.exists() and not settings.overwrite:
            return Result(path, "skipped", out, message="output exists (use --overwrite to redo)")
        info = read_info(path)
        factors = scale_for(info, settings)
        H, W = output_size(info.yx, factors)
        if settings.threads:
            import torch

            torch.set_num_threads(settings.threads)
        planes = _progress_planes(
            iter_upscaled_planes(PlaneReader(info), output_shape=(H, W), model=settings.model, device=settings.device,
                                 rgb=info.rgb, tile_size=settings.tile_size),
            info, settings.show_progress,
        )
        tmp = out.with_name(f".{out.stem}.partial-{os.getpid()}{out.suffix}")
        try:
            write_planes(tmp, info, (H, W), info.dtype, planes)
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()
        return Result(path, "done", out, info.upscaled_shape((H, W)), time.time() - started)
    except Exception as err:  # one bad file must not stop the batch
        return Result(path, "failed", None, None, time.time() - started, f"{type(err).__name__}: {err}")


def _progress_planes(planes, info: ImageInfo, show: bool):
    from tqdm import tqdm

    with tqdm(total=info.n_planes, desc=info.path.name, unit="plane", disable=not show, leave=False) as bar:
        for _, plane in planes:
            yield plane
            bar.update(1)


def run_batch(paths: list[Path], settings: Settings, workers: int = 1, scheduler: str | None = None) -> list[Result]:
    """Process every file: in this process, in ``workers`` processes, or on a dask.distributed cluster."""
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    inputs = frozenset(paths)
    if scheduler:
        try:
            from distributed import Client
        except ImportError as err:
            raise SystemExit("error: --scheduler needs dask.distributed: pip install 'diinn-napari[distributed]'") from err
        remote = Settings(**{**settings.__dict__, "show_progress": False})
        with Client(scheduler) as client:
            futures = client.map(process_file, paths, settings=remote, inputs=inputs, pure=False)
            return client.gather(futures)
    if workers > 1:
        per_worker = Settings(**{**settings.__dict__, "show_progress": False,
                                 "threads": settings.threads or max(1, (os.cpu_count() or 1) // workers)})
        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(process_file, paths, [per_worker] * len(paths), [inputs] * len(paths)))
    from tqdm import tqdm

    results = []
    for path in tqdm(paths, desc="files", unit="file", disable=not settings.show_progress):
        results.append(process_file(path, settings, inputs))
    return results


def summary(results: list[Result]) -> str:
    rows = [("file", "status", "output shape", "seconds", "note")]
    rows += [(r.path.name, r.status, "x".join(map(str, r.shape)) if r.shape else "-", f"{r.seconds:.1f}", r.message)
             for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + ("  " + row[4] if row[4] else "") for row in rows]
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    lines.append(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    return "\n".join(lines)


def parse_scale(text: str) -> tuple[float, float]:
    values = [float(v) for v in text.split(",")]
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"--scale takes S or SY,SX with positive numbers, got {text!r}")
    return (values[0], values[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diinn_napari.batch", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="files, folders or glob patterns (TIFF, OME-TIFF, ImageJ, PNG, JPEG)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--scale", type=parse_scale, help="factor S, or SY,SX")
    size.add_argument("--pixel-size", type=float, help="target XY pixel size, in the file's unit")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--model", default="default", help="'default', a bundled name, or a weights file")
    p.add_argument("--device", default="auto")
    p.add_argument("--tile-size", type=int, default=None)
    p.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    p.add_argument("--workers", type=int, default=1, help="files processed in parallel on this machine")
    p.add_argument("--scheduler", default=None, help="address of a dask.distributed scheduler")
    a = p.parse_args(argv)
    if a.pixel_size is not None and a.pixel_size <= 0:
        p.error("--pixel-size must be > 0")
    try:
        paths = collect_inputs(a.inputs)
    except FileNotFoundError as err:
        p.error(str(err))
    settings = Settings(a.out, a.scale, a.pixel_size, a.model, a.device, a.tile_size, a.overwrite)
    try:
        results = run_batch(paths, settings, a.workers, a.scheduler)
    except KeyboardInterrupt:
        print("interrupted: finished files are kept, no partial output was left; rerun the same command to resume",
              file=sys.stderr)
        return 130
    print(summary(results))
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
