"""Grad-RAM cost against one plain forward + backward, and inference throughput on CPU.

    python benchmarks/bench_explain.py [--backbone resnet18] [--width 1.0] [--reps 3]

1. Grad-RAM of a batch (``brainage.apply.explain.grad_ram``: one forward, one backward that stops
   at layer4) against one plain training-style forward + backward of the same batch (L1 loss,
   gradients of every parameter). Target: ratio <= 1.5.
2. Inference throughput (subjects/s, ``brainage.apply.infer.predict_ages``, batched, no gradients)
   at the demo grid (4 mm) and at 2 mm, beside the same model run one subject at a time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from brainage.apply.explain import grad_ram
from brainage.core.grids import template_grid
from brainage.apply.infer import predict_ages
from brainage.models.files import iter_batches
from brainage.models.networks import build_age_model


def _median_time(fn, reps: int) -> float:
    fn()  # warm-up (allocator, MKL-DNN primitive cache)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_age_model({"backbone": args.backbone, "width": args.width}, age_mean=55.0, age_sd=15.0)
    print(f"model {args.backbone} width {args.width}, {args.threads} CPU threads, median of {args.reps}")

    grid = template_grid(4)
    batch = 4
    x = torch.randn(batch, 1, *grid.shape)
    ages = torch.full((batch,), 50.0)

    def plain_step():
        model.train()
        model.zero_grad(set_to_none=True)
        loss = (model(x) - ages).abs().mean()
        loss.backward()

    def saliency():
        grad_ram(model, x)

    t_plain = _median_time(plain_step, args.reps)
    t_ram = _median_time(saliency, args.reps)
    print(
        f"grad_ram 4 mm batch {batch}: {t_ram:.3f} s vs plain forward+backward {t_plain:.3f} s -> "
        f"ratio {t_ram / t_plain:.2f} (target <= 1.5)"
    )

    for res, batch in ((4, 8), (2, 2)):
        grid = template_grid(res)
        vols = {f"s{k}": torch.randn(*grid.shape).numpy() for k in range(batch)}
        ids = list(vols)

        def batched():
            predict_ages(model, iter_batches(ids, vols.__getitem__, batch))

        def single():
            predict_ages(model, iter_batches(ids, vols.__getitem__, 1))

        reps = args.reps if res == 4 else 1
        t_batch = _median_time(batched, reps)
        t_single = _median_time(single, reps)
        print(
            f"inference {res} mm {'x'.join(map(str, grid.shape))}: {batch / t_batch:.2f} subjects/s batched (batch {batch}) "
            f"vs {batch / t_single:.2f} subjects/s one at a time -> ratio {t_single / t_batch:.2f}"
        )


if __name__ == "__main__":
    main()
