"""Training speed: optimisation steps per second of the bundled recipe.

    python benchmarks/bench_train.py [--device cuda] [--encoder rdn] [--steps 10]

Recipe: batch 8, 32x32 LR patches, scale U(1, 4), 1024 decoded pixels per
patch, Adam; synthetic smooth planes (no data needed), random weights.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from diinn_napari.data import PairSampler
from diinn_napari.finetune import PointLoss
from diinn_napari.model import DIINN


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--encoder", default="edsr-baseline")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--queries", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args()
    torch.manual_seed(0)
    device = torch.device(a.device)
    y, x = np.mgrid[0:256, 0:256] / 9.0
    planes = [torch.from_numpy(np.float32(0.5 + 0.25 * np.sin(x + i) * np.cos(y * 0.7 - i))).expand(a.channels, -1, -1).contiguous()
              for i in range(8)]
    sampler = PairSampler(planes, a.patch, ("uniform", [1.0, 4.0]))
    model = DIINN(a.channels, encoder=a.encoder, skip="bicubic").to(device).train()
    net = PointLoss(model, a.queries)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    gen = torch.Generator().manual_seed(0)

    def step():
        pairs = [sampler.sample(gen) for _ in range(a.batch)]
        loss = net(torch.stack([lr for lr, _ in pairs]).to(device), [hr for _, hr in pairs], gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up
        step()
    start = time.perf_counter()
    for _ in range(a.steps):
        step()
    seconds = (time.perf_counter() - start) / a.steps
    print(f"{a.encoder}, {a.channels} channel(s), batch {a.batch} x {a.patch}x{a.patch} LR, {a.queries} queries/patch, "
          f"device {a.device} ({torch.get_num_threads()} CPU threads): {1 / seconds:.2f} steps/s ({seconds:.2f} s/step)")


if __name__ == "__main__":
    main()
