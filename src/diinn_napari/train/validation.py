"""Validation of a training run: the file split, scores on fixed crops, and the keep-only-if-better rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..model import DIINN
from .sources import split_by_source

__all__ = ["split_files", "validate", "better_than", "validation_report", "validation_scales", "scores_line", "SCALE_TOLERANCE_DB"]

# a result may lose at most this much on any validated scale (and must gain on the mean) to count as better
SCALE_TOLERANCE_DB = 0.02


def split_files(groups: list[list[Path]], fraction: float, seed: int, hold_out: list[str] = (),
                roots: list[Path] | None = None, by: str = "sources") -> tuple[list[Path], list[Path]]:
    """(training, validation) files: whole sources held aside where a folder has several, else a
    deterministic ``fraction`` of the files; ``hold_out`` globs choose instead
    (:func:`diinn_napari.train.sources.split_by_source`)."""
    split = split_by_source(groups, fraction, seed, hold_out, roots, by)
    return split.train, split.val


@torch.no_grad()
def validate(model: DIINN, planes: list[torch.Tensor], scales: list[float], device, crop: int = 192) -> dict:
    """Mean PSNR of the model and of bicubic on centre crops of the validation planes, per scale.

    Each crop is scored by :func:`diinn_napari.evaluate.compare` (DIINN
    protocol, the engine with its default data consistency), so these numbers
    are the ones ``python -m diinn_napari.evaluate`` prints. ``bias_percent`` is
    the mean of (output - reference) in % of the reference's robust range.
    """
    from ..evaluate import compare

    model.eval()
    result = {}
    for scale in scales:
        rows = []
        for plane in planes:
            _, h, w = plane.shape
            ch, cw = min(h, crop), min(w, crop)
            hr = plane[:, (h - ch) // 2 : (h - ch) // 2 + ch, (w - cw) // 2 : (w - cw) // 2 + cw]
            rows.append(compare(hr.cpu().numpy(), scale, model, device=device))
        result[f"x{scale:g}"] = {"psnr": float(np.mean([r["psnr"] for r in rows])),
                                 "bicubic": float(np.mean([r["bicubic_psnr"] for r in rows])),
                                 "bias_percent": float(np.mean([r["bias"] for r in rows]))}
    result["mean_gain"] = float(np.mean([v["psnr"] - v["bicubic"] for k, v in result.items()]))
    model.train()
    return result


def better_than(candidate: dict, reference: dict | None, tolerance: float = SCALE_TOLERANCE_DB, margin: float = 0.0) -> bool:
    """Whether validation ``candidate`` beats ``reference``: a mean gain over bicubic more than ``margin``
    dB higher and no scale more than ``tolerance`` dB below it. Everything beats ``None`` (nothing
    validated yet)."""
    if reference is None:
        return True
    scales = [k for k in reference if k.startswith("x")]
    return candidate["mean_gain"] > reference["mean_gain"] + margin and all(
        candidate[k]["psnr"] >= reference[k]["psnr"] - tolerance for k in scales if k in candidate)


def validation_report(start: dict | None, result: dict | None) -> str:
    """The final report: per scale, the start's and the result's gain over bicubic and mean bias."""
    if start is None or result is None:
        return "not validated: no held-aside crops (see the warnings above)"
    lines = [f"{'scale':>6} {'start gain':>11} {'result gain':>12} {'start bias':>11} {'result bias':>12}"]
    for key in (k for k in start if k.startswith("x")):
        a, b = start[key], result[key]
        lines.append(f"{key:>6} {a['psnr'] - a['bicubic']:+9.2f}dB {b['psnr'] - b['bicubic']:+10.2f}dB "
                     f"{a['bias_percent']:+10.3f}% {b['bias_percent']:+11.3f}%")
    return "\n".join(lines)


def scores_line(metrics: dict) -> str:
    """One log line: per validated scale, the gain over bicubic and the mean bias."""
    return ", ".join(f"{k} {v['psnr'] - v['bicubic']:+.2f} dB (bias {v['bias_percent']:+.2f} %)"
                     for k, v in metrics.items() if k.startswith("x"))


def validation_scales(max_scale: float) -> list[float]:
    """The scales a run validates at: x2 and x4 (the largest trained scale when it is below 4)."""
    return sorted({s for s in (2.0, min(4.0, max_scale)) if s <= max_scale}) or [max_scale]
