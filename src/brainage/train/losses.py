"""Rank-N-Contrast loss (Zha et al. 2023, "Rank-N-Contrast: learning continuous representations
for regression"), vectorised and numerically stable.

For 2N views with features f and labels y, similarity s_ij = -||f_i - f_j||_2 and label distance
d_ij = |y_i - y_j| (L1), the loss is the mean over anchors i and pairs j != i of

    -log( exp(s_ij / t) / sum_{k != i, d_ik >= d_ij} exp(s_ik / t) ).

`RnCLoss` sorts each anchor's row by label distance once and reads every denominator off a
reverse cumulative log-sum-exp of the sorted logits: O(n^2 log n) time, O(n^2) memory, instead of
the reference code's loop over the n - 1 positives (O(n^3) time and, through autograd, memory).
`rnc_loss_reference` is that reference loop, kept for tests and `benchmarks/bench_rnc_loss.py`.

`SoftLabelKLLoss` is the soft-label loss of SFCN (Peng et al. 2021, "Accurate brain age prediction
with lightweight deep neural networks"): each age becomes a Gaussian over age bins
(`soft_age_labels`), and the network's logits over the bins are trained by the KL divergence.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "SoftLabelKLLoss",
    "soft_age_labels",
    "soft_label_kl",
    "RnCLoss",
    "rnc_loss_reference",
    "label_distances",
    "feature_similarities",
    "reference_feature_similarities",
]


def _as_label_matrix(labels: torch.Tensor, n: int) -> torch.Tensor:
    """labels (n,) or (n, L) -> (n, L); one scalar label per view is the study's case."""
    if labels.shape[0] != n:
        raise ValueError(f"RnCLoss: {labels.shape[0]} labels for {n} feature rows")
    return labels.reshape(n, -1)


def label_distances(labels: torch.Tensor) -> torch.Tensor:
    """L1 label distance. labels: (n,) or (n, L) -> (n, n), d_ij = sum_l |y_il - y_jl|."""
    y = labels.reshape(labels.shape[0], -1)
    return (y[:, None, :] - y[None, :, :]).abs().sum(dim=-1)


def _internal_dtype(device: torch.device) -> torch.dtype:
    # The loss works on n x n matrices only: float64 costs nothing next to the encoder and keeps
    # distances exact enough for any feature scale (MPS has no float64).
    return torch.float32 if device.type == "mps" else torch.float64


def feature_similarities(features: torch.Tensor) -> torch.Tensor:
    """Negative L2 distance. features: (n, D) -> (n, n), s_ij = -||f_i - f_j||_2.

    Computed from the Gram matrix (one matmul: fast forward and backward, where the direct cdist
    is ~20x slower) after centring, which makes norms comparable to distances; the usual
    cancellation of ||a||^2 + ||b||^2 - 2ab is then at the level of the dtype's epsilon times the
    feature spread squared, and RnCLoss calls this in float64. Squared distances at or below that
    rounding level (the diagonal, duplicated views) are set to 0 with a zero gradient, so the
    square root never sees 0 and the backward is never NaN.
    """
    x = features - features.mean(dim=0, keepdim=True).detach()
    sq = (x * x).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    rounding = 64 * torch.finfo(x.dtype).eps * (sq[:, None] + sq[None, :]).detach()
    positive = d2 > rounding
    d = torch.where(positive, d2, torch.ones_like(d2)).sqrt()
    return -torch.where(positive, d, torch.zeros_like(d))


