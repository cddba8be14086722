"""Engine speed and memory on this machine: fast vs reference decoder, and a big job.

    python benchmarks/bench_engine.py                 # 128x128 -> x4 on the CPU, both modes
    python benchmarks/bench_engine.py --big 2048      # + a 2048x2048 -> x4 job (8192x8192 output)
    python benchmarks/bench_engine.py --device cuda   # + the paper's Table 4 sizes on the GPU

Each measurement runs in a fresh subprocess so that its peak memory (max RSS, or
CUDA max allocated) is its own. Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

RUN = """
import json, resource, sys, time
import numpy as np, torch
from diinn_napari import upscale
from diinn_napari.model import DIINN
a = json.loads(sys.argv[1])
torch.manual_seed(0)
model = DIINN(1, skip="bicubic").eval()
image = (np.random.default_rng(0).random((a["size"], a["size"])) * 255).astype(np.uint8)
dev = torch.device(a["device"])
model.to(dev)
upscale(image[:16, :16], 2, model=model, device=dev, mode=a["mode"])  # warm-up: kernels, allocator
if dev.type == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
def run():
    if a["textbook"]:  # the released code's way: the whole output in one decoder call
        with torch.no_grad():
            x = torch.from_numpy(image)[None, None].float().div(255).to(dev)
            return model(x, (round(a["size"] * a["scale"]),) * 2, mode="reference", chunk_size=1 << 40).cpu()
    return upscale(image, a["scale"], model=model, device=dev, mode=a["mode"], tile_size=a.get("tile"))
times = []
for _ in range(a["repeat"]):  # steady state: the best of the repeats
    t = time.perf_counter()
    out = run()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    times.append(time.perf_counter() - t)
seconds = min(times)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
res = {"seconds": seconds, "out_pixels": int(np.prod(out.shape)), "extra_bytes": peak - base}
if dev.type == "cuda":
    res["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
print(json.dumps(res))
"""


def measure(**kwargs) -> dict:
    args = {"textbook": False, "mode": "fast", "device": "cpu", "repeat": 2, **kwargs}
    done = subprocess.run([sys.executable, "-c", RUN, json.dumps(args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def line(name: str, r: dict) -> str:
    mpx = r["out_pixels"] / r["seconds"] / 1e6
    mem = f"{r['extra_bytes'] / 2**20:8.0f} MiB extra RSS ({r['extra_bytes'] / r['out_pixels']:6.1f} B/output px)"
    if "cuda_peak_bytes" in r:
        mem += f", {r['cuda_peak_bytes'] / 2**20:.0f} MiB CUDA peak"
    return f"{name:<44} {r['seconds'] * 1000:9.1f} ms  {mpx:7.3f} Mpx/s  {mem}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=128, help="input edge for the mode comparison")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--big", type=int, default=0, help="also run a BIG x BIG -> x4 job (0 = skip)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {a.device}")
    n, s = a.size, a.scale
    print(f"== {n}x{n} -> x{s} ({n * s}x{n * s} output), 1 channel, EDSR-baseline + DIINN decoder (4 x 256)")
    fast = measure(size=n, scale=s, mode="fast", device=a.device)
    ref = measure(size=n, scale=s, mode="reference", device=a.device)
    textbook = measure(size=n, scale=s, textbook=True, device=a.device)
    print(line("engine, mode=fast (factorised, chunked)", fast))
    print(line("engine, mode=reference (textbook, chunked)", ref))
    print(line("textbook, whole output in one call", textbook))
    print(f"fast / reference throughput: {ref['seconds'] / fast['seconds']:.2f}x;"
          f" fast / textbook-whole: {textbook['seconds'] / fast['seconds']:.2f}x")
    if a.device.startswith("cuda"):
        print("== paper Table 4 sizes: 48x48 input -> 128, 256, 512 output (engine, mode=fast)")
        for out in (128, 256, 512):
            r = measure(size=48, scale=out / 48, device=a.device, repeat=5)
            print(line(f"48x48 -> {out}x{out}", r))
    if a.big:
        print(f"== big job: {a.big}x{a.big} -> x4 ({a.big * 4}x{a.big * 4} output, uint8)")
        print(line("engine, mode=fast", measure(size=a.big, scale=4, device=a.device, repeat=1)))


if __name__ == "__main__":
    main()
