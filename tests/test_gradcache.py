"""Gradient caching gives the full-batch gradients (norms that do not mix samples), replays the
RNG for dropout, and keeps BatchNorm running statistics updated once per chunk."""

from __future__ import annotations

import copy

import monai
import pytest
import torch
from torch import nn

from brainage.train.gradcache import contrastive_step
from brainage.train.losses import RnCLoss


class TinyEncoder(nn.Module):
    """(c, 1, 8, 8, 8) -> (c, 6); norm "group" or "batch", optional dropout."""

    def __init__(self, norm: str = "group", dropout: float = 0.0) -> None:
        super().__init__()
        make_norm = (lambda c: nn.GroupNorm(2, c)) if norm == "group" else nn.BatchNorm3d
        self.features = nn.Sequential(
            nn.Conv3d(1, 4, 3, stride=2, padding=1), make_norm(4), nn.ReLU(),
            nn.Conv3d(4, 8, 3, stride=2, padding=1), make_norm(8), nn.ReLU(),
            nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Dropout(dropout),
        )  # fmt: skip
        self.head = nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _batch(n: int, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, size, size, size, generator=g), torch.randint(20, 60, (n,), generator=g).float()


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def _full_batch_grads(model, views, labels, loss_fn):
    model.zero_grad()
    loss = loss_fn(model(views), labels)
    loss.backward()
    return loss.detach(), _grads(model)


def _assert_grads_close(a, b, rtol=1e-5):
    # relative to the largest gradient entry: some entries are exactly 0 in theory (the head's
    # bias: the loss is invariant to translating all features) and only rounding noise here
    scale = max(g.abs().max().item() for g in b)
    for ga, gb in zip(a, b):
        torch.testing.assert_close(ga, gb, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("chunk_size", [1, 3, 4])
def test_groupnorm_chunks_equal_full_batch(chunk_size):
    torch.manual_seed(0)
    model = TinyEncoder("group").double()
    views, labels = _batch(8)
    views, loss_fn = views.double(), RnCLoss()
    loss_ref, grads_ref = _full_batch_grads(model, views, labels, loss_fn)

    model.zero_grad()
    loss = contrastive_step(model, views, labels, loss_fn, chunk_size=chunk_size)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=0)
    _assert_grads_close(_grads(model), grads_ref, rtol=1e-10)


def test_monai_resnet_batchnorm_eval_float32_equal_full_batch():
    # MONAI 1.6.1's ResNet applies `norm` to the stem only (its blocks keep BatchNorm), so the
    # MONAI case is BatchNorm in eval mode, with running statistics from a train-mode pass.
    torch.manual_seed(0)
    model = monai.networks.nets.resnet10(spatial_dims=3, n_input_channels=1, num_classes=16, conv1_t_stride=2)
    views, labels = _batch(8, size=16, seed=1)
    with torch.no_grad():
        model.train()(views)
    model.eval()
    loss_fn = RnCLoss()
    loss_ref, grads_ref = _full_batch_grads(model, views, labels, loss_fn)
    model.zero_grad()
    loss = contrastive_step(model, views, labels, loss_fn, chunk_size=3)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=0)
    _assert_grads_close(_grads(model), grads_ref, rtol=1e-5)


def test_batchnorm_eval_equals_full_batch_and_none_is_plain_step():
    torch.manual_seed(0)
    model = TinyEncoder("batch").double()
    views, labels = _batch(6, seed=2)
    views = views.double()
    model.train()
    model(views)  # give the running statistics non-trivial values
    model.eval()
    loss_ref, grads_ref = _full_batch_grads(model, views, labels, RnCLoss())
    for chunk in (2, None, 6, 100):
        model.zero_grad()
        contrastive_step(model, views, labels, RnCLoss(), chunk_size=chunk)
        _assert_grads_close(_grads(model), grads_ref, rtol=1e-10)


def test_batchnorm_train_stats_per_chunk_and_running_stats_updated_once():
    """Train-mode BatchNorm: the step equals micro-batches of chunk_size views (statistics per
    chunk), and the running statistics equal those of one forward per chunk (not two)."""
    torch.manual_seed(0)
    model = TinyEncoder("batch").double().train()
    views, labels = _batch(8, seed=3)
    views = views.double()
    reference = copy.deepcopy(model)

    # independent expectation: one graph over the chunk-wise forward of the reference model
    out = torch.cat([reference(c) for c in views.split(4)])
    RnCLoss()(out, labels).backward()

    model.zero_grad()
    contrastive_step(model, views, labels, RnCLoss(), chunk_size=4)
    _assert_grads_close(_grads(model), _grads(reference), rtol=1e-10)
    for (name, a), (_, b) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0, msg=name)
    assert int(model.features[1].num_batches_tracked) == 2


def test_dropout_sees_the_same_masks_in_both_passes():
    torch.manual_seed(0)
    model = TinyEncoder("group", dropout=0.5).double().train()
    views, labels = _batch(8, seed=4)
    views = views.double()
    reference = copy.deepcopy(model)

    # the same RNG stream, consumed chunk by chunk with a graph: what gradcache must reproduce
    torch.manual_seed(123)
    out = torch.cat([reference(c) for c in views.split(3)])
    loss_ref = RnCLoss()(out, labels)
    loss_ref.backward()
    after_reference = torch.rand(1)

    torch.manual_seed(123)
    loss = contrastive_step(model, views, labels, RnCLoss(), chunk_size=3)
    torch.testing.assert_close(loss, loss_ref.detach(), rtol=1e-12, atol=0)
    _assert_grads_close(_grads(model), _grads(reference), rtol=1e-10)
    # replaying does not rewind the global stream: the next draw is the one after pass 1
    assert torch.equal(torch.rand(1), after_reference)


def test_bfloat16_autocast_runs_and_is_close():
    torch.manual_seed(0)
    model = TinyEncoder("group")
    views, labels = _batch(8, seed=5)
    _, grads_ref = _full_batch_grads(model, views, labels, RnCLoss())
    model.zero_grad()
    loss = contrastive_step(model, views, labels, RnCLoss(), chunk_size=4, autocast_dtype=torch.bfloat16)
    assert torch.isfinite(loss)
    grads = _grads(model)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    flat, flat_ref = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in grads_ref])
    # bfloat16 keeps ~3 digits: the direction of the step is what must survive
    assert torch.nn.functional.cosine_similarity(flat, flat_ref, dim=0) > 0.99
