"""Peak resident memory of one Rank-N-Contrast step with gradient caching: a batch of 32 views in
chunks of 4 against a batch of 4 views without chunking (the baseline: the same graph size), and,
for scale, the same 32 views without chunking. MONAI ResNet18 3D encoder on the demo grid (4 mm,
48 x 57 x 48), CPU.

Each configuration runs in a fresh subprocess (so no allocator cache carries over) and reports
ru_maxrss, the process's peak resident set: "peak" is for the whole process (Python, torch and
MONAI imports, the model, the inputs, the step), "step" is the peak minus the peak reached before
the step (after imports, model and input creation), i.e. what the step itself added.

    python benchmarks/bench_gradcache.py [--width 0.25] [--no-full]

`--width` is MONAI's widen_factor: 0.25 is the CPU demo's network, 1.0 the study's ResNet18
(minutes per step on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

GRID = (48, 57, 48)  # the demo grid, 4 mm


def child(batch: int, chunk: int | None, width: float, threads: int) -> dict:
    import monai
    import torch

    from brainage.train.gradcache import contrastive_step
    from brainage.train.losses import RnCLoss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    encoder = monai.networks.nets.resnet18(
        spatial_dims=3, n_input_channels=1, feed_forward=False, widen_factor=width
    ).train()
    views = torch.randn(batch, 1, *GRID)
    labels = torch.randint(20, 90, (batch,)).float()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, cpu_start = time.perf_counter(), time.process_time()
    loss = contrastive_step(encoder, views, labels, RnCLoss(temperature=2.0), chunk_size=chunk)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    assert torch.isfinite(loss)
    return {"before_mib": before / 1024, "peak_mib": peak / 1024, "seconds": seconds, "cpu_seconds": cpu_seconds}


def measure(batch: int, chunk: int | None, width: float, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(batch), str(chunk or 0), "--width", str(width),
           "--threads", str(threads)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-full", action="store_true", help="skip the 32 views without chunking")
    parser.add_argument("--child", nargs=2, type=int, metavar=("BATCH", "CHUNK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        batch, chunk = args.child
        print(json.dumps(child(batch, chunk or None, args.width, args.threads)))
        return

    print(f"# one RNC step, MONAI ResNet18 3D (widen_factor {args.width}, BatchNorm, train mode), "
          f"grid {'x'.join(map(str, GRID))}, CPU {args.threads} threads; ru_maxrss per fresh process", flush=True)  # fmt: skip
    runs = [("batch  4, no chunking (baseline)", 4, None), ("batch 32, chunk 4 (gradcache)  ", 32, 4)]
    if not args.no_full:
        runs.append(("batch 32, no chunking          ", 32, None))
    results = {}
    for name, batch, chunk in runs:
        r = measure(batch, chunk, args.width, args.threads)
        results[(batch, chunk)] = r
        print(f"{name}: peak {r['peak_mib']:7.0f} MiB  step {r['peak_mib'] - r['before_mib']:7.0f} MiB  "
              f"time {r['seconds']:6.1f} s wall, {r['cpu_seconds']:6.1f} s CPU", flush=True)  # fmt: skip
    base, cached = results[(4, None)], results[(32, 4)]
    step = lambda r: r["peak_mib"] - r["before_mib"]  # noqa: E731
    print(f"ratio batch 32 chunk 4 / batch 4: peak {cached['peak_mib'] / base['peak_mib']:.2f}x  "
          f"step {step(cached) / step(base):.2f}x  (target <= 1.5x)", flush=True)  # fmt: skip
    if (32, None) in results:
        full = results[(32, None)]
        print(f"ratio batch 32 no chunking / batch 4: peak {full['peak_mib'] / base['peak_mib']:.2f}x  "
              f"step {step(full) / step(base):.2f}x", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
