"""Engine speed against this machine's own matmul peak, and the memory of big jobs.

    python benchmarks/bench_engine.py                        # 128x128 -> x2, x4, x8 on the CPU, fp32, 5 repeats
    python benchmarks/bench_engine.py --precision fp32,bf16  # + the approximate bf16 path
    python benchmarks/bench_engine.py --threads 1,2          # thread counts, one run
    python benchmarks/bench_engine.py --modes fast,reference,textbook   # + the slower decoders
    python benchmarks/bench_engine.py --compare-src /tmp/old/src        # + another source tree, same run
    python benchmarks/bench_engine.py --consistency 0,2     # the cost of the data-consistency step
    python benchmarks/bench_engine.py --big 1024,2048        # + BIG x BIG -> x4 jobs: time and max RSS
    python benchmarks/bench_engine.py --device cuda          # + the paper's Table 4 sizes on the GPU
    python benchmarks/bench_engine.py --json bench.json      # everything as JSON too

Absolute speed moves between machines and with other load, so every speed
measurement also probes the fp32 matmul peak with the same thread count, in
the same process, alternating with the engine runs (repeat k of the engine
and repeat k of the probe see the same load). The decoder does a known number
of FLOPs per output pixel (three 256 x 512 products with the bundled 4 x 256
decoder, 0.789 MFLOP), so peak / FLOPs is the speed limit of the decoder at
that peak; the ratio engine / limit is what to compare across machines.
A second limit counts all the network's FLOPs (encoder and per-LR-pixel
table too, which fall with the scale). Both ignore the tile overlap and the
data-consistency steps, which the engine does on top (engine defaults).
On a shared machine use ``--threads 1`` and read the CPU-time ratio: the
process's own CPU seconds, for the engine and for the probe, do not count
time taken by other jobs.

Each measurement runs in a fresh subprocess, so its peak memory (max RSS, or
CUDA max allocated) is its own. Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

RUN = r"""
import json, resource, sys, time
import numpy as np, torch
a = json.loads(sys.argv[1])
if a["threads"]:
    torch.set_num_threads(a["threads"])
from diinn_napari import upscale
from diinn_napari.model import DIINN

def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

torch.manual_seed(0)
model = DIINN(a["channels"], skip="bicubic").eval()
dev = torch.device(a["device"])
model.to(dev)
shape = (a["size"], a["size"], 3) if a["channels"] == 3 else (a["size"], a["size"])
image = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
out_edge = a.get("out") or round(a["size"] * a["scale"])
kwargs = dict(model=model, device=dev, mode=a["mode"], rgb=a["channels"] == 3, output_shape=(out_edge, out_edge))
if a["precision"] != "fp32":
    kwargs["precision"] = a["precision"]
if a.get("tile"):
    kwargs["tile_size"] = a["tile"]
if a.get("consistency") is not None:
    kwargs["consistency"] = a["consistency"]

def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()

