"""Does a one-scale-down self-check predict where the gray model loses to bicubic? (issue 21)

    python benchmarks/selfcheck.py ../shared/data/domains [--sets held] [--crop 128] [--scales 2,3,4]
        [--placement after|before] [--folder DIR] [--margins 0,0.5] [--threads 1] [--json selfcheck.json]

The engine cannot see the truth, but it can test itself one scale down: the LR
downsampled by the same scale with the training degradation (cast to its
dtype), upscaled back to the LR's size by the engine's default pipeline and by
bicubic, both compared with the LR. From that proxy a blend weight
``w = clip(<m - b, y - b> / |m - b|^2, 0, 1)`` (the MSE-optimal weight of the
model's residual over bicubic on the proxy) would give
``out = bicubic + w * (model - bicubic)`` on the real output.

``--placement after`` (default): the blend is applied to the engine's final
output (after the back-projection and the hole bound). ``before``: to the
network's output, before the engine's steps (the network decodes
``bicubic + w * (network - bicubic)``, :func:`bicubic_blended`); ``w`` is then
fitted against the engine run with ``w = 0`` (the back-projected bicubic, whose
gain is printed too), on the proxy and, for the oracle, on the truth.

Images: the sets of ``benchmarks/fidelity.py`` (its loaders: first plane,
centre crop of ``--crop`` px), or with ``--folder`` every image file there
(first plane, luminance of RGB; e.g. Set14). Per image and scale, ground truth as there (LR =
the crop degraded and cast, the engine's default and bicubic upscale it back):
the proxy's gain over bicubic and its ``w``, the true gain, the true gain of
the blend with the proxy's ``w`` (the blend applied to the final output,
rounded to the dtype), for ``w`` always and for ``w`` only where the proxy's
gain is below each of ``--margins`` dB (else ``w = 1``), and the oracle
``w`` fitted on the truth with its gain. Then, per scale: the mean gain, the
files below bicubic, the worst gain and the largest drop against the default;
and how well the proxy tracks the truth (Pearson correlation of the gains and
of the weights, over all rows and over the ``--focus`` images).
Nothing of this is in the engine: it measures whether it should be.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import centre_crop, collect  # noqa: E402

from diinn_napari.core import cast  # noqa: E402
from diinn_napari.evaluate import load_native  # noqa: E402
from diinn_napari.model.grid import bicubic_matrix  # noqa: E402
from diinn_napari.engine import get_model, upscale  # noqa: E402
from diinn_napari.quality import downsample_array, psnr, robust_range  # noqa: E402


def degrade(plane: np.ndarray, scale: float) -> np.ndarray:
    """The training degradation by ``scale``, cast back to the plane's dtype."""
    h, w = plane.shape
    return cast(downsample_array(plane, (max(1, round(h / scale)), max(1, round(w / scale)))), plane.dtype)


