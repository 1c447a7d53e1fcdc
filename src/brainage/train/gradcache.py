"""Gradient caching (Gao et al. 2021, "Scaling deep contrastive learning batch size under memory
limited setup") for contrastive steps whose batch does not fit in memory with its graph.

A contrastive loss couples every view with every other one, so the batch cannot simply be split
into accumulated micro-batches. Gradient caching splits the step in two instead:

1. embed every chunk of views without a graph and keep only the embeddings, (2N, D);
2. compute the loss on all embeddings and its gradient w.r.t. them (cheap: no encoder graph);
3. re-run each chunk with a graph and back-propagate the cached embedding gradient of that chunk.

Peak memory is that of one chunk's graph plus 2N inputs and embeddings, whatever 2N is; the price
is a second forward pass. Each chunk's RNG state is recorded in pass 1 and replayed in pass 3 so
that stochastic layers (dropout) draw the same masks in both passes.

Normalisation layers:
- GroupNorm/LayerNorm/InstanceNorm (no running stats), or BatchNorm in eval mode, do not mix
  samples: the accumulated gradients equal the full-batch ones (up to float rounding; tested).
- BatchNorm in train mode normalises each chunk with that chunk's statistics, i.e. the model is
  trained with a BatchNorm batch of `chunk_size` views, not 2N, so gradients differ from a
  full-batch step (as they would with plain micro-batching). Pass 1 and pass 3 see the same chunk,
  so they compute the same embeddings; to keep pass 1 from updating the running statistics a
  second time, the running buffers of every norm layer that tracks them are saved before pass 1
  and restored after it. Running statistics are therefore updated once per chunk (in pass 3),
  2N / chunk_size updates per step. Prefer GroupNorm when the batch is chunked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from brainage.models.files import autocast

__all__ = ["contrastive_step"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    # autocast outputs are bfloat16/float16: the loss runs in float32 (float64 stays float64)
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _cuda_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


class _RngState:
    """CPU (and the views' CUDA device) generator state, captured before a chunk's first pass."""

    def __init__(self, device: torch.device) -> None:
        self.devices = _cuda_devices(device)
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        # fork_rng restores the outer state afterwards, so the replay does not rewind the stream
        # that later steps (augmentation, the next batch's dropout) draw from.
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for d, state in zip(self.devices, self.cuda):
                torch.cuda.set_rng_state(state, d)
            yield


@contextlib.contextmanager
def _frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Restore the running statistics of train-mode BatchNorm/InstanceNorm layers on exit."""
    saved = []
    for m in module.modules():
        if isinstance(m, (_BatchNorm, _InstanceNorm)) and m.training and m.track_running_stats:
            buffers = {k: b.detach().clone() for k, b in m.named_buffers(recurse=False) if b is not None}
            saved.append((m, buffers))
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for k, value in buffers.items():
                    getattr(m, k).copy_(value)


def _no_sync(encoder: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    # Under DistributedDataParallel, all-reduce only once, after the last chunk's backward;
    # DDP then reduces the gradients accumulated over every chunk.
    if not last and hasattr(encoder, "no_sync"):
        return encoder.no_sync()
    return contextlib.nullcontext()


def contrastive_step(
    encoder: nn.Module,
    views: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: LossFn,
    chunk_size: int | None,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One contrastive forward/backward over 2N views, chunked by gradient caching.

    Args:
        encoder: maps views (c, 1, D, H, W) -> embeddings (c, E); may be wrapped in DDP.
        views: (2N, 1, D, H, W), both augmented views of every subject, on the encoder's device.
        labels: (2N,) ages of the views.
        loss_fn: (embeddings (2N, E) in >= float32, labels (2N,)) -> scalar, e.g. `RnCLoss()` or a
            `functools.partial(brainage.train.distributed.global_rnc_loss, RnCLoss())` under DDP.
        chunk_size: views per re-run chunk; None or >= 2N is a plain full-batch step.
        autocast_dtype: e.g. torch.bfloat16 to run the encoder under autocast; the loss is
            always computed in float32 on the embeddings.

    Returns:
        The detached loss. Gradients are accumulated into the encoder's `.grad`; the caller zeroes
        them before and steps the optimiser after.
    """
    n = views.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"contrastive_step: {labels.shape[0]} labels for {n} views")
    device = views.device

    if chunk_size is None or chunk_size >= n:
        with autocast(device, autocast_dtype):
            embeddings = encoder(views)
        loss = loss_fn(_at_least_float32(embeddings), labels)
        loss.backward()
        return loss.detach()
    if chunk_size < 1:
        raise ValueError(f"contrastive_step: chunk_size must be >= 1, got {chunk_size}")

    chunks = views.split(chunk_size)
    # Pass 1: embeddings without a graph; record each chunk's RNG state before it runs.
    rng_states: list[_RngState] = []
    cached: list[torch.Tensor] = []
    with torch.no_grad(), _frozen_running_stats(encoder), autocast(device, autocast_dtype):
        for chunk in chunks:
            rng_states.append(_RngState(device))
            cached.append(_at_least_float32(encoder(chunk)))
    embeddings = torch.cat(cached).requires_grad_(True)

    # Pass 2: loss and its gradient w.r.t. the embeddings only.
    loss = loss_fn(embeddings, labels)
    (embedding_grad,) = torch.autograd.grad(loss, embeddings)
    del embeddings, cached

    # Pass 3: one chunk's graph at a time, back-propagating the cached gradient.
    for i, (chunk, grad) in enumerate(zip(chunks, embedding_grad.split(chunk_size))):
        with rng_states[i].replay(), _no_sync(encoder, last=i == len(chunks) - 1):
            with autocast(device, autocast_dtype):
                out = encoder(chunk)
            _at_least_float32(out).backward(grad)
    return loss.detach()
