"""The widget's remembered settings: a small JSON file in the user's config folder.

``DIINN_NAPARI_SETTINGS`` (a file path) overrides the location, e.g. for tests.
A missing, unreadable or foreign file is treated as no settings; a write goes
through a temporary file and a rename, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ENV = "DIINN_NAPARI_SETTINGS"


def settings_path() -> Path:
    """Where the widget keeps its settings."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    try:
        from platformdirs import user_config_dir

        folder = Path(user_config_dir("diinn-napari", appauthor=False))
    except ImportError:  # platformdirs comes with napari; a bare install falls back to the XDG default
        folder = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "diinn-napari"
    return folder / "widget.json"


def load() -> dict:
    """The remembered values ({} if none)."""
    try:
        values = json.loads(settings_path().read_text())
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def save(values: dict) -> None:
    """Remember ``values``; a failure to write (read-only home) is not an error of the run."""
    path = settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(values, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass
