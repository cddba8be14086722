"""Pick the torch device: "auto" prefers CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import torch


def available_devices() -> list[str]:
    """Device names usable here, best first (always ends with "cpu")."""
    names = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names + ["cpu"]


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``; a clear error if absent."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device(available_devices()[0])
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}; use one of {['auto'] + available_devices()}") from err
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {name!r} is not available here; available: {available_devices()}")
    if device.type == "mps" and "mps" not in available_devices():
        raise ValueError(f"device 'mps' is not available here; available: {available_devices()}")
    return device
