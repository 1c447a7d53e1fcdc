"""Brain-age networks: MONAI 3D ResNet18/50/101 encoders, the SFCN baseline, and ``AgeModel``.

Every model is ``AgeModel(encoder, head)``: the encoder maps a volume ``(B, 1, D, H, W)`` to a
feature vector ``(B, F)``; its last convolutional block is ``encoder.layer4`` (Grad-RAM hooks
it); the head is one linear layer ``F -> 1``. The head predicts a standardised age
``z = (age - age_mean) / age_sd`` (training-set statistics stored as buffers), so the network
starts near the mean age instead of near 0 years and Adam/SGD step sizes are in natural units.

The end-to-end models train encoder and head together; the Rank-N-Contrast models train the
encoder with the contrastive loss first and then the head with the encoder frozen.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from brainage.models.spec import Architecture

__all__ = ["BACKBONES", "build_encoder", "replace_batchnorm", "group_count", "SFCNEncoder", "AgeModel", "build_age_model", "architecture_of"]

#: backbone name -> (MONAI block type, layers); SFCN is separate
_RESNETS = {
    "resnet18": ("basic", [2, 2, 2, 2], 1),
    "resnet34": ("basic", [3, 4, 6, 3], 1),
    "resnet50": ("bottleneck", [3, 4, 6, 3], 4),
    "resnet101": ("bottleneck", [3, 4, 23, 3], 4),
}
BACKBONES = (*_RESNETS, "sfcn")


class SFCNEncoder(nn.Module):
    """Simple Fully Convolutional Network (Peng et al. 2021, Medical Image Analysis 68:101871).

    Five blocks conv3x3x3 -> BatchNorm -> max-pool 2 -> ReLU with 32, 64, 128, 256, 256
    channels, then a conv1x1x1 -> BatchNorm -> ReLU block with 64 channels (``layer4``, the last
    convolutional block), global average pooling and dropout 0.5. Peng et al. end with a
    conv1x1x1 onto 40 age bins trained with a KL loss on soft labels; here the head is the same
    single linear layer as every other model, trained with L1, so that the comparison with the
    ResNets differs by the trunk only. ``width`` scales every channel count (1.0 = the paper).
    """

    def __init__(self, width: float = 1.0, dropout: float = 0.5) -> None:
        super().__init__()
        chans = [max(4, int(round(c * width))) for c in (32, 64, 128, 256, 256, 64)]
        blocks = []
        c_in = 1
        for c in chans[:5]:
            blocks.append(
                nn.Sequential(
                    nn.Conv3d(c_in, c, 3, padding=1), nn.BatchNorm3d(c), nn.MaxPool3d(2, ceil_mode=True), nn.ReLU(inplace=True)
                )
            )
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.layer4 = nn.Sequential(nn.Conv3d(c_in, chans[5], 1), nn.BatchNorm3d(chans[5]), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.out_features = chans[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, D, H, W) -> (B, out_features)."""
        x = self.layer4(self.features(x))
        return self.dropout(self.pool(x).flatten(1))


#: at most this many GroupNorm groups (Wu & He 2018 use 32 at 64+ channels; the demo networks
#: have 8-16 channels in their first stage, so 8 keeps >= 1-2 channels per group everywhere)
MAX_GROUPS = 8


def group_count(channels: int, max_groups: int = MAX_GROUPS) -> int:
    """GroupNorm groups for ``channels``: the largest divisor of ``channels`` <= ``max_groups``.

    8 for the power-of-two widths of the ResNets at any ``width`` in {1, 0.5, 0.25, 0.125};
    1 (LayerNorm over channels and space) for a prime channel count above 8.
    """
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def replace_batchnorm(module: nn.Module, norm: str) -> nn.Module:
    """Replace, in place, every ``BatchNorm3d(C)`` in ``module`` by a per-sample norm with C channels.

    ``norm="group"``: ``GroupNorm(group_count(C), C)``; ``norm="instance"``:
    ``InstanceNorm3d(C, affine=True)``. New layers start as weight 1, bias 0 (MONAI's init of
    norm layers). Returns ``module``.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm3d):
            c = child.num_features
            if norm == "group":
                new: nn.Module = nn.GroupNorm(group_count(c), c, eps=child.eps)
            elif norm == "instance":
                new = nn.InstanceNorm3d(c, eps=child.eps, affine=True)
            else:
                raise ValueError(f"replace_batchnorm: norm must be group or instance, got {norm!r}")
            setattr(module, name, new.to(child.weight.device, child.weight.dtype))
        else:
            replace_batchnorm(child, norm)
    return module


def build_encoder(
    backbone: str, width: float = 1.0, conv1_stride: int = 1, norm: str = "batch"
) -> nn.Module:
    """An encoder ``(B, 1, D, H, W) -> (B, encoder.out_features)`` with a ``layer4`` block.

    ResNets are MONAI's (``monai.networks.nets.ResNet``, Chen et al. MedicalNet layout: conv1
    7^3, max-pool, four stages, global average pooling) with one input channel and no
    classifier. ``width`` is MONAI's ``widen_factor`` (1.0 = the study's networks; the CPU demo
    uses 0.25); ``conv1_stride`` is the stride of conv1 (MONAI's default 1 = the study's);
    ``norm`` is ``batch`` (the study) or ``group``/``instance`` (norm layers that do not mix
    samples, so gradient-cached RNC steps equal full-batch steps exactly and DDP steps equal
    single-process steps; every BatchNorm3d is replaced, see :func:`replace_batchnorm`).
    """
    if backbone == "sfcn":
        if norm != "batch":
            raise ValueError("sfcn: only norm 'batch' (the published architecture) is supported")
        return SFCNEncoder(width=width)
    if backbone not in _RESNETS:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    from monai.networks.nets.resnet import ResNet, get_inplanes

    block, layers, expansion = _RESNETS[backbone]
    if norm not in ("batch", "group", "instance"):
        raise ValueError(f"unknown norm {norm!r}; choose batch, group or instance")
    # Always built with BatchNorm, then every BatchNorm3d swapped: MONAI 1.6.1's ResNet passes
    # its ``norm`` argument to the first norm layer only (the residual blocks and downsample
    # shortcuts stay BatchNorm3d, Project-MONAI/MONAI PR #9028), so ``norm="group"`` alone
    # would leave 19 of ResNet18's 20 norm layers mixing samples.
    encoder = ResNet(
        block=block,
        layers=layers,
        block_inplanes=get_inplanes(),
        spatial_dims=3,
        n_input_channels=1,
        conv1_t_stride=conv1_stride,
        widen_factor=width,
        feed_forward=False,
        norm="batch",
    )
    if norm != "batch":
        replace_batchnorm(encoder, norm)
    encoder.out_features = int(get_inplanes()[-1] * width) * expansion
    return encoder


class AgeModel(nn.Module):
    """Encoder + one linear layer -> age in years.

    ``forward(x: (B, 1, D, H, W)) -> (B,)`` ages; ``features(x) -> (B, F)``;
    ``standardised(x) -> (B,)`` the head's raw output (the training target of the L1 loss).
    """

    def __init__(self, encoder: nn.Module, head: nn.Linear, age_mean: float = 0.0, age_sd: float = 1.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.register_buffer("age_mean", torch.tensor(float(age_mean)))
        self.register_buffer("age_sd", torch.tensor(float(age_sd)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def standardised(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardised(x).float() * self.age_sd + self.age_mean


def architecture_of(spec: dict) -> dict:
    """The keys of a model's config entry that define its architecture (stored in model.pt)."""
    return asdict(Architecture.of(spec))


