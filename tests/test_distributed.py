"""Two gloo processes under `torchrun` and DistributedDataParallel give the single-process loss and
gradients of the same global batch, with and without gradient caching.

Run by pytest; the file is also the torchrun worker (`python -m torch.distributed.run ... this_file out_dir`).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from brainage.train.distributed import (
    all_gather_with_grad,
    cleanup_distributed,
    global_rnc_loss,
    init_distributed,
    is_main_process,
)
from brainage.train.gradcache import contrastive_step
from brainage.train.losses import RnCLoss

WORLD = 2
GLOBAL_VIEWS = 8


def _problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The same encoder and global batch (8 views of 8^3) on every process."""
    torch.manual_seed(0)
    encoder = nn.Sequential(
        nn.Conv3d(1, 4, 3, stride=2, padding=1), nn.GroupNorm(2, 4), nn.ReLU(),
        nn.Conv3d(4, 8, 3, stride=2, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 6),
    )  # fmt: skip
    views = torch.randn(GLOBAL_VIEWS, 1, 8, 8, 8)
    labels = torch.randint(20, 30, (GLOBAL_VIEWS,)).float()  # ties included
    return encoder, views, labels


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def _worker(out_dir: Path) -> None:
    torch.set_num_threads(1)
    rank, world, device = init_distributed()
    assert world == WORLD and device.type == "cpu"
    encoder, views, labels = _problem()
    n = GLOBAL_VIEWS // world
    local = slice(rank * n, (rank + 1) * n)
    ddp = nn.parallel.DistributedDataParallel(encoder)
    loss_fn = functools.partial(global_rnc_loss, RnCLoss(temperature=2.0))

    loss_plain = loss_fn(ddp(views[local]), labels[local])
    loss_plain.backward()
    grads_plain = _grads(encoder)

    encoder.zero_grad()
    loss_cached = contrastive_step(ddp, views[local], labels[local], loss_fn, chunk_size=3)
    grads_cached = _grads(encoder)

    # the gather's backward is its adjoint: each rank weights the gathered tensor differently,
    # and the local slice receives the sum of every rank's weights for that slice
    x = torch.arange(6.0).reshape(3, 2).add(10 * rank).requires_grad_(True)
    weights = torch.arange(12.0).reshape(6, 2) * (rank + 1)
    gathered = all_gather_with_grad(x)
    (gathered * weights).sum().backward()

    torch.save(
        {
            "loss_plain": loss_plain.detach(),
            "grads_plain": grads_plain,
            "loss_cached": loss_cached,
            "grads_cached": grads_cached,
            "gathered": gathered.detach(),
            "x_grad": x.grad,
            "main": is_main_process(),
        },
        out_dir / f"rank{rank}.pt",
    )
    cleanup_distributed()


def _assert_grads_close(a: list[torch.Tensor], b: list[torch.Tensor], rtol: float = 1e-5) -> None:
    scale = max(g.abs().max().item() for g in b)  # some entries are 0 up to rounding
    for ga, gb in zip(a, b):
        torch.testing.assert_close(ga, gb, rtol=rtol, atol=rtol * scale)


@pytest.mark.slow  # torchrun + two workers start up: ~15-20 s on 2 cores
def test_two_gloo_processes_match_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1] / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD}",
           __file__, str(tmp_path)]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    # single process, whole global batch
    encoder, views, labels = _problem()
    loss = RnCLoss(temperature=2.0)(encoder(views), labels)
    loss.backward()
    expected = _grads(encoder)

    for r, res in enumerate(results):
        assert res["main"] == (r == 0)
        torch.testing.assert_close(res["loss_plain"], loss.detach(), rtol=1e-5, atol=0)
        torch.testing.assert_close(res["loss_cached"], loss.detach(), rtol=1e-5, atol=0)
        # DDP averages over the 2 processes; the gather's summed backward makes that exact
        _assert_grads_close(res["grads_plain"], expected)
        _assert_grads_close(res["grads_cached"], expected)

        x = [torch.arange(6.0).reshape(3, 2).add(10 * q) for q in range(WORLD)]
        torch.testing.assert_close(res["gathered"], torch.cat(x))
        weight_sum = sum(torch.arange(12.0).reshape(6, 2) * (q + 1) for q in range(WORLD))
        torch.testing.assert_close(res["x_grad"], weight_sum[3 * r : 3 * (r + 1)])


def test_single_process_without_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    rank, world, device = init_distributed()
    assert (rank, world) == (0, 1) and is_main_process()
    x = torch.randn(4, 3, requires_grad=True)
    assert all_gather_with_grad(x) is x
    labels = torch.tensor([1.0, 2.0, 2.0, 5.0])
    torch.testing.assert_close(global_rnc_loss(RnCLoss(), x, labels), RnCLoss()(x, labels))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
