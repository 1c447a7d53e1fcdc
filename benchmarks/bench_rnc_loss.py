"""RnCLoss (sort + reverse cumulative log-sum-exp) against the Rank-N-Contrast reference loop over
positives, on CPU in float64, at 2N = 16, 48, 96, 192 views.

Two baselines, both measured in the same run: "reference" is the published reference code as is
(difference-norm distances over an (n, n, D) tensor, then the loop over positives); "loop" is the
same loop on RnCLoss's own Gram-matrix distances, which isolates the gain of the sort + cumulative
log-sum-exp from the gain of the distance computation.

Prints per 2N: the largest relative difference of the loss and of its gradient (against the
reference), the time of one forward+backward (best of `--repeats`, one thread) and the speed-ups,
and the peak tensor memory of one forward+backward for all three. Memory is measured with torch.profiler(profile_memory=True): the
running sum of every CPU tensor allocation and free made during the call, in time order, whose
maximum is the peak of tensor memory above what existed before (inputs excluded; the gradient and
the loss count). Process RSS is not used: at these sizes it is dominated by allocator caching.

    python benchmarks/bench_rnc_loss.py [--dim 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from brainage.train.losses import RnCLoss, feature_similarities, rnc_loss_reference


def forward_backward(loss_fn, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = features.detach().requires_grad_(True)
    loss = loss_fn(f, labels)
    loss.backward()
    return loss.detach(), f.grad


def best_time(loss_fn, features, labels, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward_backward(loss_fn, features, labels)
        times.append(time.perf_counter() - start)
    return min(times)


@contextlib.contextmanager
def quiet_stderr():
    # the profiler's backend prints start/stop lines on fd 2
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_tensor_bytes(loss_fn, features, labels) -> int:
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        forward_backward(loss_fn, features, labels)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512, help="embedding size D (ResNet18: 512)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 48, 96, 192])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rnc = RnCLoss(temperature=2.0)

    def reference(f, y):
        return rnc_loss_reference(f, y, temperature=2.0)

    def loop(f, y):
        return rnc_loss_reference(f, y, temperature=2.0, similarities=feature_similarities)

    print(f"# RnCLoss vs reference code and loop, CPU float64, D={args.dim}, 1 thread, best of {args.repeats}; "
          f"memory = peak CPU tensor bytes of forward+backward (torch.profiler)", flush=True)  # fmt: skip
    for n in args.sizes:
        g = torch.Generator().manual_seed(n)
        features = torch.randn(n, args.dim, generator=g, dtype=torch.float64)
        labels = torch.randint(20, 90, (n,), generator=g).double()  # integer ages: ties

        loss_ref, grad_ref = forward_backward(reference, features, labels)
        loss_new, grad_new = forward_backward(rnc, features, labels)
        rel_loss = ((loss_new - loss_ref).abs() / loss_ref.abs()).item()
        rel_grad = ((grad_new - grad_ref).abs().max() / grad_ref.abs().max()).item()

        t_ref, t_loop, t_new = (best_time(fn, features, labels, args.repeats) for fn in (reference, loop, rnc))
        m_ref, m_loop, m_new = (peak_tensor_bytes(fn, features, labels) for fn in (reference, loop, rnc))
        mib = 2**20
        print(
            f"2N={n:4d}  max rel diff loss {rel_loss:.1e} grad {rel_grad:.1e} | "
            f"time ms: reference {t_ref * 1e3:7.2f}  loop {t_loop * 1e3:6.2f}  RnCLoss {t_new * 1e3:5.2f}  "
            f"speed-up vs reference {t_ref / t_new:6.1f}x  vs loop {t_loop / t_new:5.1f}x | "
            f"peak MiB: reference {m_ref / mib:7.2f}  loop {m_loop / mib:6.2f}  RnCLoss {m_new / mib:5.2f}  "
            f"ratio vs reference {m_ref / m_new:5.1f}x  vs loop {m_loop / m_new:5.1f}x",
            flush=True,
        )
        if max(rel_loss, rel_grad) > 1e-5:
            sys.exit(f"2N={n}: RnCLoss differs from the reference by more than 1e-5")


if __name__ == "__main__":
    main()
