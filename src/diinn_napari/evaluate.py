"""Evaluate a model against bicubic on a folder of HR images, for quality and for fidelity.

    python -m diinn_napari.evaluate --data DIR|FILE [--data ...] --scales 2,3,4,2.5,6 [--model M]
        [--protocol diinn|liif] [--consistency N] [--real [--out-dtype float32]] [--json out.json] [--limit N]

LR images are made from each HR image by antialiased bicubic downsampling to
round(H / s) (:func:`diinn_napari.quality.downsample`, the degradation the
models are trained for); the model (through the engine) and bicubic
interpolation upscale them back to the exact HR size. Protocols:

* ``diinn`` (the paper's): PSNR and SSIM on all channels in [0, 1], no border
  shave, no 8-bit rounding; LR-PSNR between the bicubic-downsampled SR and HR.
* ``liif``: PSNR and SSIM on the BT.601 Y channel (65.738, 129.057, 25.064)/256
  with a border of ceil(s) pixels shaved (Set5/Set14 convention).

Pixels without data (a GeoTIFF's nodata value or internal mask, e.g. the
black frame of a rotated satellite scene) are left out of every score, with
a margin of ceil(4 s) pixels around them (where the degradation and the
interpolation mix them into valid pixels); ``valid`` is the fraction kept.

Fidelity, per image and mean, for the model and for bicubic: ``bias``, the
mean of output - HR in % of the HR plane's robust range (p99.9 - p0.1), and
``clipped``, the fraction of output pixels that the cast to the file's dtype
puts at its limits where the HR pixel is inside them.

``--real``: no ground truth. Each image is upscaled itself, in its own dtype
with the engine's default intensity handling (what a user gets), and the
result is downsampled back with the degradation: PSNR (on the input's robust
range) and mean bias against the input, the LR-consistency; the undershoot
(fraction of output pixels below the plane's minimum minus 1 % of its robust
range), the new zeros (pixels at or below 0 where the input is above 0) and
the fraction clipped at the dtype's limits where the input is not, each for
the model and for bicubic. ``--out-dtype float32`` shows the same on float
output, where nothing is clipped.

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

from .core import cast
from .io import data_pixels, find_images, image_planes, nodata_rule, read_image
from .engine import get_model, upscale
from .settings import DEFAULT_CONSISTENCY, PRECISIONS
from .intensity import Intensity, fit_intensity, to_luminance
from .model.grid import nearest_lr_index
from .quality import (clipped_fraction, downsample, dtype_limits, lr_consistency, mean_bias_percent,
                      new_zero_fraction, psnr, robust_range, ssim, undershoot_fraction)

Y_WEIGHTS = np.array([65.738, 129.057, 25.064], dtype=np.float64) / 256


def load_hr(path: Path, channels: int) -> np.ndarray | None:
    """First YX plane of a file, normalised like the engine does: (C, Y, X) float32, or None."""
    planes = image_planes(path, channels)
    if not planes and channels == 3:  # a grayscale image for an RGB model
        planes = [np.repeat(p[None], 3, 0) for p in image_planes(path, 1)]
    if not planes:
        return None
    return np.asarray(planes[0], np.float32).reshape(channels, *planes[0].shape[-2:])


def stored_plane(path: Path) -> tuple[np.ndarray, bool]:
    """The first plane of a file as stored: (Y, X), or (Y, X, 3 or 4) colour, and whether it is colour."""
    array, is_rgb = read_image(path)
    return (array.reshape(-1, *array.shape[-3:])[0] if is_rgb else array.reshape(-1, *array.shape[-2:])[0]), is_rgb


def native_plane(plane: np.ndarray, is_rgb: bool, channels: int) -> np.ndarray:
    """A :func:`stored_plane` in its own units and dtype, as a ``channels`` model takes it (:func:`load_native`)."""
    if is_rgb:
        if channels == 3:
            return plane
        luma = to_luminance(plane)
        return cast(luma, plane.dtype) if plane.dtype.kind in "ui" else luma
    return np.repeat(plane[..., None], 3, -1) if channels == 3 else plane


def load_native(path: Path, channels: int) -> np.ndarray | None:
    """First plane of a file in its own units and dtype, as a ``channels`` model takes it.

    (Y, X) for 1 channel (the luminance of RGB files, rounded to their integer
    dtype), (Y, X, 3) for 3 (grayscale repeated); None if there is no such plane.
    """
    return native_plane(*stored_plane(path), channels)


def load_valid(path: Path, stored: np.ndarray | None = None) -> np.ndarray | None:
    """The (Y, X) mask of the file's first plane that holds data, or None (all of it).

    Pixels at the file's nodata value (NaN included; a colour pixel in every colour)
    or outside its internal data mask are not data: :func:`diinn_napari.io.data_pixels`
    on the plane as stored (``stored``: that plane, :func:`stored_plane`, when the
    caller has read it), the rule of the engine and of training's patches.
    """
    return data_pixels(stored_plane(path)[0] if stored is None else stored, *nodata_rule(path))


def scored_pixels(valid: np.ndarray, scale: float) -> np.ndarray:
    """The valid pixels far enough from missing data to be scored: ``valid`` eroded by ceil(4 ``scale``) pixels.

    The antialiased downsampling reaches 2 s HR pixels and bicubic up-sampling
    2 LR pixels (2 s HR pixels) around each output pixel: closer to a pixel
    without data, both the model and bicubic see it mixed in.
    """
    from scipy.ndimage import distance_transform_cdt

    return distance_transform_cdt(valid, metric="chessboard") > math.ceil(4 * scale)


def _normalisation(native: np.ndarray) -> Intensity:
    """The map :func:`load_hr` used for this plane (uint8 by its range, others by robust percentiles)."""
    return Intensity(0.0, 255.0) if native.dtype == np.uint8 else fit_intensity(native)


def metric_view(image: np.ndarray, protocol: str, scale: float) -> np.ndarray:
    """What the protocol compares: (Y, X, C) in [0, 1], or the shaved Y channel for 'liif'."""
    image = np.clip(image, 0, 1).astype(np.float64)
    if protocol == "liif":
        if image.shape[0] == 3:
            image = np.tensordot(Y_WEIGHTS, image, axes=1)[None]
        shave = math.ceil(scale)
        image = image[:, shave:-shave, shave:-shave]
    return image.transpose(1, 2, 0)


def scores(hr: np.ndarray, sr: np.ndarray, protocol: str, scale: float, where: np.ndarray | None = None) -> dict:
    """PSNR and SSIM of ``sr`` against ``hr`` in the protocol's view, over the ``where`` pixels (default: all)."""
    a, b = metric_view(hr, protocol, scale), metric_view(sr, protocol, scale)
    if where is None:
        return {"psnr": psnr(b, a, 1.0), "ssim": ssim(b, a, 1.0, channel_axis=-1)}
    where = metric_view(where[None].astype(np.float64), protocol, scale)[..., 0] > 0.5  # the same shave
    return {"psnr": psnr(b[where], a[where], 1.0), "ssim": ssim(b, a, 1.0, channel_axis=-1, where=where)}


