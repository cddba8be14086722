"""Training speed: optimisation steps and samples per second of a training recipe.

    python benchmarks/bench_train.py [--device cuda] [--encoder rdn] [--steps 10] [--recipe scientific]

Recipe: batch 8, 32x32 LR patches, 1024 decoded pixels per patch, Adam, the
scale distribution, augmentations and loss of ``--recipe`` (finetune's
presets); synthetic smooth planes (no data needed), random weights. Also
prints the time spent drawing pairs, the part that runs in Python.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from diinn_napari.data import PairSampler
from diinn_napari.data import parse_scales
from diinn_napari.finetune import RECIPES, PointLoss
from diinn_napari.model import DIINN


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="device")
    p.add_argument("--encoder", default="edsr-baseline", help="encoder")
    p.add_argument("--channels", type=int, default=1, help="image channels")
    p.add_argument("--batch", type=int, default=8, help="patches per step")
    p.add_argument("--patch", type=int, default=32, help="LR patch edge")
    p.add_argument("--queries", type=int, default=1024, help="decoded pixels per patch")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after 3 warm-up steps)")
    p.add_argument("--recipe", default="classic", choices=sorted(RECIPES), help="finetune's recipe preset")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: torch's choice)")
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
                          shot_noise=r["shot_noise"], aniso=r["aniso"])
    model = DIINN(a.channels, encoder=a.encoder, skip="bicubic").to(device).train()
    net = PointLoss(model, a.queries, r["loss"], r["consistency"])
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    gen = torch.Generator().manual_seed(0)

    sampling = [0.0]

    def step():
        t = time.perf_counter()
        lr, hrs = sampler.sample_batch(gen, a.batch)
        sampling[0] += time.perf_counter() - t
        loss = net(lr.to(device), hrs, gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up
        step()
    start, sampling[0] = time.perf_counter(), 0.0
    for _ in range(a.steps):
        step()
    seconds = (time.perf_counter() - start) / a.steps
    print(f"{a.encoder}, {a.channels} channel(s), {a.recipe} recipe, batch {a.batch} x {a.patch}x{a.patch} LR, "
          f"{a.queries} queries/patch, device {a.device} ({torch.get_num_threads()} CPU threads): {1 / seconds:.2f} steps/s "
          f"({seconds:.2f} s/step, {a.batch / seconds:.1f} samples/s; drawing pairs {1000 * sampling[0] / a.steps:.1f} ms/step)")


if __name__ == "__main__":
    main()