class KernelHead(nn.Module):
    """A Gaussian-process head on frozen features (an RNC model's ``head: {type: kernel}``):
    features (B, F) -> the AgeModel's standardised age (B, 1), in torch, so Grad-RAM flows through.

    The fitted state is :class:`brainage.models.classical.ClassicalModel`'s (PCA of the centred,
    scaled features, then the GP posterior mean with an RBF kernel), fitted by
    brainage.train.head on the training subjects' features; ``out_scale``/``out_shift`` map the
    GP's ages to the AgeModel's standardised output.
    """

    def __init__(self, features: int, components: int, support: int) -> None:
        super().__init__()
        for name, shape in (("feature_mean", (features,)), ("components", (components, features)),
                            ("train_scores", (support, components)), ("dual_coef", (support,)), ("theta", (3,)),
                            ("scalars", (3,))):  # scalars: feature_scale, out_scale, out_shift
            self.register_buffer(name, torch.zeros(shape, dtype=torch.float64))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        scale, out_scale, out_shift = self.scalars
        scores = ((z.double() - self.feature_mean) / scale) @ self.components.T
        length = torch.exp(self.theta[1])
        sq = torch.cdist(scores / length, self.train_scores / length).pow(2)
        gp = torch.exp(self.theta[0]) * torch.exp(-0.5 * sq) @ self.dual_coef
        return (gp * out_scale + out_shift).to(z.dtype)[:, None]

    @classmethod
    def from_classical(cls, fitted, age_mean: float, age_sd: float) -> "KernelHead":
        """From a ClassicalModel fitted on features (kernel rbf), for an AgeModel of ``age_mean``/``age_sd``."""
        if fitted.settings["kernel"] != "rbf":
            raise ValueError("a kernel head uses the rbf kernel")
        head = cls(fitted.components.shape[1], fitted.components.shape[0], fitted.train_scores.shape[0])
        with torch.no_grad():
            for name in ("feature_mean", "components", "train_scores", "dual_coef", "theta"):
                getattr(head, name).copy_(torch.from_numpy(np.asarray(getattr(fitted, name), dtype=np.float64)))
            head.scalars.copy_(torch.tensor([fitted.feature_scale, fitted.age_sd / age_sd,
                                             (fitted.age_mean - age_mean) / age_sd], dtype=torch.float64))
        return head

    def shape_meta(self) -> dict:
        """What :func:`build_age_model` needs to rebuild it before loading its state (meta["head"])."""
        return {"type": "kernel", "features": int(self.components.shape[1]),
                "components": int(self.components.shape[0]), "support": int(self.train_scores.shape[0])}


def build_age_model(architecture: dict, age_mean: float = 0.0, age_sd: float = 1.0, head: dict | None = None) -> AgeModel:
    """``AgeModel`` from :func:`architecture_of` keys (random initialisation: seed before); ``head``:
    a model.pt's ``meta["head"]`` (:meth:`KernelHead.shape_meta`) for a kernel head, else linear."""
    arch = Architecture.of(architecture)
    encoder = build_encoder(arch.backbone, width=arch.width, conv1_stride=arch.conv1_stride, norm=arch.norm)
    if head and head.get("type") == "kernel":
        return AgeModel(encoder, KernelHead(head["features"], head["components"], head["support"]), age_mean, age_sd)
    return AgeModel(encoder, nn.Linear(encoder.out_features, 1), age_mean, age_sd)