def lr_psnr(hr: torch.Tensor, sr: np.ndarray, lr_size: tuple[int, int], where: np.ndarray | None = None) -> float:
    """PSNR of the downsampled SR against the downsampled HR (over LR pixels made of ``where`` pixels only)."""
    down_sr = downsample(torch.from_numpy(np.clip(sr, 0, 1))[None], lr_size)[0].numpy()
    down_hr = downsample(hr.clamp(0, 1)[None], lr_size)[0].numpy()
    if where is None:
        return psnr(down_sr, down_hr, 1.0)
    lr_where = downsample(torch.from_numpy(where[None, None].astype(np.float32)), lr_size)[0, 0].numpy() > 0.999
    return psnr(down_sr[:, lr_where], down_hr[:, lr_where], 1.0)


def _lr_size(shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    return max(1, round(shape[0] / scale)), max(1, round(shape[1] / scale))


def _channels_first(image: np.ndarray, rgb: bool) -> np.ndarray:
    return image.transpose(2, 0, 1) if rgb else image[None]


def compare(hr: np.ndarray, scale: float, net, protocol: str = "diinn", consistency: int = DEFAULT_CONSISTENCY,
            limits: tuple[float, float] = (0.0, 1.0), device: str | torch.device = "auto",
            precision: str = "fp32", ensemble: bool = False, valid: np.ndarray | None = None) -> dict:
    """Scores of one HR image (C, H, W) in [0, 1] at one scale, for the model and for bicubic.

    The LR is the training degradation of ``hr``; the model runs through the
    engine (so ``consistency`` applies). The one comparison behind
    ``evaluate`` and the trainer's validation, so their numbers agree.
    ``limits`` is the file dtype's range in these normalised units (for ``clipped``);
    ``precision`` the engine's ("bf16": the approximate fast path); ``valid``
    the (H, W) pixels that hold data (:func:`load_valid`): only those away from
    missing data are scored (:func:`scored_pixels`; ``valid`` in the result: the fraction scored).
    """
    channels, H, W = hr.shape
    lr_size = _lr_size((H, W), scale)
    hr_t = torch.from_numpy(np.ascontiguousarray(hr, dtype=np.float32))
    lr = downsample(hr_t[None], lr_size)[0]
    bicubic = F.interpolate(lr[None], (H, W), mode="bicubic", align_corners=False)[0].numpy()
    lr_np = lr.numpy().transpose(1, 2, 0) if channels == 3 else lr.numpy()[0]
    sr = upscale(lr_np, output_shape=(H, W), model=net, rgb=channels == 3, intensity="none",
                 consistency=consistency, device=device, precision=precision, ensemble=ensemble)
    sr = _channels_first(sr, channels == 3)
    where = None if valid is None else scored_pixels(valid, scale)
    if where is not None and not where.any():
        raise ValueError(f"no pixel of this image is {math.ceil(4 * scale)} px away from missing data (nodata) at x{scale:g}")
    ours, base = scores(hr, sr, protocol, scale, where), scores(hr, bicubic, protocol, scale, where)
    pick = (lambda a: a) if where is None else (lambda a: a[:, where])  # (C, n) of the scored pixels
    value_range = robust_range(pick(hr))
    return {
        "psnr": ours["psnr"], "ssim": ours["ssim"], "bicubic_psnr": base["psnr"],
        "bicubic_ssim": base["ssim"], "lr_psnr": lr_psnr(hr_t, sr, lr_size, where),
        "bias": mean_bias_percent(pick(sr), pick(hr), value_range),
        "bicubic_bias": mean_bias_percent(pick(bicubic), pick(hr), value_range),
        "clipped": clipped_fraction(pick(sr), pick(hr), limits),
        "bicubic_clipped": clipped_fraction(pick(bicubic), pick(hr), limits),
        "valid": 1.0 if where is None else float(where.mean()),
    }


def evaluate(files: list[Path], scales: list[float], model="default", protocol: str = "diinn", device: str = "auto",
             channels: int | None = None, progress=None, consistency: int = DEFAULT_CONSISTENCY,
             precision: str = "fp32", ensemble: bool = False) -> dict:
    """Per-scale mean and per-image PSNR/SSIM (and LR-PSNR), bias and clipping of the model and of bicubic.

    ``consistency`` is the engine's back-projection setting (see
    :func:`diinn_napari.upscale`). In this protocol the engine works on
    normalised floats, so its output is not cast; ``clipped`` counts what the
    cast to the file's dtype would clip.
    """
    net = get_model(model, channels or 1, device)
    channels = net.in_channels
    images = []
    for f in files:
        hr, (stored, is_rgb) = load_hr(f, channels), stored_plane(f)
        native = native_plane(stored, is_rgb, channels)
        if hr is not None and native is not None:
            limits = np.asarray(dtype_limits(native.dtype), np.float64)
            mapping = _normalisation(native)
            images.append((f, hr, (limits - mapping.lo) / (mapping.hi - mapping.lo), load_valid(f, stored)))
    if not images:
        raise ValueError(f"none of the {len(files)} files has a usable {channels}-channel image")
    results = {"protocol": protocol, "channels": channels, "consistency": consistency, "precision": precision,
               "ensemble": ensemble, "images": [str(f) for f, *_ in images], "scales": {}}
    for scale in scales:
        rows = []
        for path, hr, limits, valid in images:
            rows.append({"image": path.name, **compare(hr, scale, net, protocol, consistency, tuple(limits),
                                                        device=device, precision=precision, ensemble=ensemble,
                                                        valid=valid)})
            if progress:
                progress(scale, path)
        results["scales"][f"x{scale:g}"] = {"mean": _mean(rows), "per_image": rows}
    return results


def _mean(rows: list[dict]) -> dict:
    mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0] if key != "image"}
    if "psnr" in mean and "bicubic_psnr" in mean:
        mean["gain"] = mean["psnr"] - mean["bicubic_psnr"]
    return mean


