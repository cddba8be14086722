"""Weights files: safetensors with the architecture config and provenance in the metadata.

Tensors are stored as float16 (compact in git and wheels) and upcast to
float32 on load. The metadata holds JSON strings: ``config`` (the DIINN
constructor arguments) plus whatever the trainer records (data, steps,
metrics). Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .io import atomic_write
from .model import DIINN

FORMAT = "diinn-napari/1"
# Bundled models by name; "default" resolves to one of them by channel count.
BUNDLED = {"gray": "diinn-gray.safetensors", "rgb": "diinn-rgb.safetensors"}
DEFAULT_BY_CHANNELS = {1: "gray", 3: "rgb"}
# Sane bounds of a config's whole numbers (widths, block counts, ...): far above any trained DIINN, far below what
# would exhaust memory while the model is built.
CONFIG_INT_MAX = 4096


class WeightsError(ValueError):
    """A weights file is missing, corrupt, or does not describe a DIINN model."""


def weights_dir() -> Path:
    """Folder of the bundled weights.

    An installed wheel holds them in the package (``setup.py`` copies the
    checkout's ``weights/`` there at build time); an editable install or a
    source checkout reads the checkout's ``weights/`` folder itself. No
    symbolic link: those break on Windows clones.
    """
    packaged = Path(__file__).parent / "weights"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "weights"


def bundled_path(name: str) -> Path:
    """Path of a bundled model by name; a clear error if it is not shipped (yet)."""
    if name not in BUNDLED:
        raise WeightsError(f"unknown bundled model {name!r}; bundled models: {sorted(BUNDLED)}")
    path = weights_dir() / BUNDLED[name]
    if not path.is_file():
        raise WeightsError(
            f"the bundled {name!r} model is not installed ({path} is missing); "
            "pass a weights file by path or train one with `python -m diinn_napari.finetune --weights none`"
        )
    return path


def available_models() -> list[str]:
    """Names of the bundled models present in this installation."""
    return [name for name, file in BUNDLED.items() if (weights_dir() / file).is_file()]


def resolve(spec: str | os.PathLike, channels: int = 1) -> Path:
    """Turn ``"default"``, a bundled name or a path into a weights file path."""
    if str(spec) == "default":
        if channels not in DEFAULT_BY_CHANNELS:
            raise WeightsError(f"no default model for {channels}-channel images; pass a weights file for {channels} channels")
        return bundled_path(DEFAULT_BY_CHANNELS[channels])
    if str(spec) in BUNDLED:
        return bundled_path(str(spec))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path} (bundled models: {sorted(BUNDLED)})")
    return path


def save_weights(model: DIINN, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``path`` (float16 safetensors) atomically; ``metadata`` values become JSON."""
    path = Path(path)
    meta = {key: json.dumps(value) for key, value in (metadata or {}).items()}
    meta.update(format=FORMAT, config=json.dumps(model.config))
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    # atomic, with the permissions of a plain write: a lab's other accounts must be able to read shared weights
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded metadata of a weights file (``config`` included)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path} is not a readable safetensors weights file ({err})") from err
    if "config" not in raw:
        raise WeightsError(f"{path} has no DIINN config in its metadata; was it written by diinn_napari.weights.save_weights?")
    try:
        return {key: json.loads(value) if key != "format" else value for key, value in raw.items()}
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path} has corrupt metadata ({err})") from err


def check_config(config: Any, path: str | os.PathLike) -> None:
    """Refuse (WeightsError naming ``path``) a config that is not a dict or holds whole numbers out of sane bounds."""
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: its config is not a JSON object of DIINN arguments")

    def walk(value: Any, name: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{name}.{key}" if name else str(key))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{name}[{i}]")
        elif isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= CONFIG_INT_MAX:
            raise WeightsError(f"{path}: config {name} = {value} is out of bounds (0..{CONFIG_INT_MAX}); "
                               "the file is damaged or not a DIINN weights file")
        elif isinstance(value, float) and not math.isfinite(value):
            raise WeightsError(f"{path}: config {name} = {value} is not a finite number; the file is damaged")

    walk(config, "")
    if config.get("in_channels", 1) not in (1, 3):
        raise WeightsError(f"{path}: config in_channels = {config.get('in_channels')!r}; DIINN models take 1 or 3")


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> DIINN:
    """Build the DIINN described by a weights file and load its tensors (float32, eval mode).

    Refused with a :class:`WeightsError` naming the file: a config out of sane
    bounds (:func:`check_config`), tensors that do not fit it, and any tensor
    holding NaN or infinite values (named: such a model writes NaN, or zeros
    once cast to integers, without any other sign).
    """
    meta = read_metadata(path)
    check_config(meta["config"], path)
    try:
        model = DIINN(**meta["config"])
    except (TypeError, ValueError, RuntimeError, MemoryError, OverflowError) as err:
        raise WeightsError(f"{path} describes a model this version cannot build: {err}") from err
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {key: f.get_tensor(key).float() for key in f.keys()}
    except (SafetensorError, RuntimeError, OSError) as err:
        raise WeightsError(f"{path} has unreadable tensors ({err})") from err
    for key, tensor in state.items():
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise WeightsError(f"{path}: tensor {key!r} holds {bad} NaN or infinite value(s) of {tensor.numel()}; "
                               "the file is damaged or came from a diverged training run")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"{path} does not match its own config ({err})") from err
    return model.to(device).eval()
