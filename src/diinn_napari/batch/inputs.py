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
    # name, not its target's); plan_file compares resolved paths where it matters (never writing over an input)
    return list(dict.fromkeys(Path(os.path.abspath(p)) for p in found))


def output_path(path: Path, out_dir: Path) -> Path:
    """The output of input ``path``: its format's name for it (TIFF and PNG keep theirs, JPEG becomes PNG)."""
    try:
        name = io.format_for(path).output_name(path)
    except ValueError:  # not an image: it fails when read, with that message
        name = path.name
    return out_dir / name


def check_output_names(paths: list[Path], out_dir: Path) -> None:
    """Raise ValueError when two inputs would be written to the same output file."""
    seen: dict[Path, Path] = {}
    for path in paths:
        out = output_path(path, out_dir)
        if out in seen:
            raise ValueError(f"{seen[out]} and {path} would both be written to {out}; process them into separate --out folders")
        seen[out] = path
