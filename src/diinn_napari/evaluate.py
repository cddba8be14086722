"""Evaluate a model against bicubic on a folder of HR images.

    python -m diinn_napari.evaluate --data DIR|FILE [--data ...] --scales 2,3,4,2.5,6 [--model M]
        [--protocol diinn|liif] [--json out.json] [--limit N]

LR images are made from each HR image by antialiased bicubic downsampling to
round(H / s); the model (through the engine) and bicubic interpolation upscale
them back to the exact HR size. Protocols:

* ``diinn`` (the paper's): PSNR and SSIM on all channels in [0, 1], no border
  shave, no 8-bit rounding; LR-PSNR between the bicubic-downsampled SR and HR.
* ``liif``: PSNR and SSIM on the BT.601 Y channel (65.738, 129.057, 25.064)/256
  with a border of ceil(s) pixels shaved (Set5/Set14 convention).

A 1-channel model is evaluated on the luminance of RGB images; a 3-channel
model on RGB (grayscale images repeated to 3 channels).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from .data import downsample, find_images, image_planes
from .engine import get_model, upscale

Y_WEIGHTS = np.array([65.738, 129.057, 25.064], dtype=np.float64) / 256


def load_hr(path: Path, channels: int) -> np.ndarray | None:
    """First YX plane of a file, normalised like the engine does: (C, Y, X) float32, or None."""
    planes = image_planes(path, channels)
    if not planes and channels == 3:  # a grayscale image for an RGB model
        planes = [np.repeat(p[None], 3, 0) for p in image_planes(path, 1)]
    if not planes:
        return None
    return np.asarray(planes[0], np.float32).reshape(channels, *planes[0].shape[-2:])


def metric_view(image: np.ndarray, protocol: str, scale: float) -> np.ndarray:
    """What the protocol compares: (Y, X, C) in [0, 1], or the shaved Y channel for 'liif'."""
    image = np.clip(image, 0, 1).astype(np.float64)
    if protocol == "liif":
        if image.shape[0] == 3:
            image = np.tensordot(Y_WEIGHTS, image, axes=1)[None]
        shave = math.ceil(scale)
        image = image[:, shave:-shave, shave:-shave]
    return image.transpose(1, 2, 0)


def scores(hr: np.ndarray, sr: np.ndarray, protocol: str, scale: float) -> dict:
    a, b = metric_view(hr, protocol, scale), metric_view(sr, protocol, scale)
    ssim = structural_similarity(a, b, data_range=1.0, channel_axis=-1) if min(a.shape[:2]) >= 7 else float("nan")
    return {"psnr": peak_signal_noise_ratio(a, b, data_range=1.0), "ssim": ssim}


def lr_psnr(hr: torch.Tensor, sr: np.ndarray, lr_size: tuple[int, int]) -> float:
    down_sr = downsample(torch.from_numpy(np.clip(sr, 0, 1))[None], lr_size)[0].numpy()
    down_hr = downsample(hr.clamp(0, 1)[None], lr_size)[0].numpy()
    return peak_signal_noise_ratio(down_hr, down_sr, data_range=1.0)


def evaluate(files: list[Path], scales: list[float], model="default", protocol: str = "diinn", device: str = "auto",
             channels: int | None = None, progress=None) -> dict:
    """Per-scale mean PSNR/SSIM (and LR-PSNR) of the model and of bicubic over ``files``."""
    net = get_model(model, channels or 1, device)
    channels = net.in_channels
    images = [(f, load_hr(f, channels)) for f in files]
    images = [(f, hr) for f, hr in images if hr is not None]
    if not images:
        raise SystemExit(f"error: none of the {len(files)} files has a usable {channels}-channel image")
    results = {"protocol": protocol, "channels": channels, "images": [str(f) for f, _ in images], "scales": {}}
    for scale in scales:
        rows = []
        for path, hr in images:
            _, H, W = hr.shape
            lr_size = (max(1, round(H / scale)), max(1, round(W / scale)))
            hr_t = torch.from_numpy(hr)
            lr = downsample(hr_t[None], lr_size)[0]
            bicubic = F.interpolate(lr[None], (H, W), mode="bicubic", align_corners=False)[0].numpy()
            lr_np = lr.numpy().transpose(1, 2, 0) if channels == 3 else lr.numpy()[0]
            sr = upscale(lr_np, output_shape=(H, W), model=net, rgb=channels == 3, intensity="none")
            sr = sr.transpose(2, 0, 1) if channels == 3 else sr[None]
            ours, base = scores(hr, sr, protocol, scale), scores(hr, bicubic, protocol, scale)
            rows.append({"image": path.name, "psnr": ours["psnr"], "ssim": ours["ssim"], "bicubic_psnr": base["psnr"],
                         "bicubic_ssim": base["ssim"], "lr_psnr": lr_psnr(hr_t, sr, lr_size)})
            if progress:
                progress(scale, path)
        mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0] if key != "image"}
        mean["gain"] = mean["psnr"] - mean["bicubic_psnr"]
        results["scales"][f"x{scale:g}"] = {"mean": mean, "per_image": rows}
    return results


def format_table(results: dict) -> str:
    lines = [f"protocol {results['protocol']}, {len(results['images'])} images, {results['channels']}-channel model",
             f"{'scale':>6} {'bicubic PSNR':>13} {'model PSNR':>11} {'gain dB':>8} {'bicubic SSIM':>13} {'model SSIM':>11} {'LR-PSNR':>8}"]
    for scale, r in results["scales"].items():
        m = r["mean"]
        lines.append(f"{scale:>6} {m['bicubic_psnr']:13.2f} {m['psnr']:11.2f} {m['gain']:+8.2f} "
                     f"{m['bicubic_ssim']:13.4f} {m['ssim']:11.4f} {m['lr_psnr']:8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diinn_napari.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, action="append", help="folder of HR images (recursive) or one file; repeatable")
    p.add_argument("--scales", default="2,3,4", help="comma-separated scales, e.g. 2,3,4,2.5,6")
    p.add_argument("--model", default="default", help="'default', a bundled name, or a weights file")
    p.add_argument("--channels", type=int, default=None, choices=[1, 3], help="with --model default: 1 (gray) or 3 (RGB)")
    p.add_argument("--protocol", default="diinn", choices=["diinn", "liif"])
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="write the full results here")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    a = p.parse_args(argv)
    try:
        scales = [float(s) for s in a.scales.split(",") if s]
    except ValueError:
        p.error(f"--scales must be comma-separated numbers, got {a.scales!r}")
    if not scales or min(scales) < 1:
        p.error("--scales must be >= 1")
    files = [f for d in a.data for f in (find_images(d) if Path(d).is_dir() else [Path(d)])][: a.limit]
    results = evaluate(files, scales, a.model, a.protocol, a.device, a.channels)
    results["model"] = str(a.model)
    print(format_table(results))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