class RnCLoss(nn.Module):
    """Rank-N-Contrast loss over a batch of 2N views (two augmented views per subject).

    Args:
        temperature: t in exp(s / t); the study and the reference code use 2.
        label_diff: label distance; only "l1" (the study's choice).
        feature_sim: feature similarity; only "l2" (negative Euclidean distance).
    """

    def __init__(self, temperature: float = 2.0, label_diff: str = "l1", feature_sim: str = "l2") -> None:
        super().__init__()
        if label_diff != "l1":
            raise ValueError(f"RnCLoss: label_diff must be 'l1', got {label_diff!r}")
        if feature_sim != "l2":
            raise ValueError(f"RnCLoss: feature_sim must be 'l2', got {feature_sim!r}")
        if not temperature > 0:
            raise ValueError(f"RnCLoss: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.label_diff = label_diff
        self.feature_sim = feature_sim

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, label_diff={self.label_diff!r}, feature_sim={self.feature_sim!r}"

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """features: (2N, D); labels: (2N,) or (2N, 1) (or (2N, L)) -> scalar loss.

        The n x n computation runs in float64 whatever the features' dtype (float32 on MPS):
        distances stay accurate for far-apart features and the log-sum-exp never overflows. The
        result has the features' dtype promoted to at least float32 (a bfloat16 loss value would
        keep 3 digits); gradients flow back in the features' own dtype.
        """
        if features.ndim != 2:
            raise ValueError(f"RnCLoss: features must be (2N, D), got shape {tuple(features.shape)}")
        n = features.shape[0]
        if n < 2:
            raise ValueError("RnCLoss: needs at least 2 views")
        out_dtype = torch.promote_types(features.dtype, torch.float32)
        compute_dtype = _internal_dtype(features.device)
        f = features.to(compute_dtype)
        y = _as_label_matrix(labels, n).to(compute_dtype)

        logits = feature_similarities(f) / self.temperature  # (n, n)
        dist = label_distances(y)  # (n, n)
        # The anchor itself must be excluded: give it a distance below every other one, so it
        # sorts first in its row, and drop column 0 after sorting.
        eye = torch.eye(n, dtype=torch.bool, device=f.device)
        dist = dist.masked_fill(eye, -1.0)
        dist_sorted, order = torch.sort(dist, dim=1)
        dist_sorted, order = dist_sorted[:, 1:].contiguous(), order[:, 1:]
        logits_sorted = logits.gather(1, order)  # (n, n - 1), ascending label distance

        # tail[i, m] = logsumexp(logits_sorted[i, m:]): every k at least as far as position m.
        tail = torch.logcumsumexp(logits_sorted.flip(1), dim=1).flip(1)
        # Ties: all k with d_ik >= d_ij are in the denominator, so a tied group uses the tail
        # starting at the group's first position (leftmost index of the equal value).
        group_start = torch.searchsorted(dist_sorted, dist_sorted, right=False)
        log_denominator = tail.gather(1, group_start)
        return (log_denominator - logits_sorted).mean().to(out_dtype)


def reference_feature_similarities(features: torch.Tensor) -> torch.Tensor:
    """The reference code's similarity: norm of the (n, n, D) difference tensor -> (n, n)."""
    return -(features[:, None, :] - features[None, :, :]).norm(2, dim=-1)


def rnc_loss_reference(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
    similarities: Callable[[torch.Tensor], torch.Tensor] = reference_feature_similarities,
) -> torch.Tensor:
    """The Rank-N-Contrast reference implementation (Zha et al. 2023, github.com/kaiwenzha/
    Rank-N-Contrast, loss.py): a Python loop over the n - 1 positives of every anchor, with the
    denominator masked and summed per positive; O(n^3) time, and autograd keeps O(n^3) memory.
    Max-subtraction as there, which still gives inf/NaN once exp(s / t) underflows for
    far-apart features. `similarities` swaps the reference's (n, n, D) difference-norm for another
    (n, n) similarity, e.g. `feature_similarities`, to time the loop alone.

    features: (2N, D) (both views already concatenated); labels: (2N,) or (2N, L) -> scalar.
    """
    n = features.shape[0]
    label_diffs = label_distances(_as_label_matrix(labels, n).to(features.dtype))
    logits = similarities(features).div(temperature)
    logits_max, _ = torch.max(logits, dim=1, keepdim=True)
    logits = logits - logits_max.detach()
    exp_logits = logits.exp()

    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=features.device)
    logits = logits.masked_select(off_diagonal).view(n, n - 1)
    exp_logits = exp_logits.masked_select(off_diagonal).view(n, n - 1)
    label_diffs = label_diffs.masked_select(off_diagonal).view(n, n - 1)

    loss = features.new_zeros(())
    for k in range(n - 1):
        pos_logits = logits[:, k]  # (n,)
        pos_label_diffs = label_diffs[:, k]  # (n,)
        neg_mask = (label_diffs >= pos_label_diffs.view(-1, 1)).to(features.dtype)  # (n, n - 1)
        pos_log_probs = pos_logits - torch.log((neg_mask * exp_logits).sum(dim=-1))
        loss = loss - (pos_log_probs / (n * (n - 1))).sum()
    return loss


def soft_age_labels(ages: torch.Tensor, edges: torch.Tensor, sigma: float = 1.0,
                    active: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian soft labels over age bins. ages: (B,) years; edges: (K + 1,) the bins' edges;
    active: (K,) bool, the bins a model predicts (the others get 0) -> (B, K), rows summing to 1.

    A bin's label is the mass of N(age, sigma^2) inside it (Peng et al.'s code), renormalised over
    the active bins (an age must lie within reach of them); computed in float64 (the tails'
    differences of the normal CDF), returned in float32.
    """
    if not sigma > 0:
        raise ValueError(f"soft_age_labels: sigma must be > 0, got {sigma}")
    cdf = torch.special.ndtr((edges.double()[None, :] - ages.double()[:, None]) / sigma)  # (B, K + 1)
    mass = (cdf[:, 1:] - cdf[:, :-1]).clamp_min(0)
    if active is not None:
        mass = mass * active.to(mass.device)
    return (mass / mass.sum(dim=1, keepdim=True)).float()  # no host sync: ages lie inside the active bins


def soft_label_kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(logits)), mean over the batch. logits, target: (B, K) -> scalar.

    Bins with target 0 add nothing (also where their logit is -inf: a bin the model does not predict).
    """
    log_p = torch.log_softmax(logits.float(), dim=-1)
    target = target.to(log_p.dtype)
    positive = target > 0
    terms = torch.xlogy(target, target) - target * log_p.masked_fill(~positive, 0.0)
    return terms.sum(dim=-1).mean()


class SoftLabelKLLoss(nn.Module):
    """The soft-label loss: KL divergence between each age's Gaussian soft label (:func:`soft_age_labels`)
    and the softmax of the network's bin logits.

    Args:
        edges: (K + 1,) the bins' edges in years (``AgeBinsHead.edges``).
        sigma: SD of the soft label in years (Peng et al.: 1).
        active: (K,) bool, the bins the model predicts (``AgeBinsHead.active``); None: all.
    """

    def __init__(self, edges: torch.Tensor, sigma: float = 1.0, active: torch.Tensor | None = None) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"SoftLabelKLLoss: sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)
        self.register_buffer("edges", edges.detach().double().clone())
        self.register_buffer("active", (torch.ones(len(edges) - 1, dtype=torch.bool) if active is None
                                        else active.detach().bool().clone()))

    def extra_repr(self) -> str:
        return f"bins={len(self.edges) - 1}, sigma={self.sigma}"

    def forward(self, logits: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        """logits: (B, K); ages: (B,) years -> scalar KL (nats)."""
        return soft_label_kl(logits, soft_age_labels(ages, self.edges, self.sigma, self.active))
