"""Train or fine-tune DIINN on a folder of images.

    python -m diinn_napari.finetune --data tiles/

starts from the bundled default weights and writes ``diinn-finetuned.safetensors``
(best validation gain over bicubic), ``*.last.safetensors`` (latest) and
``*.state.pt`` (optimizer and sampler state for ``--resume``; keep it
out of version control). ``--weights none`` trains from scratch. Under
``torchrun --nproc_per_node N`` it trains with DistributedDataParallel (gloo on
the CPU, nccl on CUDA).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio
from torch import nn

from .data import PairSampler, downsample, find_images, load_planes, parse_scales
from .devices import pick_device
from .model import DIINN
from .weights import load_weights, resolve, save_weights

log = logging.getLogger("diinn_napari.finetune")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m diinn_napari.finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, action="append", help="folder of training images (repeatable)")
    p.add_argument("--weights", default="default", help="start from: 'default', a bundled name, a path, or 'none' (scratch)")
    p.add_argument("--encoder", default="edsr-baseline", choices=["edsr-baseline", "rdn"], help="encoder when --weights none")
    p.add_argument("--variant", default="f", help="decoder variant a-f (paper Table 5) when --weights none")
    p.add_argument("--skip", default="bicubic", choices=["none", "bicubic"], help="global skip when --weights none")
    p.add_argument("--channels", type=int, default=1, choices=[1, 3], help="1 = grayscale/scientific, 3 = RGB")
    p.add_argument("--out", default="diinn-finetuned.safetensors", help="output weights file")
    p.add_argument("--steps", type=int, default=2000, help="optimisation steps")
    p.add_argument("--epochs", type=float, default=None, help="instead of --steps: passes over the training planes")
    p.add_argument("--scales", default="1-4", help="'2,3,4' (set) or '1-4' (uniform range), default 1-4")
    p.add_argument("--patch", type=int, default=32, help="LR patch edge in pixels")
    p.add_argument("--batch", type=int, default=8, help="patches per step (per process)")
    p.add_argument("--queries", type=int, default=1024, help="HR pixels decoded per patch; 0 = the whole patch")
    p.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate")
    p.add_argument("--decay", default="0.5,0.8", help="fractions of the run at which the learning rate halves")
    p.add_argument("--noise", type=float, default=0.0, help="max Gaussian noise sigma added to LR (0..1 units)")
    p.add_argument("--blur", type=float, default=0.0, help="max extra Gaussian blur sigma (HR px) before downsampling")
    p.add_argument("--val-fraction", type=float, default=0.1, help="fraction of files held aside for validation")
    p.add_argument("--hold-out", action="append", default=[], metavar="PATTERN",
                   help="also hold aside files whose name matches this glob (repeatable)")
    p.add_argument("--val-every", type=int, default=200, help="validate every N steps")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="deterministic torch kernels")
    p.add_argument("--resume", action="store_true", help="continue from the *.state.pt beside --out")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--time-limit", type=float, default=None, help="stop (resumably) after this many minutes")
    return p


def side_paths(out: Path) -> dict[str, Path]:
    stem = out.with_suffix("") if out.suffix == ".safetensors" else out
    return {
        "best": stem.with_suffix(".safetensors"),
        "last": stem.with_suffix(".last.safetensors"),
        "state": stem.with_suffix(".state.pt"),
        "log": stem.with_suffix(".log.jsonl"),
    }


class PointLoss(nn.Module):
    """L1 loss of decoded query pixels; a module so DistributedDataParallel can wrap it."""

    def __init__(self, model: DIINN, queries: int):
        super().__init__()
        self.model, self.queries = model, queries

    def forward(self, lr: torch.Tensor, hrs: list[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        queries, targets = [], []
        for hr in hrs:
            _, H, W = hr.shape
            n = H * W if self.queries <= 0 else min(self.queries, H * W)
            flat = torch.randperm(H * W, generator=gen)[:n]
            ys, xs = flat // W, flat % W
            queries.append(((H, W), ys, xs))
            targets.append(hr[:, ys, xs].to(lr.device))
        preds = self.model.decode_points(lr, self.model.encode(lr), queries)
        return F.l1_loss(torch.cat(preds, 1), torch.cat(targets, 1))


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def split_files(groups: list[list[Path]], fraction: float, seed: int, hold_out: list[str] = ()) -> tuple[list[Path], list[Path]]:
    """Hold aside a deterministic ``fraction`` of each group of files (one group per --data folder).

    Each group with two or more files gives at least one, so every source is
    validated; files whose name matches a ``hold_out`` glob are held aside too.
    """
    train, val = [], []
    for i, files in enumerate(groups):
        forced = [f for f in files if any(fnmatch.fnmatch(f.name, pattern) for pattern in hold_out)]
        val += forced
        files = [f for f in files if f not in forced]
        order = sorted(files)
        random.Random(seed * 1000 + i).shuffle(order)
        n_val = min(len(order) - 1, max(1 if fraction > 0 else 0, round(len(order) * fraction)))
        train += order[n_val:]
        val += order[:n_val]
    return sorted(train), sorted(val)


@torch.no_grad()
def validate(model: DIINN, planes: list[torch.Tensor], scales: list[float], device, crop: int = 192) -> dict:
    """Mean PSNR of the model and of bicubic on centre crops of the validation planes, per scale."""
    model.eval()
    result = {}
    for scale in scales:
        ours, bicubic = [], []
        for plane in planes:
            _, h, w = plane.shape
            ch, cw = min(h, crop), min(w, crop)
            hr = plane[:, (h - ch) // 2 : (h - ch) // 2 + ch, (w - cw) // 2 : (w - cw) // 2 + cw][None].to(device)
            lr_size = (max(1, round(ch / scale)), max(1, round(cw / scale)))
            lr = downsample(hr, lr_size)
            sr = model(lr, (ch, cw))
            bi = F.interpolate(lr, (ch, cw), mode="bicubic", align_corners=False)
            target = hr.clamp(0, 1).cpu().numpy()
            ours.append(peak_signal_noise_ratio(target, sr.clamp(0, 1).cpu().numpy(), data_range=1.0))
            bicubic.append(peak_signal_noise_ratio(target, bi.clamp(0, 1).cpu().numpy(), data_range=1.0))
        result[f"x{scale:g}"] = {"psnr": float(np.mean(ours)), "bicubic": float(np.mean(bicubic))}
    result["mean_gain"] = float(np.mean([v["psnr"] - v["bicubic"] for k, v in result.items()]))
    model.train()
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return train(args)["exit_code"]


def train(args: argparse.Namespace) -> dict:
    """Run training as configured by :func:`build_parser`'s arguments; returns the loss history and exit code."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = 0
    if distributed:
        backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
        dist.init_process_group(backend)
        rank = dist.get_rank()
    device = pick_device(args.device if not distributed or args.device != "auto" else ("cuda" if backend == "nccl" else "cpu"))
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    paths = side_paths(Path(args.out))

    # ---- model -------------------------------------------------------------------------------
    if args.weights == "none":
        model = DIINN(args.channels, encoder=args.encoder, variant=args.variant, skip=args.skip)
        base = "none (trained from scratch)"
    else:
        weights_file = resolve(args.weights, args.channels)
        model = load_weights(weights_file, "cpu")
        base = str(args.weights)
        if model.in_channels != args.channels:
            log.info("using the %d-channel model of %s", model.in_channels, weights_file)
    model.to(device).train()
    channels = model.in_channels

    # ---- data --------------------------------------------------------------------------------
    groups = [find_images(folder) for folder in args.data]
    train_files, val_files = split_files(groups, args.val_fraction, args.seed, args.hold_out)
    scales = parse_scales(args.scales)
    min_size = args.patch * 2
    train = load_planes(train_files, channels, min_size)
    val = load_planes(val_files, channels, min_size)
    if not train.planes:
        raise SystemExit(f"error: no usable training image in {', '.join(args.data)} "
                         f"({len(train.skipped)} skipped: unreadable, not {channels}-channel, or smaller than {min_size} px)")
    skipped = len(train.skipped) + len(val.skipped)
    if rank == 0:
        log.info("training on %d planes from %d files, validating on %d planes from %d files; %d files skipped",
                 len(train.planes), len(train.files), len(val.planes), len(val.files), skipped)
    val_planes = val.planes[:8]
    val_scales = [s for s in (2.0, 3.0, 4.0) if s <= scales[1][-1]] or [scales[1][-1]]
    sampler = PairSampler(train.planes, args.patch, scales, args.noise, args.blur)
    steps = args.steps if args.epochs is None else max(1, math.ceil(args.epochs * len(train.planes) / args.batch))

    net: nn.Module = PointLoss(model, args.queries)
    if distributed:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    milestones = [int(steps * float(f)) for f in args.decay.split(",") if f]
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank)
    step, best_gain, last_val = 0, -math.inf, None

    if args.resume and paths["state"].exists():
        state = torch.load(paths["state"], map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"][rank])
        step, best_gain = state["step"], state["best_gain"]
        last_val = json.loads(state["last_val"]) if state.get("last_val") else None
        if rank == 0:
            log.info("resumed %s at step %d", paths["state"], step)

    meta_base = {
        "channels": channels,
        "base_weights": base,
        "data": [str(d) for d in args.data],
        "train_files": len(train.files),
        "train_planes": len(train.planes),
        "val_files": [str(f) for f in val_files],
        "recipe": {k: getattr(args, k) for k in ("scales", "patch", "batch", "queries", "lr", "decay", "noise", "blur", "seed")},
    }

    def save(kind: str, metrics) -> None:
        meta = dict(meta_base, steps=step, total_steps=steps, metrics=metrics, world_size=dist.get_world_size() if distributed else 1)
        save_weights(model, paths[kind], meta)

    def save_state() -> None:
        gens = [gen.get_state()]
        if distributed:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, gen.get_state())
            gens = gathered
        if rank != 0:
            return
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": gens,
            "step": step,
            "best_gain": best_gain,
            "last_val": json.dumps(last_val) if last_val else "",
        }
        tmp = paths["state"].with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, paths["state"])
        save("last", last_val)

    from tqdm import tqdm

    bar = tqdm(total=steps, initial=step, disable=rank != 0, desc="training", unit="step", dynamic_ncols=True)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a scheduler's stop, `kill`) saves like Ctrl-C; SIGINT may be ignored in background jobs
        signal.signal(signal.SIGTERM, _interrupt)
    started = time.time()
    history = []
    try:
        while step < steps:
            # step-wise decay as a function of the step alone, so a resumed run may change --steps
            for group in optimizer.param_groups:
                group["lr"] = args.lr * 0.5 ** sum(step >= m for m in milestones)
            pairs = [sampler.sample(gen) for _ in range(args.batch)]
            lr_batch = torch.stack([lr for lr, _ in pairs]).to(device)
            loss = net(lr_batch, [hr for _, hr in pairs], gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            history.append(loss.item())
            bar.update(1)
            postfix = {"loss": f"{loss.item():.4f}"}
            if last_val:
                postfix["val_gain_dB"] = f"{last_val['mean_gain']:+.2f}"
            bar.set_postfix(postfix)
            if step % args.val_every == 0 or step == steps:
                if rank == 0 and val_planes:
                    last_val = validate(model, val_planes, val_scales, device)
                    with open(paths["log"], "a") as f:
                        f.write(json.dumps({"step": step, "loss": loss.item(), "seconds": time.time() - started, **last_val}) + "\n")
                    if last_val["mean_gain"] > best_gain:
                        best_gain = last_val["mean_gain"]
                        save("best", last_val)
                save_state()
            if args.time_limit and time.time() - started > args.time_limit * 60:
                save_state()
                log.info("time limit reached at step %d; saved %s (continue with --resume)", step, paths["state"])
                break
    except KeyboardInterrupt:
        bar.close()
        save_state()
        if rank == 0:
            log.info("interrupted at step %d; saved %s (resume with --resume)", step, paths["state"])
        return {"losses": history, "exit_code": 130, "step": step}
    bar.close()
    if rank == 0 and (not val_planes or not paths["best"].exists()):
        save("best", last_val)  # nothing to validate against: the final weights are the result
    if rank == 0:
        log.info("done: %d steps; best weights %s (mean gain over bicubic %+.2f dB)", step, paths["best"], best_gain)
    if distributed:
        dist.destroy_process_group()
    return {"losses": history, "exit_code": 0, "step": step}


if __name__ == "__main__":
    sys.exit(main())
