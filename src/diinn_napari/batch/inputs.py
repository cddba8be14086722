"""Which files a batch reads and where each one's output goes."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from .. import io


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their image files, not recursive) and glob patterns -> sorted unique paths.

    Files named explicitly are kept whatever their type (a wrong one is reported
    as failed); inside folders only what a format reads counts. A folder that a
    format reads as one image (a store) is an input, not a folder to search.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir() and not io.is_image(path):
            found += [p for p in sorted(path.iterdir()) if io.is_image(p)]
        elif path.exists():
            found.append(path)
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no such file, folder or matching pattern: {item}")
            found += [Path(m) for m in matches if Path(m).is_file() or io.is_image(m)]
    # absolute, links not followed: an input is named after the path given (a git-annex or DataLad link keeps its
    # name, not its target's); plan_file compares resolved paths where it matters (never writing over an input).
    # A container (a bioformats2raw OME-Zarr) gives one input per image it holds.
    return list(dict.fromkeys(image for p in found for image in _images(Path(os.path.abspath(p)))))


def _images(path: Path) -> list[Path]:
    """The images a path holds: itself, or each image of a container (a bioformats2raw OME-Zarr)."""
    try:
        fmt = io.format_for(path)
    except ValueError:
        return [path]
    images = getattr(fmt, "images", None)
    return images(path) if images is not None else [path]


OUTPUT_FORMATS = ("auto", "tiff", "ome-zarr")


def output_kind(info_kind: str, out_format: str = "auto") -> str:
    """The kind of the output of an input of ``info_kind``: its own (``auto``), or that of ``out_format``.

    TIFF kinds stay as they are when TIFF is asked for; an OME-Zarr input written
    as TIFF becomes an OME-TIFF (physical sizes and channel names kept).
    """
    if out_format == "auto":
        return info_kind
    if out_format == "ome-zarr":
        return "ome-zarr"
    if out_format == "tiff":
        return info_kind if info_kind in ("imagej", "ome", "tiff", "geotiff") else "ome"
    raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, got {out_format!r}")


def output_path(path: Path, out_dir: Path, out_format: str = "auto") -> Path:
    """The output of input ``path``: its format's name for it (TIFF and PNG keep theirs, JPEG becomes PNG);
    with ``out_format`` another format's (``a.tif`` -> ``a.ome.zarr``, ``a.ome.zarr`` -> ``a.ome.tif``)."""
    try:
        fmt = io.format_for(path)
        name = fmt.output_name(path)
    except ValueError:  # not an image: it fails when read, with that message
        return out_dir / path.name
    if out_format == "ome-zarr" and fmt.name != "ome-zarr":
        name = io.omezarr.with_zarr_name(name)
    elif out_format == "tiff" and fmt.name not in ("tiff", "geotiff"):
        stem = io.omezarr.zarr_stem(Path(name)) if fmt.name == "ome-zarr" else Path(name).stem
        name = stem + (".ome.tif" if fmt.name == "ome-zarr" else ".tif")
    return out_dir / name


def check_output_names(paths: list[Path], out_dir: Path, out_format: str = "auto") -> None:
    """Raise ValueError when two inputs would be written to the same output file."""
    seen: dict[Path, Path] = {}
    for path in paths:
        out = output_path(path, out_dir, out_format)
        if out in seen:
            raise ValueError(f"{seen[out]} and {path} would both be written to {out}; process them into separate --out folders")
        seen[out] = path
