"""Training speed: optimisation steps and samples per second of a training recipe, and where a step's time goes.

    python benchmarks/bench_train.py [--device cuda] [--encoder rdn] [--steps 10] [--recipe scientific]

Runs :func:`diinn_napari.train.step.train_step`, the step the trainer runs
(``python -m diinn_napari.finetune``): batch 8, 32x32 LR patches, 1024 decoded
pixels per patch, Adam, the scale distribution, augmentations, loss and EMA of
``--recipe`` (finetune's presets); synthetic smooth planes (no data needed),
random weights. After 3 warm-up steps, ``--steps`` timed steps give steps/s
and samples/s; then ``--profile-steps`` more steps are timed per part (pair
sampling, query drawing, encoder forward, decoder forward with the loss,
decoder backward, encoder backward, optimizer, EMA), each part waiting for
the device. ``--compile``: the same with the encoder under ``torch.compile``.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from diinn_napari.model import DIINN
from diinn_napari.train.config import RECIPES, parse_scales
from diinn_napari.train.data import PairSampler
from diinn_napari.train.optim import ema_decay, make_optimizer
from diinn_napari.train.step import PointLoss, StepProfile, train_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="device")
    p.add_argument("--encoder", default="edsr-baseline", help="encoder")
    p.add_argument("--channels", type=int, default=1, help="image channels")
    p.add_argument("--batch", type=int, default=8, help="patches per step")
    p.add_argument("--patch", type=int, default=32, help="LR patch edge")
    p.add_argument("--queries", type=int, default=1024, help="decoded pixels per patch")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after 3 warm-up steps)")
    p.add_argument("--profile-steps", type=int, default=3, help="further steps timed part by part (0: none)")
    p.add_argument("--recipe", default="classic", choices=sorted(RECIPES), help="finetune's recipe preset")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: torch's choice)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the encoder (fixed input shape; compiled during the warm-up, timed apart)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    r = RECIPES[a.recipe]
    torch.manual_seed(0)
    device = torch.device(a.device)
    y, x = np.mgrid[0:256, 0:256] / 9.0
    planes = [torch.from_numpy(np.float32(0.5 + 0.25 * np.sin(x + i) * np.cos(y * 0.7 - i))).expand(a.channels, -1, -1).contiguous()
              for i in range(8)]
    sampler = PairSampler(planes, a.patch, parse_scales(r["scales"]), dark=r["dark"], sparse=r["sparse"], jitter=r["jitter"],
                          shot_noise=r["shot_noise"], aniso=r["aniso"], axial=r["axial"])
    model = DIINN(a.channels, encoder=a.encoder, skip="bicubic").to(device).train()
    net = PointLoss(model, a.queries, r["loss"], r["consistency"])
    optimizer = make_optimizer(model, 5e-4)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if r["ema"] > 0 else None
    gen = torch.Generator().manual_seed(0)
    count = [0]

    def step(profile: StepProfile | None = None) -> None:
        count[0] += 1
        train_step(net, optimizer, sampler, gen, a.batch, device, ema=ema, decay=ema_decay(r["ema"], count[0]), profile=profile)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if a.compile:
        model.encoder = torch.compile(model.encoder)
    start = time.perf_counter()
    for _ in range(3):  # warm-up (and compilation)
        step()
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(a.steps):
        step()
    seconds = (time.perf_counter() - start) / a.steps
    print(f"{a.encoder}, {a.channels} channel(s), {a.recipe} recipe, batch {a.batch} x {a.patch}x{a.patch} LR, "
          f"{a.queries} queries/patch, device {a.device} ({torch.get_num_threads()} CPU threads): {1 / seconds:.3f} steps/s "
          f"({seconds:.2f} s/step, {a.batch / seconds:.2f} samples/s){'; encoder compiled' if a.compile else ''}; "
          f"warm-up {warmup:.1f} s")
    if a.profile_steps:
        profile = StepProfile(device)
        for _ in range(a.profile_steps):
            step(profile)
        total = sum(profile.seconds.values())
        print(f"per step, mean of {a.profile_steps} profiled steps ({1000 * total / a.profile_steps:.0f} ms):")
        for part, t in profile.seconds.items():
            print(f"  {part:<17} {1000 * t / a.profile_steps:8.1f} ms  {100 * t / total:5.1f} %")


if __name__ == "__main__":
    main()
