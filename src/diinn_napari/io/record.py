"""The settings record: the JSON an output carries about how it was made.

Every batch output holds one (input, output size, model, intensity, dtype,
...; :mod:`diinn_napari.batch.record` decides its content), stored by the
output's format: a private TIFF tag on the first page, a PNG text chunk, an
attribute of an OME-Zarr image. A rerun reads it back to tell a finished
output from one made with other settings.
"""

from __future__ import annotations

import json
from pathlib import Path

# Private TIFF tag (the 65000-65535 range is free for any use) and PNG text key of the settings record.
RECORD_TAG = 65471
RECORD_KEY = "diinn-napari"


def encode(record: dict) -> str:
    """The record as the text a format stores (JSON, sorted keys, so equal records give equal bytes)."""
    return json.dumps(record, sort_keys=True)


def decode(text: str | bytes | None) -> dict | None:
    """The record stored as ``text``; None when there is none or it is not a JSON object."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_record(path: str | Path) -> dict | None:
    """The settings record a batch output holds, or None when it has none (or is not an image)."""
    from .base import format_for

    try:
        return format_for(path).read_record(Path(path))
    except ValueError:
        return None