def bicubic(lr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bicubic (the training grid: align_corners=False) of ``lr`` to ``shape``, cast to its dtype."""
    up = F.interpolate(torch.from_numpy(lr.astype(np.float32))[None, None], shape, mode="bicubic",
                       align_corners=False)[0, 0].numpy()
    return cast(up, lr.dtype)


def blend_weight(model: np.ndarray, base: np.ndarray, target: np.ndarray) -> float:
    """The MSE-optimal ``w`` of ``base + w * (model - base)`` against ``target``, clipped to [0, 1]."""
    d = (model.astype(np.float64) - base).ravel()
    r = (target.astype(np.float64) - base).ravel()
    energy = float(d @ d)
    return float(np.clip(d @ r / energy, 0, 1)) if energy > 0 else 1.0


def gain(output: np.ndarray, base: np.ndarray, reference: np.ndarray) -> float:
    """PSNR of ``output`` minus that of ``base`` against ``reference``, on the reference's robust range."""
    value_range = robust_range(reference)
    return psnr(output, reference, value_range) - psnr(base, reference, value_range)


def blended(model: np.ndarray, base: np.ndarray, w: float) -> np.ndarray:
    b = base.astype(np.float64)
    return cast((b + w * (model.astype(np.float64) - b)).astype(np.float32), model.dtype)


def correlation(rows: list[dict], a: str, b: str) -> float:
    """Pearson correlation of two columns of ``rows``."""
    return float(np.corrcoef([r[a] for r in rows], [r[b] for r in rows])[0, 1])


def bicubic_blended(net, w: float):
    """A copy of ``net`` whose decoder returns ``bicubic + w * (its output - bicubic)`` of the LR tile it reads.

    The bicubic of the window is that of the engine's few-level step (:func:`bicubic_matrix`
    on the tile the network sees), so the engine's own steps (back-projection,
    floor, hole bound) then run on the blend. ``w = 1``: ``net`` itself.
    """
    if w == 1:
        return net
    blended_net = copy.deepcopy(net)
    decode = blended_net.decode_window

    def decode_window(x, features, lr_shape, out_shape, window, origin=(0, 0), mode="fast", **options):
        sr = decode(x, features, lr_shape, out_shape, window, origin, mode, **options).float()
        (h, wl), (H, W) = lr_shape, out_shape
        (y0, y1, x0, x1), (t0, s0) = window, origin
        by = bicubic_matrix(h, H, y0, y1, t0, t0 + x.shape[-2]).to(x.device)
        bx = bicubic_matrix(wl, W, x0, x1, s0, s0 + x.shape[-1]).to(x.device)
        base = (by @ x[0].float() @ bx.t())[None]
        return base + w * (sr - base)

    blended_net.decode_window = decode_window
    return blended_net


def score(hr: np.ndarray, scale: float, net, margins: list[float], before: bool = False) -> dict:
    """The proxy, the truth and the blends of one crop at one scale (``before``: blend before the engine's steps)."""
    lr = degrade(hr, scale)
    sr = upscale(lr, output_shape=hr.shape, model=net)
    bic = bicubic(lr, hr.shape)
    lr2 = degrade(lr, scale)  # one scale down: the engine's own test
    proxy_sr = upscale(lr2, output_shape=lr.shape, model=net)
    proxy_bic = bicubic(lr2, lr.shape)
    proxy_gain = gain(proxy_sr, proxy_bic, lr)
    if before:  # the w = 0 end of the blend: bicubic through the engine's steps
        zero = bicubic_blended(net, 0.0)
        base, proxy_base = upscale(lr, output_shape=hr.shape, model=zero), upscale(lr2, output_shape=lr.shape, model=zero)

        def output(w: float) -> np.ndarray:
            return upscale(lr, output_shape=hr.shape, model=bicubic_blended(net, w))
    else:
        base, proxy_base = bic, proxy_bic

        def output(w: float) -> np.ndarray:
            return blended(sr, bic, w)
    w = blend_weight(proxy_sr, proxy_base, lr)
    oracle = blend_weight(sr, base, hr)
    row = {"scale": scale, "proxy_gain": proxy_gain, "w": w, "gain": gain(sr, bic, hr),
           "blend_gain": gain(output(w), bic, hr), "oracle_w": oracle, "oracle_gain": gain(output(oracle), bic, hr),
           "base_gain": gain(base, bic, hr)}
    for m in margins:
        row[f"gated_{m:g}"] = row["blend_gain"] if proxy_gain < m else row["gain"]
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("domains", type=Path, nargs="?", default=None, help="folder with the domain folders")
    p.add_argument("--sets", default="held", help="comma-separated sets of benchmarks/fidelity.py")
    p.add_argument("--folder", type=Path, default=None, help="every image file of this folder instead of the sets")
    p.add_argument("--placement", choices=("after", "before"), default="after",
                   help="blend the engine's final output, or the network's output before the engine's steps")
    p.add_argument("--crop", type=int, default=128, help="centre crop of each plane, in pixels")
    p.add_argument("--scales", default="2,3,4")
    p.add_argument("--margins", default="0,0.5", help="proxy gains (dB) below which the blend is applied")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--focus", default="colicoords", help="also correlate over the images whose name holds this")
    p.add_argument("--json", type=Path, default=None, help="write all rows here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    net = get_model("default", 1, "cpu")
    margins = [float(m) for m in a.margins.split(",")]
    scales = [float(s) for s in a.scales.split(",")]
    rows = []
    gated = " ".join(f"{'<' + format(m, 'g') + ' dB':>7}" for m in margins)
    if (a.folder is None) == (a.domains is None):
        p.error("give the domains folder or --folder, not both")
    if a.folder is not None:
        files = sorted(f for f in a.folder.iterdir() if f.suffix.lower() in (".png", ".tif", ".tiff", ".bmp", ".jpg"))
        images = [("folder", f.name, centre_crop(load_native(f, 1), a.crop)) for f in files]
    else:
        images = collect(a.domains, "default", a.sets.split(","), a.crop)
    before = a.placement == "before"
    print(f"{'image':<46} {'scale':>5} {'proxy':>6} {'w':>5} | {'gain':>6} {'blend':>6} {gated} | {'oracle w':>8} "
          f"{'gain':>6}" + (f" | {'w=0':>6}" if before else ""))
    for group, name, plane in images:
        for scale in scales:
            row = {"set": group, "image": name, "placement": a.placement, **score(plane, scale, net, margins, before)}
            rows.append(row)
            cols = " ".join(f"{row[f'gated_{m:g}']:+7.2f}" for m in margins)
            print(f"{name[:46]:<46} {scale:>5g} {row['proxy_gain']:+6.2f} {row['w']:5.2f} | {row['gain']:+6.2f} "
                  f"{row['blend_gain']:+6.2f} {cols} | {row['oracle_w']:8.2f} {row['oracle_gain']:+6.2f}"
                  + (f" | {row['base_gain']:+6.2f}" if before else ""), flush=True)
    print("\nper scale: mean gain; files below bicubic; worst gain; largest drop against the default")
    keys = ["gain", "blend_gain"] + [f"gated_{m:g}" for m in margins] + ["oracle_gain"] + (["base_gain"] if before else [])
    for scale in scales:
        sel = [r for r in rows if r["scale"] == scale]
        base = np.array([r["gain"] for r in sel])
        for key in keys:
            g = np.array([r[key] for r in sel])
            print(f"x{scale:g} {key:<12} {len(sel)} files: mean {g.mean():+.3f} ({g.mean() - base.mean():+.3f}); "
                  f"below bicubic {int((g < 0).sum())}; worst {g.min():+.2f}; largest drop {(g - base).min():+.2f}")
    print("\nPearson correlation: proxy gain with the true gain; proxy w with the oracle w")
    for label, sel in (("all", rows), (a.focus, [r for r in rows if a.focus in r["image"]])):
        if len(sel) > 2:
            print(f"{label:<12} {len(sel)} rows: gain {correlation(sel, 'proxy_gain', 'gain'):+.2f}; "
                  f"w {correlation(sel, 'w', 'oracle_w'):+.2f}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
