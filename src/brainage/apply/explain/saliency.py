"""Per-subject saliency maps of a batch: Grad-RAM on a convolutional block and the input gradient.

Grad-RAM (gradient-weighted regression activation map) is Grad-CAM for a regression output:
the gradient of the predicted age with respect to the activations of the last convolutional
block, channel weights = spatial mean of that gradient, ReLU of the weighted channel sum,
trilinear upsampling to the input grid, min-max normalisation to [0, 1] per subject. The
input gradient (``method: gradient``) is the alternative for grids where no block keeps
enough voxels to localise (:func:`auto_target_layer`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from brainage.core.paths import SALIENCY_METHODS as METHODS


def find_layer(model: nn.Module, target_layer: str) -> nn.Module:
    """The block named ``target_layer`` (dotted path) in ``model`` or in ``model.encoder``.

    ``AgeModel`` keeps its convolutional trunk under ``.encoder``, so ``"layer4"`` resolves
    to ``model.encoder.layer4`` for both the end-to-end and the RNC encoder + head models.
    """
    for root in (model, getattr(model, "encoder", None)):
        if root is None:
            continue
        try:
            return root.get_submodule(target_layer)
        except AttributeError:
            continue
    names = [n for n, _ in model.named_modules() if n and n.count(".") <= 1]
    raise ValueError(f"no layer {target_layer!r} in {type(model).__name__}; candidates: {', '.join(names[:20])}")


#: ``explain.target_layer: auto`` picks the deepest block whose map has at least this many
#: voxels along every axis: at layer4 a 4 mm demo grid leaves 2 x 2 x 2 voxels, which can only
#: draw a ramp, not localise a region
MIN_MAP_VOXELS = 6


def block_shapes(model: nn.Module, shape: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, spatial shape)`` of each candidate block's output, in the order the forward pass
    runs them, for one input volume of ``shape``: the residual stages ``layerN`` (ResNets) and the
    ``features.K`` blocks and ``layer4`` (SFCN), named relative to ``model.encoder``."""
    import re

    encoder = getattr(model, "encoder", model)
    seen: list[tuple[str, tuple[int, ...]]] = []
    handles = [module.register_forward_hook(lambda _m, _i, out, name=name: seen.append((name, tuple(out.shape[2:]))))
               for name, module in encoder.named_modules() if re.fullmatch(r"layer\d+|features\.\d+", name)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            encoder(torch.zeros((1, 1, *shape), device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen


def auto_target_layer(model: nn.Module, shape: Sequence[int], min_voxels: int = MIN_MAP_VOXELS) -> str:
    """The deepest block whose map keeps ``min_voxels`` voxels along every axis (for inputs of
    ``shape``); when none does, the block with the largest map."""
    shapes = block_shapes(model, shape)
    if not shapes:
        raise ValueError(f"no layerN or features.K blocks in {type(model).__name__} to take Grad-RAM from")
    fine = [name for name, s in shapes if min(s) >= min_voxels]
    return fine[-1] if fine else max(shapes, key=lambda item: min(item[1]))[0]


def grad_ram(model: nn.Module, volumes: torch.Tensor, target_layer: str = "layer4") -> torch.Tensor:
    """Grad-RAM maps of a batch: ``volumes (B, 1, D, H, W)`` -> ``(B, D, H, W)`` in [0, 1].

    One forward and one backward pass for the whole batch. The model is run in eval mode
    (BatchNorm uses its running statistics, so each subject's map does not depend on the
    others in the batch) and restored to its previous mode afterwards. The backward pass
    stops at the target block: its output is re-entered into the graph as a leaf, so the
    trunk below it (most of the network) is never differentiated.
    """
    if volumes.ndim != 5 or volumes.shape[1] != 1:
        raise ValueError(f"volumes must be (B, 1, D, H, W), got {tuple(volumes.shape)}")
    layer = find_layer(model, target_layer)
    store: dict[str, torch.Tensor] = {}

    def _keep(_module, _inputs, output):
        leaf = output.detach().requires_grad_(True)
        store["acti"] = leaf
        return leaf

    handle = layer.register_forward_hook(_keep)
    was_training = model.training
    model.eval()
    # no parameter needs a gradient: the trunk below the target block then records no graph (at
    # 1 mm, ResNet18 would otherwise keep ~10 GiB of activations per subject for nothing)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            ages = model(volumes).reshape(volumes.shape[0], -1)[:, 0]  # (B,)
            acti = store["acti"]  # (B, C, d, h, w)
            # samples are independent in eval mode: d(sum of ages)/d acti_b = d age_b / d acti_b
            (grad,) = torch.autograd.grad(ages.sum(), acti)
    finally:
        handle.remove()
        model.train(was_training)
        for p in frozen:
            p.requires_grad_(True)
    with torch.no_grad():
        weights = grad.mean(dim=tuple(range(2, grad.ndim)), keepdim=True)  # (B, C, 1, 1, 1)
        cam = F.relu((weights * acti).sum(dim=1, keepdim=True))  # (B, 1, d, h, w)
        cam = F.interpolate(cam, size=tuple(volumes.shape[2:]), mode="trilinear", align_corners=False)[:, 0]
        return minmax_per_subject(cam)


def input_gradient(model: nn.Module, volumes: torch.Tensor) -> torch.Tensor:
    """Gradient saliency of a batch: ``|d predicted age / d voxel|`` (Simonyan et al., 2014)
    on the input grid, ``volumes (B, 1, D, H, W)`` -> ``(B, D, H, W)`` in [0, 1] per subject.

    Unlike Grad-RAM, no block's resolution limits it: on the demo's 4 mm grid a ResNet18 block
    map is at most 12 x 15 x 12 voxels, and there Grad-RAM ranks none of the regions the
    simulator changed (benchmarks/bench_saliency_truths.py). Eval mode (BatchNorm running
    statistics, so a subject's map does not depend on the batch), one backward pass through the
    whole network; the model's mode is restored.
    """
    if volumes.ndim != 5 or volumes.shape[1] != 1:
        raise ValueError(f"volumes must be (B, 1, D, H, W), got {tuple(volumes.shape)}")
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = volumes.detach().clone().requires_grad_(True)
            ages = model(x).reshape(x.shape[0], -1)[:, 0]
            (grad,) = torch.autograd.grad(ages.sum(), x)  # samples independent in eval mode
    finally:
        model.train(was_training)
    return minmax_per_subject(grad.detach()[:, 0].abs())


def saliency_maps(model: nn.Module, volumes: torch.Tensor, method: str = "gradram", target_layer: str = "layer4") -> torch.Tensor:
    """``(B, D, H, W)`` maps in [0, 1] of ``volumes (B, 1, D, H, W)`` by ``method`` (:data:`METHODS`)."""
    if method == "gradram":
        return grad_ram(model, volumes, target_layer)
    if method == "gradient":
        return input_gradient(model, volumes)
    raise ValueError(f"unknown saliency method {method!r}: one of {', '.join(METHODS)}")


def minmax_per_subject(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of ``maps (B, ...)`` to [0, 1]; a constant map becomes all zeros."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return scaled.reshape(maps.shape)