def flops_per_output_px():
    # FLOPs of the bundled architecture, counted from the model itself (2 per multiply-add)
    d = model.decoder
    w = d.width
    decoder = 2 * d.syn[0].in_features * w + 2 * w * d.out.out_features
    zcols = d.z_dim if d.modulation != "m" else 0  # z-columns are in the per-LR-pixel table, not per pixel
    decoder += sum(2 * (m.weight.shape[1] - zcols) * m.weight.shape[0] for m in d.mod[1:])
    decoder += sum(2 * s.in_features * s.out_features for s in d.syn[1:])
    table = 2 * d.z_dim * w * (len(d.mod) if d.modulation != "m" else 1)
    encoder = sum(2 * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                  for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    lr_per_out = (a["size"] / out_edge) ** 2
    return decoder, decoder + (table + encoder) * lr_per_out

def probe():
    # fp32 matmul peak with this process's threads: decoder-shaped products and a large square one;
    # per wall second and per CPU second of this process (the latter is robust to other jobs on the machine)
    best = cpu_best = 0.0
    for m, k, n in ((2048, 256, 256), (2048, 256, 512), (1024, 1024, 1024)):
        x = torch.randn(m, k, device=dev)
        y = torch.randn(k, n, device=dev)
        torch.mm(x, y); sync()
        reps = 50 if dev.type == "cuda" else 3
        for _ in range(3):
            t, c = time.perf_counter(), time.process_time()
            for _ in range(reps):
                torch.mm(x, y)
            sync()
            flops = 2 * m * k * n * reps
            best = max(best, flops / (time.perf_counter() - t))
            cpu_best = max(cpu_best, flops / max(time.process_time() - c, 1e-9))
    return best, cpu_best

def run():
    if a["mode"] == "textbook":  # the released code's way: the whole output in one decoder call
        with torch.no_grad():
            x = torch.from_numpy(image)[None, None].float().div(255).to(dev)
            return model(x, (out_edge, out_edge), mode="reference", chunk_size=1 << 40).cpu().numpy()
    return upscale(image, **kwargs)

if a["mode"] == "textbook":
    kwargs["mode"] = "reference"
upscale(image[:16, :16], output_shape=(32, 32), **{k: v for k, v in kwargs.items() if k != "output_shape"})  # warm-up
sync()
if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
base = rss_bytes()
between = 0
def progress(done, total):
    global between
    between = max(between, rss_bytes() - base)
if a["mode"] != "textbook":
    kwargs["progress"] = progress
times, cpu_times, peaks, cpu_peaks = [], [], [], []
for _ in range(a["repeat"]):
    if a["probe"]:
        wall_peak, cpu_peak = probe()
        peaks.append(wall_peak)
        cpu_peaks.append(cpu_peak)
    sync()
    t, c = time.perf_counter(), time.process_time()
    out = run()
    sync()
    times.append(time.perf_counter() - t)
    cpu_times.append(time.process_time() - c)
    del out
peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
dec, full = flops_per_output_px()
res = {"seconds": times, "cpu_seconds": cpu_times, "probe_cpu_flops": cpu_peaks, "out_pixels": out_edge * out_edge, "extra_bytes": peak_rss - base,
       "between_tiles_bytes": between, "probe_flops": peaks, "decoder_flops_per_px": dec,
       "network_flops_per_px": full, "threads": torch.get_num_threads()}
if dev.type == "cuda":
    res["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    res["gpu"] = torch.cuda.get_device_name(dev)
print(json.dumps(res))
"""

DEFAULTS = {"mode": "fast", "device": "cpu", "repeat": 5, "channels": 1, "precision": "fp32", "threads": 0,
            "probe": True, "scale": 4, "size": 128}


def measure(src: str | None = None, timeout: float | None = None, **kwargs) -> dict:
    """One configuration in a fresh subprocess (``src``: a source tree to import instead of the installed one)."""
    args = {**DEFAULTS, **kwargs}
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    done = subprocess.run([sys.executable, "-c", RUN, json.dumps(args)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"measurement {args} failed:\n{done.stderr[-3000:]}")
    res = json.loads(done.stdout.strip().splitlines()[-1])
    res["config"] = {**args, "src": src or "installed"}
    times = sorted(res["seconds"])
    res["best_seconds"], res["median_seconds"] = times[0], times[len(times) // 2]
    res["px_per_s"] = res["out_pixels"] / times[0]
    res["px_per_s_median"] = res["out_pixels"] / res["median_seconds"]
    if res["probe_flops"]:
        peak = max(res["probe_flops"])
        res["peak_flops"] = peak
        res["decoder_limit_px_per_s"] = peak / res["decoder_flops_per_px"]
        res["network_limit_px_per_s"] = peak / res["network_flops_per_px"]
        res["ratio_to_decoder_limit"] = res["px_per_s"] / res["decoder_limit_px_per_s"]
        res["ratio_to_network_limit"] = res["px_per_s"] / res["network_limit_px_per_s"]
        # the same ratio repeat by repeat (engine k against probe k): robust to load that comes and goes
        pairs = sorted(res["out_pixels"] * res["decoder_flops_per_px"] / (t * f)
                       for t, f in zip(res["seconds"], res["probe_flops"]))
        res["ratio_to_decoder_limit_median_pair"] = pairs[len(pairs) // 2]
        # per CPU second: FLOPs the decoder needs / CPU time spent, against the probe's FLOPs per CPU second.
        # With 1 thread this is the wall ratio of a quiet machine; with more, spinning threads count against it.
        if res.get("probe_cpu_flops"):
            res["ratio_to_decoder_limit_cpu_time"] = (res["out_pixels"] * res["decoder_flops_per_px"]
                                                      / min(res["cpu_seconds"]) / max(res["probe_cpu_flops"]))
    return res


def line(name: str, r: dict) -> str:
    text = f"{name:<40} {r['best_seconds'] * 1000:9.1f} ms {r['px_per_s'] / 1e3:8.1f} kpx/s"
    if "ratio_to_decoder_limit" in r:
        text += (f"  peak {r['peak_flops'] / 1e9:6.1f} GFLOP/s  limit {r['decoder_limit_px_per_s'] / 1e3:7.1f} kpx/s"
                 f"  ratio {r['ratio_to_decoder_limit']:.3f} (pairs {r['ratio_to_decoder_limit_median_pair']:.3f},"
                 f" all-FLOP limit {r['ratio_to_network_limit']:.3f}; CPU-time ratio"
                 f" {r.get('ratio_to_decoder_limit_cpu_time', float('nan')):.3f})")
    text += f"  RSS +{r['extra_bytes'] / 2**20:.0f} MiB ({r['extra_bytes'] / r['out_pixels']:.1f} B/px)"
    if "cuda_peak_bytes" in r:
        text += f", CUDA peak {r['cuda_peak_bytes'] / 2**20:.0f} MiB"
    return text


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size", type=int, default=128, help="input edge of the speed runs")
    p.add_argument("--scales", default="2,4,8", help="comma-separated integer factors")
    p.add_argument("--repeat", type=int, default=5, help="engine runs per configuration (best and median reported)")
    p.add_argument("--threads", default="0", help="comma-separated torch thread counts (0 = torch's default)")
    p.add_argument("--modes", default="fast", help="fast, reference, textbook (whole output in one call)")
    p.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16 (CPU and CUDA), fp16 (CUDA)")
    p.add_argument("--compare-src", action="append", default=[],
                   help="also measure the package found in this source folder (e.g. an older checkout's src/)")
    p.add_argument("--big", default="", help="comma-separated BIG sizes: BIG x BIG -> x4 jobs, 1 repeat each")
    p.add_argument("--consistency", default="",
                   help="comma-separated back-projection settings to time, e.g. 0,2 (default: the engine's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write all results to this file")
    a = p.parse_args()
    import torch

    results = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                           "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "default_threads": torch.get_num_threads(), "device": a.device}, "runs": []}
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, default {torch.get_num_threads()} threads, device {a.device}")
    srcs = [None] + a.compare_src
    n = a.size
    consistency = _ints(a.consistency) or [None]
    for threads in _ints(a.threads):
        for scale in _ints(a.scales):
            print(f"== {n}x{n} -> x{scale} ({n * scale}x{n * scale}), 1 channel, EDSR-baseline + 4 x 256 decoder,"
                  f" threads {threads or 'default'}")
            for mode in a.modes.split(","):
                for precision in a.precision.split(","):
                    if mode != "fast" and precision != "fp32":
                        continue
                    for src, steps in ((src, k) for src in srcs for k in consistency):
                        name = (f"{mode} {precision}" + (f" consistency {steps}" if steps is not None else "")
                                + (f" [{src}]" if src else ""))
                        try:
                            r = measure(src, size=n, scale=scale, mode=mode, precision=precision, device=a.device,
                                        repeat=a.repeat, threads=threads,
                                        **({} if steps is None else {"consistency": steps}))
                        except RuntimeError as err:  # e.g. an older tree without this precision: say so, go on
                            print(f"{name:<40} failed: {str(err).strip().splitlines()[-1]}", flush=True)
                            continue
                        results["runs"].append(r)
                        print(line(name, r), flush=True)
    if a.device.startswith("cuda"):
        print("== paper Table 4: one RGB 48x48 input -> 128, 256, 512 (engine, mode=fast, fp32; paper: 56.6, 95.5,"
              " 243.6 ms on a Quadro RTX 3000)")
        for out in (128, 256, 512):
            for precision in a.precision.split(","):
                r = measure(size=48, out=out, channels=3, device=a.device, repeat=20, precision=precision)
                results["runs"].append(r)
                print(line(f"48x48 -> {out}x{out} {precision}", r), flush=True)
    for big in _ints(a.big):
        print(f"== big job: {big}x{big} -> x4 ({big * 4}x{big * 4} output, uint8, automatic tiles), 1 repeat")
        r = measure(size=big, scale=4, device=a.device, repeat=1, probe=False, threads=_ints(a.threads)[0])
        results["runs"].append(r)
        print(line("engine, mode=fast", r) + f"; between tiles +{r['between_tiles_bytes'] / 2**20:.0f} MiB", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
