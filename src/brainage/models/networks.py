"""Brain-age networks: MONAI 3D ResNet18/50/101 encoders, the SFCN baseline, and ``AgeModel``.

Every model is ``AgeModel(encoder, head)``: the encoder maps a volume ``(B, 1, D, H, W)`` to a
feature vector ``(B, F)``; its last convolutional block is ``encoder.layer4`` (Grad-RAM hooks
it); the head is one linear layer ``F -> 1``. The head predicts a standardised age
``z = (age - age_mean) / age_sd`` (training-set statistics stored as buffers), so the network
starts near the mean age instead of near 0 years and Adam/SGD step sizes are in natural units.

Two options for small cohorts (Peng et al. 2021): ``inputs: tissue`` makes the encoder's first
step :class:`TissueInput` (soft CSF/GM/WM maps of the volume, three channels into conv1), so
every caller still feeds the one-channel normalised volume; ``loss: kl`` ends the network in an
:class:`AgeBinsHead` (a logit per age bin, the age is the expectation over the bins).

The end-to-end models train encoder and head together; the Rank-N-Contrast models train the
encoder with the contrastive loss first and then the head with the encoder frozen.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainage.models.spec import Architecture

__all__ = ["BACKBONES", "build_encoder", "replace_batchnorm", "group_count", "SFCNEncoder", "TissueInput", "AgeBinsHead",
           "AgeModel", "build_age_model", "architecture_of"]

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
    conv1x1x1 onto 40 age bins trained with a KL loss on soft labels; here the head is by default
    the same single linear layer as every other model, trained with L1, so that the comparison
    with the ResNets differs by the trunk only (``loss: kl`` gives Peng et al.'s head and loss,
    :class:`AgeBinsHead`). ``width`` scales every channel count (1.0 = the paper);
    ``in_channels`` is 3 on tissue maps.
    """

    def __init__(self, width: float = 1.0, dropout: float = 0.5, in_channels: int = 1) -> None:
        super().__init__()
        chans = [max(4, int(round(c * width))) for c in (32, 64, 128, 256, 256, 64)]
        blocks = []
        c_in = in_channels
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
        """x: (B, in_channels, D, H, W) -> (B, out_features)."""
        x = self.layer4(self.features(x))
        return self.dropout(self.pool(x).flatten(1))


#: quantiles of a subject's brain intensities where the three tissue means start (CSF, GM, WM),
#: as brainage.models.classical.tissue_maps
_TISSUE_START_QUANTILES = (0.1, 0.5, 0.9)


