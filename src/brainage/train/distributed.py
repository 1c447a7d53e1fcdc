"""Multi-process training helpers: torchrun set-up and the global-batch Rank-N-Contrast loss.

Under DistributedDataParallel (DDP) each process holds n of the W * n views of a step. RNC
contrasts every view with every other one, so the loss must see the global batch:
`all_gather_with_grad` gathers the embeddings of all processes, and the gradient reaches each
process's own slice.

Gradient bookkeeping (proved by tests/test_distributed.py): every process computes the same
global loss L. The backward of the gather is the adjoint of an all-gather, a sum over processes
(all-reduce of the gradient, then the local slice), so process r's embeddings receive
sum_r' dL/df_r = W * dL/df_r. DDP divides the summed parameter gradients by W, which cancels that
factor: the parameter gradients equal single-process gradients of L on the whole batch, and the
reported loss is L itself, unscaled.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.distributed as dist

__all__ = [
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "get_rank",
    "get_world_size",
    "all_gather_with_grad",
    "all_gather_labels",
    "global_rnc_loss",
    "cleanup_distributed",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0, and in a single process: only it writes checkpoints, logs and figures."""
    return get_rank() == 0


def init_distributed() -> tuple[int, int, torch.device]:
    """Join the process group set up by `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT in the environment): NCCL on CUDA, gloo on CPU. Without torchrun, a single
    process on the first GPU or the CPU. Idempotent.

    Returns:
        (rank, world_size, device) for this process.
    """
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return get_rank(), get_world_size(), device
    if not is_distributed():
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            device_id=device if cuda else None,
        )
    return dist.get_rank(), dist.get_world_size(), device


def cleanup_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward is its adjoint: all-reduce (sum) the gradient of
    the gathered tensor, then take this process's slice. (Gloo has no reduce-scatter.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def _check_equal_sizes(x: torch.Tensor) -> None:
    # all_gather needs the same shape everywhere: a DistributedSampler with drop_last=True.
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.empty_like(size) for _ in range(get_world_size())]
    dist.all_gather(sizes, size)
    if len({int(s) for s in sizes}) != 1:
        raise ValueError(f"all_gather_with_grad: local batch sizes differ across processes: {[int(s) for s in sizes]}")


def all_gather_with_grad(x: torch.Tensor, check_sizes: bool = False) -> torch.Tensor:
    """x: (n, D) on this process -> (W * n, D), rank-ordered; the gradient reaches the local
    slice (summed over processes, see the module docstring). Identity in a single process."""
    if not is_distributed() or get_world_size() == 1:
        return x
    if check_sizes:
        _check_equal_sizes(x)
    return _AllGatherWithGrad.apply(x)


def all_gather_labels(y: torch.Tensor) -> torch.Tensor:
    """y: (n, ...) -> (W * n, ...), no gradient."""
    if not is_distributed() or get_world_size() == 1:
        return y
    parts = [torch.empty_like(y) for _ in range(get_world_size())]
    dist.all_gather(parts, y.contiguous())
    return torch.cat(parts)


def global_rnc_loss(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    local_features: torch.Tensor,
    local_labels: torch.Tensor,
) -> torch.Tensor:
    """The contrastive loss of the global batch, identical on every process.

    local_features: (n, D) this process's embeddings; local_labels: (n,). Returns loss_fn on the
    (W * n, D) gathered features. Back-propagating it on every process and letting DDP average
    gives exactly the single-process gradient of the global batch (no extra scaling needed).
    """
    features = all_gather_with_grad(local_features, check_sizes=True)
    labels = all_gather_labels(local_labels)
    return loss_fn(features, labels)
