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

from typing import Any

import torch
from torch import nn

__all__ = ["BACKBONES", "build_encoder", "SFCNEncoder", "AgeModel", "build_age_model", "architecture_of"]

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


def build_encoder(
    backbone: str, width: float = 1.0, conv1_stride: int = 1, norm: str = "batch"
) -> nn.Module:
    """An encoder ``(B, 1, D, H, W) -> (B, encoder.out_features)`` with a ``layer4`` block.

    ResNets are MONAI's (``monai.networks.nets.ResNet``, Chen et al. MedicalNet layout: conv1
    7^3, max-pool, four stages, global average pooling) with one input channel and no
    classifier. ``width`` is MONAI's ``widen_factor`` (1.0 = the study's networks; the CPU demo
    uses 0.25); ``conv1_stride`` is the stride of conv1 (MONAI's default 1 = the study's);
    ``norm`` is ``batch`` (the study) or ``group``/``instance`` (norm layers that do not mix
    samples, so gradient-cached RNC steps equal full-batch steps exactly).
    """
    if backbone == "sfcn":
        if norm != "batch":
            raise ValueError("sfcn: only norm 'batch' (the published architecture) is supported")
        return SFCNEncoder(width=width)
    if backbone not in _RESNETS:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    from monai.networks.nets.resnet import ResNet, get_inplanes

    block, layers, expansion = _RESNETS[backbone]
    norm_arg: Any = {"batch": "batch", "instance": ("instance", {"affine": True}), "group": ("group", {"num_groups": 8})}
    if norm not in norm_arg:
        raise ValueError(f"unknown norm {norm!r}; choose batch, group or instance")
    encoder = ResNet(
        block=block,
        layers=layers,
        block_inplanes=get_inplanes(),
        spatial_dims=3,
        n_input_channels=1,
        conv1_t_stride=conv1_stride,
        widen_factor=width,
        feed_forward=False,
        norm=norm_arg[norm],
    )
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
    return {
        "backbone": spec["backbone"],
        "width": float(spec.get("width", 1.0)),
        "conv1_stride": int(spec.get("conv1_stride", 1)),
        "norm": spec.get("norm", "batch"),
    }


def build_age_model(architecture: dict, age_mean: float = 0.0, age_sd: float = 1.0) -> AgeModel:
    """``AgeModel`` from :func:`architecture_of` keys (random initialisation: seed before)."""
    encoder = build_encoder(
        architecture["backbone"],
        width=architecture.get("width", 1.0),
        conv1_stride=architecture.get("conv1_stride", 1),
        norm=architecture.get("norm", "batch"),
    )
    return AgeModel(encoder, nn.Linear(encoder.out_features, 1), age_mean, age_sd)