class TissueInput(nn.Module):
    """Soft CSF, GM and WM probabilities of normalised T1w volumes: ``(B, 1, D, H, W) -> (B, 3, D, H, W)``.

    The torch twin of :func:`brainage.models.classical.tissue_maps` (the classical model's
    features), batched over subjects and deterministic: per subject a 1-D three-means on its brain
    intensities (> 0) started at their 10/50/90 % quantiles (at most ``iterations`` rounds, a
    subject stopping where its means no longer move, as ``np.allclose``), then soft probabilities
    from Gaussians at the three means with their pooled SD; voxels outside the brain (0) are CSF,
    and so is every voxel of a volume with fewer than 3 brain voxels. No parameters: the state
    dict is unchanged.

    The means and the SD are statistics of the subject computed without gradient (a voxel's share
    in them is 1/N); the probabilities are differentiable in the intensities, so input-gradient
    saliency flows through. In float64 (float32 on MPS), as numpy's reference. Each round reads
    the clusters off the sorted intensities (1-D clusters of ordered means are runs of them:
    two binary searches and prefix sums per subject instead of passes over every voxel).
    """

    def __init__(self, iterations: int = 20) -> None:
        super().__init__()
        self.iterations = int(iterations)

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}"

    @staticmethod
    def _nearest(values: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """The index of the nearest of the three means (B, V); ties go to the lower index, as
        ``np.argmin``. Pairwise, so no (B, 3, V) temporary."""
        d0, d1, d2 = ((values - means[:, k, None]).abs() for k in range(3))
        return torch.where(d2 < torch.minimum(d0, d1), 2, (d1 < d0).long())

    @staticmethod
    def _start_means(ordered: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """The 10/50/90 % quantiles (linear interpolation, numpy's default) of each subject's
        sorted brain values ``ordered`` (B, V; ``count`` of them, then padding) -> (B, 3)."""
        last = (count - 1).clamp_min(0).to(ordered.dtype)
        out = []
        for q in _TISSUE_START_QUANTILES:
            pos = q * last
            lo = pos.floor()
            hi = torch.minimum(lo + 1, last)
            a, b = ordered.gather(1, lo.long()[:, None])[:, 0], ordered.gather(1, hi.long()[:, None])[:, 0]
            out.append(torch.lerp(a, b, pos - lo))
        return torch.stack(out, dim=1)

    @classmethod
    def _cluster_ends(cls, ordered: torch.Tensor, means: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """Where each cluster's run of the sorted values ends (B, 3), for means in order: CSF takes
        the values nearer its mean than the others' (ties to the lower index), WM the values
        strictly nearer its own; a mean equal to the one below takes nothing."""
        m0, m1, m2 = means.unbind(dim=1)
        never = torch.full_like(m0, math.inf)
        t1 = torch.where(m0 < m1, (m0 + m1) / 2, torch.where(m0 < m2, (m0 + m2) / 2, never))
        t2 = torch.where(m1 < m2, (m1 + m2) / 2, never)
        ends = torch.searchsorted(ordered, torch.stack([t1, t2], dim=1).contiguous(), right=True)
        return torch.cat([torch.minimum(ends, count[:, None]), count[:, None]], dim=1)

    @torch.no_grad()
    def statistics(self, values: torch.Tensor, brain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """values, brain: (B, V) -> the three means (B, 3) and the pooled SD (B,) of each subject."""
        count = brain.sum(dim=1)
        ordered = torch.where(brain, values, math.inf).sort(dim=1).values  # brain values first
        inside = torch.arange(values.shape[1], device=values.device)[None, :] < count[:, None]
        filled = torch.where(inside, ordered, 0.0)
        prefix = F.pad(filled.cumsum(dim=1), (1, 0))  # (B, V + 1)
        means = self._start_means(ordered, count)
        done = count < 3  # nothing to split: CSF (below)
        for _ in range(self.iterations):
            if bool(((means[:, 0] <= means[:, 1]) & (means[:, 1] <= means[:, 2]) | done).all()):
                ends = self._cluster_ends(ordered, means, count)
                starts = F.pad(ends[:, :2], (1, 0))
                n, sums = ends - starts, prefix.gather(1, ends) - prefix.gather(1, starts)
            else:  # means out of order (a degenerate start): every value against every mean
                label = self._nearest(ordered, means)
                members = [inside & (label == k) for k in range(3)]
                n = torch.stack([m.sum(dim=1) for m in members], dim=1)
                sums = torch.stack([(filled * m).sum(dim=1) for m in members], dim=1)
            new = torch.where(n > 0, sums / n.clamp_min(1), means)
            done |= torch.isclose(new, means, rtol=1e-5, atol=1e-8).all(dim=1)
            means = torch.where(done[:, None], means, new)
            if bool(done.all()):
                break
        residual = torch.where(inside, ordered - means.gather(1, self._nearest(ordered, means)), 0.0)
        sd = (residual.square().sum(dim=1) / count.clamp_min(1)).sqrt().clamp_min(1e-6)
        few = count < 3  # no tissue to split: the output is CSF; keep the statistics finite
        means = torch.where(few[:, None], torch.tensor([0.0, 0.5, 1.0], dtype=values.dtype, device=values.device), means)
        return means, torch.where(few, torch.ones_like(sd), sd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, D, H, W) normalised intensities -> (B, 3, D, H, W) CSF, GM, WM probabilities (x's dtype)."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"TissueInput: expected (B, 1, D, H, W), got {tuple(x.shape)}")
        dtype = torch.float32 if x.device.type == "mps" else torch.float64
        values = x.flatten(1).to(dtype)
        brain = values > 0
        means, sd = self.statistics(values.detach(), brain)
        logp = -0.5 * ((values[:, None, :] - means[:, :, None]) / sd[:, None, None]).square()  # (B, 3, V)
        p = torch.softmax(logp, dim=1)
        csf = torch.tensor([1.0, 0.0, 0.0], dtype=dtype, device=x.device)[None, :, None]
        keep = brain & (brain.sum(dim=1, keepdim=True) >= 3)
        p = torch.where(keep[:, None, :], p, csf)
        return p.reshape(x.shape[0], 3, *x.shape[2:]).to(x.dtype)


#: channels into the encoder's first convolution for each ``inputs`` (brainage.models.spec.INPUTS)
INPUT_CHANNELS = {"intensity": 1, "tissue": 3}


def _run_input_step(module: nn.Module, args: tuple) -> tuple:
    return (module.inputs(args[0]), *args[1:])


def with_input_step(encoder: nn.Module, step: nn.Module) -> nn.Module:
    """``encoder`` that runs ``step`` on its input first (``encoder.inputs``, a forward pre-hook):
    its callers (training, the RNC head's features, inference, Grad-RAM) keep feeding the
    one-channel volume, and its block names (``layer4``, ``features.K``) stay where they were."""
    encoder.inputs = step
    encoder.register_forward_pre_hook(_run_input_step)
    return encoder


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
    backbone: str, width: float = 1.0, conv1_stride: int = 1, norm: str = "batch", inputs: str = "intensity"
) -> nn.Module:
    """An encoder ``(B, 1, D, H, W) -> (B, encoder.out_features)`` with a ``layer4`` block.

    ResNets are MONAI's (``monai.networks.nets.ResNet``, Chen et al. MedicalNet layout: conv1
    7^3, max-pool, four stages, global average pooling) with one input channel and no
    classifier. ``width`` is MONAI's ``widen_factor`` (1.0 = the study's networks; the CPU demo
    uses 0.25); ``conv1_stride`` is the stride of conv1 (MONAI's default 1 = the study's);
    ``norm`` is ``batch`` (the study) or ``group``/``instance`` (norm layers that do not mix
    samples, so gradient-cached RNC steps equal full-batch steps exactly and DDP steps equal
    single-process steps; every BatchNorm3d is replaced, see :func:`replace_batchnorm`).
    ``inputs``: ``intensity`` (conv1 sees the volume) or ``tissue`` (:class:`TissueInput` first,
    conv1 has three input channels; see :func:`with_input_step`).
    """
    if inputs not in INPUT_CHANNELS:
        raise ValueError(f"unknown inputs {inputs!r}; choose {' or '.join(INPUT_CHANNELS)}")
    encoder = _build_trunk(backbone, width, conv1_stride, norm, INPUT_CHANNELS[inputs])
    return with_input_step(encoder, TissueInput()) if inputs == "tissue" else encoder


def _build_trunk(backbone: str, width: float, conv1_stride: int, norm: str, in_channels: int) -> nn.Module:
    if backbone == "sfcn":
        if norm != "batch":
            raise ValueError("sfcn: only norm 'batch' (the published architecture) is supported")
        return SFCNEncoder(width=width, in_channels=in_channels)
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
        n_input_channels=in_channels,
        conv1_t_stride=conv1_stride,
        widen_factor=width,
        feed_forward=False,
        norm="batch",
    )
    if norm != "batch":
        replace_batchnorm(encoder, norm)
    encoder.out_features = int(get_inplanes()[-1] * width) * expansion
    return encoder


#: the ages (years) a soft-label head's bins span; a model predicts over the bins within 2 years
#: of its training ages (:meth:`AgeBinsHead.set_age_range`), so the weights' shape never depends on
#: the cohort (the model is built before the training ages are read)
AGE_BIN_SPAN = (0.0, 120.0)
#: years beyond the youngest and oldest training ages that a soft-label head still predicts
AGE_BIN_MARGIN = 2.0


class AgeBinsHead(nn.Module):
    """The soft-label head (``loss: kl``; SFCN, Peng et al. 2021): features (B, F) -> one logit per
    age bin (B, K); the age is the expectation over the bins, ``sum_i p_i * centre_i``.

    Bins of ``width`` years from ``start`` (``count`` of them, by default over
    :data:`AGE_BIN_SPAN`); the buffer ``active`` marks those the model predicts (the others'
    logits are -inf), set from the training ages by :meth:`set_age_range` and stored in model.pt.
    """

    def __init__(self, features: int, width: float = 1.0, start: float = AGE_BIN_SPAN[0], count: int | None = None) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"AgeBinsHead: bin width must be > 0, got {width}")
        self.start, self.width = float(start), float(width)
        count = int(count) if count is not None else math.ceil((AGE_BIN_SPAN[1] - self.start) / self.width)
        self.linear = nn.Linear(features, count)
        self.register_buffer("centres", (self.start + self.width * (torch.arange(count, dtype=torch.float64) + 0.5)).float())
        self.register_buffer("active", torch.ones(count, dtype=torch.bool))

    @property
    def edges(self) -> torch.Tensor:
        """The bins' edges in years (K + 1,), float64."""
        return self.start + self.width * torch.arange(len(self.centres) + 1, dtype=torch.float64, device=self.centres.device)

    @torch.no_grad()
    def set_age_range(self, youngest: float, oldest: float, margin: float = AGE_BIN_MARGIN) -> None:
        """Predict over the bins that meet [floor(youngest) - margin, ceil(oldest) + margin] years."""
        lo, hi = self.edges[0].item(), self.edges[-1].item()
        if not lo <= youngest <= oldest <= hi:
            raise ValueError(f"soft-label head: training ages {youngest:.1f}-{oldest:.1f} y fall outside its bins "
                             f"({lo:g}-{hi:g} y)")
        edges = self.edges
        self.active.copy_((edges[1:] > math.floor(youngest) - margin) & (edges[:-1] < math.ceil(oldest) + margin))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, F) -> logits (B, K), float32, -inf outside the predicted bins."""
        return self.linear(features).float().masked_fill(~self.active, -math.inf)

    def expected_age(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (B, K) -> the expected age (B,) in years."""
        return torch.softmax(logits.float(), dim=-1) @ self.centres

    def shape_meta(self) -> dict:
        """What :func:`build_age_model` needs to rebuild it before loading its state (meta["head"])."""
        return {"type": "bins", "start": self.start, "width": self.width, "count": int(len(self.centres))}


class AgeModel(nn.Module):
    """Encoder + head -> age in years.

    ``forward(x: (B, 1, D, H, W)) -> (B,)`` ages; ``features(x) -> (B, F)``;
    ``standardised(x) -> (B,)`` the standardised age (for a linear head its raw output, the
    training target of the L1 loss). A soft-label head (:class:`AgeBinsHead`) returns the expected
    age; ``forward(x, bin_logits=True)`` gives its logits (B, K), the input of the KL loss.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, age_mean: float = 0.0, age_sd: float = 1.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.register_buffer("age_mean", torch.tensor(float(age_mean)))
        self.register_buffer("age_sd", torch.tensor(float(age_sd)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def standardised(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.head, AgeBinsHead):
            return (self.forward(x) - self.age_mean) / self.age_sd
        return self.head(self.encoder(x)).squeeze(-1)

    def forward(self, x: torch.Tensor, bin_logits: bool = False) -> torch.Tensor:
        if isinstance(self.head, AgeBinsHead):
            logits = self.head(self.encoder(x))
            return logits if bin_logits else self.head.expected_age(logits)
        if bin_logits:
            raise ValueError("bin_logits: only a soft-label head (loss kl) has age bins")
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
    a model.pt's ``meta["head"]`` (:meth:`KernelHead.shape_meta`, :meth:`AgeBinsHead.shape_meta`);
    without it a soft-label head when the architecture has a ``bin_width``, else linear."""
    arch = Architecture.of(architecture)
    encoder = build_encoder(arch.backbone, width=arch.width, conv1_stride=arch.conv1_stride, norm=arch.norm,
                            inputs=arch.inputs)
    if head and head.get("type") == "kernel":
        return AgeModel(encoder, KernelHead(head["features"], head["components"], head["support"]), age_mean, age_sd)
    if head and head.get("type") == "bins":
        return AgeModel(encoder, AgeBinsHead(encoder.out_features, head["width"], head["start"], head["count"]),
                        age_mean, age_sd)
    if arch.bin_width is not None:
        return AgeModel(encoder, AgeBinsHead(encoder.out_features, arch.bin_width), age_mean, age_sd)
    return AgeModel(encoder, nn.Linear(encoder.out_features, 1), age_mean, age_sd)