def real_scores(image: np.ndarray, scale: float | tuple[float, float], net, rgb: bool = False,
                consistency: int = DEFAULT_CONSISTENCY, device: str | torch.device = "auto",
                precision: str = "fp32", out_dtype=None) -> dict:
    """Ground-truth-free fidelity of one plane: upscale it, downsample back, compare with it.

    ``image`` is (Y, X) or (Y, X, 3) in its own dtype; the engine runs with
    its default intensity handling and output dtype (the user's path; or
    ``out_dtype``, e.g. float32, where nothing clips), on ``device`` at
    ``precision``. Returns, for the model and for bicubic (cast to the same
    dtype): LR-consistency PSNR (dB on the input's robust range) and bias
    (% of it); ``undershoot``, the fraction of output pixels below the
    plane's own minimum minus 1 % of its robust range (per channel: values
    the data cannot have); ``new_zeros``, the fraction at or below 0 whose
    nearest input pixel is above 0 (black holes); and ``clipped``, the
    fraction at the dtype's limits whose nearest input pixel is inside them.
    """
    out = upscale(image, scale, model=net, rgb=rgb, consistency=consistency, device=device, precision=precision,
                  out_dtype=out_dtype)
    (h, w), (H, W) = image.shape[:2], out.shape[:2]
    lr = _channels_first(np.asarray(image, np.float32), rgb)
    value_range = robust_range(lr)
    bicubic = F.interpolate(torch.from_numpy(np.ascontiguousarray(lr))[None], (H, W), mode="bicubic",
                            align_corners=False)[0].numpy()
    bicubic = cast(bicubic, out.dtype)  # as a file of the output's dtype would hold it
    ours_cf = _channels_first(out, rgb)
    ours = lr_consistency(ours_cf.astype(np.float32), lr, value_range)
    base = lr_consistency(bicubic.astype(np.float32), lr, value_range)
    nearest_native = image[nearest_lr_index(h, H)][:, nearest_lr_index(w, W)]  # the input on the output grid
    nearest = _channels_first(nearest_native.astype(np.float32), rgb)
    holes = {}
    for key, result in (("", ours_cf), ("bicubic_", bicubic)):
        holes[key + "undershoot"] = float(np.mean([undershoot_fraction(result[c], lr[c]) for c in range(len(lr))]))
        holes[key + "new_zeros"] = new_zero_fraction(result, nearest)
    return {"lr_psnr": ours["psnr"], "bias": ours["bias"], "bicubic_lr_psnr": base["psnr"],
            "bicubic_bias": base["bias"], **holes,
            "clipped": clipped_fraction(out, nearest_native.astype(out.dtype))}


