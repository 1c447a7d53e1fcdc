"""A classical brain-age baseline that needs no GPU, brainageR-style (Cole et al. 2015, 2018).

Volumes (the float16 cache the networks train on, intensity-normalised as they see it) ->
voxel features -> PCA fitted on the training subjects -> Gaussian-process regression whose
hyper-parameters are chosen by the marginal likelihood of the training subjects alone.

Features (``classical.features``):

- ``tissue`` (default): crude tissue probabilities. Each subject's brain voxels are split into
  CSF, grey and white matter by a 1-D three-means on its intensities (initialised at fixed
  quantiles: deterministic); soft probabilities come from Gaussians at the three means with
  their pooled SD. Voxels outside the subject's own brain (intensity 0) are CSF: after an
  affine registration an atrophied brain leaves more of them. brainageR uses the GM/WM/CSF
  maps of SPM segmentation the same way; CSF carries age strongly.
- ``intensity``: the normalised T1w intensities themselves.

Each map is smoothed with a Gaussian of ``smooth_mm`` (sigma, mm) and read inside the mask:
the voxels that are brain (non-zero) in at least ``mask_fraction`` of the training volumes
(a data-driven mask, so the train rule needs no template input and the mask is part of the
fitted state). The features are centred and divided by one global scale (the root of their
total variance: relative variances are kept), PCA keeps ``components`` axes (null: all,
n_train - 1), and a GP with kernel ``c * RBF(l) + white`` (``kernel: rbf``) or
``c * (sigma0^2 + x.y) + white`` (``linear``) is fitted on the standardised age by maximising
the log marginal likelihood (``restarts`` extra random starts from a seeded generator).

Fitting lives in :mod:`brainage.train.classical` (scikit-learn's PCA and GP); this module holds
what applying a fitted model needs. The fitted state is arrays and plain numbers (:meth:`ClassicalModel.state`), saved in model.pt
with ``torch.load(weights_only=True)`` safety; prediction is numpy only (no scikit-learn), and
a test checks it against scikit-learn's own ``predict``. :class:`ClassicalAgeModel` wraps it as
a torch module, volumes (B, 1, D, H, W) -> ages (B, 1), so inference runs it like a network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from brainage.models.kinds import CLASSICAL

__all__ = ["tissue_maps", "feature_maps", "voxel_features", "brain_mask", "ClassicalModel", "ClassicalAgeModel",
           "kernel_matrix", "KIND"]


#: ``meta["kind"]`` of a classical model.pt
KIND = CLASSICAL.name

TISSUES = ("csf", "gm", "wm")
#: quantiles of a subject's brain intensities where the three means start (CSF, GM, WM)
_START_QUANTILES = (0.1, 0.5, 0.9)


def tissue_maps(volume: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Soft CSF, GM and WM probabilities (3, D, H, W) of one normalised T1w volume (D, H, W)."""
    volume = np.asarray(volume, dtype=np.float64)
    brain = volume > 0
    values = volume[brain]
    if values.size < 3:
        out = np.zeros((3, *volume.shape))
        out[0] = 1.0
        return out
    means = np.quantile(values, _START_QUANTILES)
    for _ in range(iterations):
        label = np.argmin(np.abs(values[:, None] - means[None, :]), axis=1)
        new = np.array([values[label == k].mean() if np.any(label == k) else means[k] for k in range(3)])
        if np.allclose(new, means):
            break
        means = new
    label = np.argmin(np.abs(values[:, None] - means[None, :]), axis=1)
    sd = max(float(np.sqrt(np.mean((values - means[label]) ** 2))), 1e-6)
    logp = -0.5 * ((values[:, None] - means[None, :]) / sd) ** 2
    p = np.exp(logp - logp.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    out = np.zeros((3, *volume.shape))
    out[0][~brain] = 1.0
    for k in range(3):
        out[k][brain] = p[:, k]
    return out


def feature_maps(volume: np.ndarray, features: str, sigma_vox: float) -> np.ndarray:
    """One subject's smoothed maps (M, D, H, W): tissue probabilities (M = 3) or intensities (1)."""
    volume = np.asarray(volume, dtype=np.float64)
    maps = tissue_maps(volume) if features == "tissue" else volume[None]
    if sigma_vox > 0:
        maps = np.stack([ndimage.gaussian_filter(m, sigma_vox, mode="constant") for m in maps])
    return maps


def voxel_features(volume: np.ndarray, mask: np.ndarray, features: str, sigma_vox: float) -> np.ndarray:
    """One subject's feature vector (M * mask voxels): its :func:`feature_maps` in ``mask``."""
    return np.concatenate([m[mask] for m in feature_maps(volume, features, sigma_vox)])


def brain_mask(volumes: np.ndarray, fraction: float) -> np.ndarray:
    """Voxels non-zero in at least ``fraction`` of the (training) volumes (N, D, H, W) -> bool (D, H, W)."""
    return (np.asarray(volumes) > 0).mean(axis=0) >= fraction


def kernel_matrix(a: np.ndarray, b: np.ndarray, kernel: str, theta: np.ndarray) -> np.ndarray:
    """The GP kernel without its white-noise term between rows of ``a`` (n, k) and ``b`` (m, k).

    ``theta``: log hyper-parameters in scikit-learn's order: rbf (log c, log l, log noise);
    linear (log c, log sigma0, log noise).
    """
    c, p = np.exp(theta[0]), np.exp(theta[1])
    if kernel == "rbf":
        a, b = a / p, b / p
        sq = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
        return c * np.exp(-0.5 * np.clip(sq, 0, None))
    if kernel == "linear":
        return c * (p**2 + a @ b.T)
    raise ValueError(f"classical kernel must be rbf or linear, got {kernel!r}")


@dataclass
class ClassicalModel:
    """A fitted classical model: mask, feature scaling, PCA, GP (dual form). Arrays and plain numbers."""

    settings: dict
    grid_mm: float
    mask: np.ndarray  # bool (D, H, W)
    feature_mean: np.ndarray  # (F,)
    feature_scale: float
    components: np.ndarray  # (K, F)
    train_scores: np.ndarray  # (N, K)
    dual_coef: np.ndarray  # (N,)
    theta: np.ndarray  # log kernel hyper-parameters
    age_mean: float
    age_sd: float

    @property
    def sigma_vox(self) -> float:
        return float(self.settings["smooth_mm"]) / self.grid_mm

    def features(self, volumes) -> np.ndarray:
        """(N, F) features of normalised volumes (N, D, H, W)."""
        return np.stack([voxel_features(v, self.mask, self.settings["features"], self.sigma_vox) for v in volumes])

    def scores(self, features: np.ndarray) -> np.ndarray:
        """PCA scores (N, K) of features (N, F)."""
        return ((features - self.feature_mean) / self.feature_scale) @ self.components.T

    def predict_scores(self, scores: np.ndarray) -> np.ndarray:
        """Predicted ages (N,) from PCA scores: the GP posterior mean."""
        k = kernel_matrix(scores, self.train_scores, self.settings["kernel"], self.theta)
        return (k @ self.dual_coef) * self.age_sd + self.age_mean

    def predict(self, volumes) -> np.ndarray:
        """Predicted ages (N,) of normalised volumes (N, D, H, W)."""
        return self.predict_scores(self.scores(self.features(volumes)))

    def loo_predict(self, ages: np.ndarray) -> np.ndarray:
        """Leave-one-out predictions (N,) of the training subjects (ages in training order), the
        kernel hyper-parameters held fixed: ``y_i - [K^-1 y]_i / [K^-1]_ii`` (Rasmussen & Williams
        eq. 5.12). The fitted GP nearly interpolates its training ages, so this is the honest
        training-set accuracy."""
        k = kernel_matrix(self.train_scores, self.train_scores, self.settings["kernel"], self.theta)
        inverse = np.linalg.inv(k + np.exp(self.theta[-1]) * np.eye(len(k)))
        y = (np.asarray(ages, dtype=np.float64) - self.age_mean) / self.age_sd
        return (y - inverse @ y / np.diag(inverse)) * self.age_sd + self.age_mean

    def state(self) -> dict:
        """Arrays and JSON-able values only (loads with torch.load(weights_only=True))."""
        return {
            "mask": self.mask.astype(np.uint8), "feature_mean": self.feature_mean, "components": self.components,
            "train_scores": self.train_scores, "dual_coef": self.dual_coef, "theta": self.theta,
        }

    def meta(self) -> dict:
        return {"settings": dict(self.settings), "grid_mm": self.grid_mm, "feature_scale": self.feature_scale,
                "age_mean": self.age_mean, "age_sd": self.age_sd}

    @classmethod
    def from_state(cls, state: dict, meta: dict) -> "ClassicalModel":
        arr = {k: np.asarray(v) for k, v in state.items()}
        return cls(settings=meta["settings"], grid_mm=float(meta["grid_mm"]), mask=arr["mask"].astype(bool),
                   feature_mean=arr["feature_mean"], feature_scale=float(meta["feature_scale"]),
                   components=arr["components"], train_scores=arr["train_scores"], dual_coef=arr["dual_coef"],
                   theta=arr["theta"], age_mean=float(meta["age_mean"]), age_sd=float(meta["age_sd"]))


class ClassicalAgeModel(nn.Module):
    """A fitted :class:`ClassicalModel` as a module: volumes (B, 1, D, H, W) -> ages (B, 1) float32.

    The computation is numpy on the CPU (no gradients, no saliency); the output goes back to the
    input's device, so inference runs a classical model exactly like a network.
    """

    def __init__(self, model: ClassicalModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        ages = self.model.predict(volumes[:, 0].detach().float().cpu().numpy())
        return torch.from_numpy(ages).to(device=volumes.device, dtype=torch.float32)[:, None]

    @classmethod
    def from_blob(cls, state_dict: dict, meta: dict) -> "ClassicalAgeModel":
        """From a model.pt's ``state_dict`` (tensors) and ``meta`` (meta["classical"])."""
        state = {k: v.numpy() for k, v in state_dict.items()}
        return cls(ClassicalModel.from_state(state, meta["classical"])).eval()