def evaluate_real(files: list[Path], scales: list[float], model="default", device: str = "auto",
                  channels: int | None = None, progress=None, consistency: int = DEFAULT_CONSISTENCY,
                  precision: str = "fp32", out_dtype=None) -> dict:
    """:func:`real_scores` for the first plane of every file at every scale, on ``device``: per image and mean."""
    net = get_model(model, channels or 1, device)
    channels = net.in_channels
    images = [(f, load_native(f, channels)) for f in files]
    images = [(f, im) for f, im in images if im is not None]
    if not images:
        raise ValueError(f"none of the {len(files)} files has a usable {channels}-channel image")
    results = {"protocol": "real", "channels": channels, "consistency": consistency, "precision": precision,
               "out_dtype": None if out_dtype is None else str(np.dtype(out_dtype)),
               "images": [str(f) for f, _ in images], "scales": {}}
    for scale in scales:
        rows = []
        for path, image in images:
            rows.append({"image": path.name, **real_scores(image, scale, net, channels == 3, consistency, device,
                                                           precision, out_dtype)})
            if progress:
                progress(scale, path)
        results["scales"][f"x{scale:g}"] = {"mean": _mean(rows), "per_image": rows}
    return results


def format_table(results: dict, per_image: bool = False) -> str:
    """The results as a text table: one line per scale (and per image with ``per_image``)."""
    head = (f"protocol {results['protocol']}, {len(results['images'])} images, {results['channels']}-channel model, "
            f"consistency {results.get('consistency', 0)}")
    if results["protocol"] == "real":
        lines = [head, f"{'scale':>6} {'image':<28} {'bicubic LR-PSNR':>16} {'model LR-PSNR':>14} "
                       f"{'bicubic bias %':>15} {'model bias %':>13} {'clipped %':>10} {'undershoot %':>13} "
                       f"{'bic undershoot %':>17} {'new zeros %':>12} {'bic new zeros %':>16}"]
        fmt = ("{:>6} {:<28} {bicubic_lr_psnr:16.2f} {lr_psnr:14.2f} {bicubic_bias:+15.3f} {bias:+13.3f} {clipped_pct:10.3f} "
               "{undershoot_pct:13.3f} {bicubic_undershoot_pct:17.3f} {new_zeros_pct:12.3f} {bicubic_new_zeros_pct:16.3f}")
    else:
        lines = [head, f"{'scale':>6} {'image':<28} {'bicubic PSNR':>13} {'model PSNR':>11} {'gain dB':>8} "
                       f"{'bicubic SSIM':>13} {'model SSIM':>11} {'LR-PSNR':>8} {'bias %':>8} {'clipped %':>10} {'scored %':>9}"]
        fmt = ("{:>6} {:<28} {bicubic_psnr:13.2f} {psnr:11.2f} {gain:+8.2f} {bicubic_ssim:13.4f} {ssim:11.4f} "
               "{lr_psnr:8.2f} {bias:+8.3f} {clipped_pct:10.3f} {valid_pct:9.1f}")
    for scale, r in results["scales"].items():
        rows = [("mean", r["mean"])] + ([(row["image"], row) for row in r["per_image"]] if per_image else [])
        for name, row in rows:
            values = {**row, **{f"{key}_pct": 100 * row[key] for key in
                                ("clipped", "undershoot", "bicubic_undershoot", "new_zeros", "bicubic_new_zeros", "valid")
                                if key in row}}
            values.setdefault("gain", row.get("psnr", 0) - row.get("bicubic_psnr", 0))
            lines.append(fmt.format(scale, name[:28], **values))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diinn_napari.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, action="append", help="folder of HR images (recursive) or one file; repeatable")
    p.add_argument("--scales", default="2,3,4", help="comma-separated scales, e.g. 2,3,4,2.5,6")
    p.add_argument("--model", default="default", help="'default', a bundled name, or a weights file")
    p.add_argument("--channels", type=int, default=None, choices=[1, 3], help="with --model default: 1 (gray) or 3 (RGB)")
    p.add_argument("--protocol", default="diinn", choices=["diinn", "liif"], help="metric protocol (see above)")
    p.add_argument("--consistency", type=int, default=DEFAULT_CONSISTENCY,
                   help="back-projection steps of the engine's data consistency (0 = off)")
    p.add_argument("--real", action="store_true",
                   help="no ground truth: upscale each image itself, downsample back, compare with it (LR-consistency)")
    p.add_argument("--out-dtype", default=None, choices=["float32"],
                   help="with --real: write float32 output (nothing clips; undershoot shows as negative values)")
    p.add_argument("--per-image", action="store_true", help="print a line per image, not only the means")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda:N' or 'mps'")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="the engine's precision: fp32 (exact), bf16 (CPU with avx512_bf16/AMX, or CUDA), fp16 (CUDA)")
    p.add_argument("--ensemble", action="store_true",
                   help="the geometric self-ensemble: mean of the 8 flipped/transposed runs (about 8x the time)")
    p.add_argument("--json", default=None, help="write the full results (per image and mean) here")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    a = p.parse_args(argv)
    try:
        scales = [float(s) for s in a.scales.split(",") if s]
    except ValueError:
        p.error(f"--scales must be comma-separated numbers, got {a.scales!r}")
    if not scales or min(scales) < 1:
        p.error("--scales must be >= 1")
    if a.consistency < 0:
        p.error("--consistency must be >= 0")
    try:
        files = [f for d in a.data for f in (find_images(d) if Path(d).is_dir() else [Path(d)])][: a.limit]
        if a.real:
            results = evaluate_real(files, scales, a.model, a.device, a.channels, consistency=a.consistency,
                                    precision=a.precision, out_dtype=a.out_dtype)
        else:
            results = evaluate(files, scales, a.model, a.protocol, a.device, a.channels, consistency=a.consistency,
                               precision=a.precision, ensemble=a.ensemble)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results["model"] = str(a.model)
    print(format_table(results, a.per_image))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
