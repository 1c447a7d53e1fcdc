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

The fitted state is arrays and plain numbers (:meth:`ClassicalModel.state`), saved in model.pt
with ``torch.load(weights_only=True)`` safety; prediction is numpy only (no scikit-learn), and
a test checks it against scikit-learn's own ``predict``. :class:`ClassicalAgeModel` wraps it as
a torch module, volumes (B, 1, D, H, W) -> ages (B, 1), so inference runs it like a network.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch import nn

__all__ = ["tissue_maps", "feature_maps", "voxel_features", "brain_mask", "ClassicalModel", "ClassicalAgeModel",
           "fit_classical", "fit_features", "kernel_matrix", "train_classical", "KIND"]

log = logging.getLogger(__name__)

#: ``meta["kind"]`` of a classical model.pt
KIND = "classical"

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


def _gp_kernel(kernel: str, scores: np.ndarray):
    """The scikit-learn kernel to fit, started at the data's scale."""
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, DotProduct, WhiteKernel

    if kernel == "rbf":
        d = np.sqrt(((scores[:, None, :] - scores[None, :, :]) ** 2).sum(-1))
        length = float(np.median(d[np.triu_indices(len(scores), 1)])) or 1.0
        core = RBF(length, (length * 1e-2, length * 1e3))
    elif kernel == "linear":
        core = DotProduct(1.0, (1e-3, 1e3))
    else:
        raise ValueError(f"classical kernel must be rbf or linear, got {kernel!r}")
    return ConstantKernel(1.0, (1e-3, 1e3)) * core + WhiteKernel(0.5, (1e-4, 1e1))


def fit_classical(volumes, ages, settings: dict, grid_mm: float, seed: int) -> tuple[ClassicalModel, object]:
    """Fit on training volumes (N, D, H, W, normalised) and ages (N,); also return the sklearn GP.

    Everything fitted (mask, scaling, PCA, kernel hyper-parameters) sees these subjects only.
    """
    volumes = np.asarray(volumes, dtype=np.float32)
    mask = brain_mask(volumes, float(settings["mask_fraction"]))
    sigma = float(settings["smooth_mm"]) / float(grid_mm)
    feats = np.stack([voxel_features(v, mask, settings["features"], sigma) for v in volumes])
    return fit_features(feats, ages, mask, settings, grid_mm, seed)


def fit_features(feats: np.ndarray, ages, mask: np.ndarray, settings: dict, grid_mm: float,
                 seed: int) -> tuple[ClassicalModel, object]:
    """:func:`fit_classical` from the training subjects' features (N, F) in ``mask`` (benchmarks
    reuse the features of every subject across folds)."""
    from sklearn.decomposition import PCA
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor

    ages = np.asarray(ages, dtype=np.float64)
    mean = feats.mean(axis=0)
    scale = float(np.sqrt(((feats - mean) ** 2).sum(axis=1).mean())) or 1.0
    k = settings["components"]
    k = len(ages) - 1 if k is None else min(int(k), len(ages) - 1)
    pca = PCA(n_components=k, svd_solver="full", random_state=seed).fit((feats - mean) / scale)
    scores = pca.transform((feats - mean) / scale)
    age_mean, age_sd = float(ages.mean()), float(ages.std() or 1.0)
    gp = GaussianProcessRegressor(_gp_kernel(settings["kernel"], scores), normalize_y=False,
                                  n_restarts_optimizer=int(settings["restarts"]), random_state=seed)
    with warnings.catch_warnings():
        # a noise level at its lower bound is expected: in many PCA dimensions the RBF's own
        # diagonal takes the part of the noise; the fitted values go to the model card
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(scores, (ages - age_mean) / age_sd)
    # pca.mean_ (~0: the features are centred) folded into the feature mean: scores() == pca.transform()
    model = ClassicalModel(settings, float(grid_mm), mask, mean + scale * pca.mean_, scale,
                           pca.components_.astype(np.float64),
                           scores, gp.alpha_.ravel().astype(np.float64), gp.kernel_.theta.copy(), age_mean, age_sd)
    return model, (pca, gp)


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


def _sets(splits: pd.DataFrame, cache) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """{split: (cache rows, ages, ids)} for train, val, test."""
    out = {}
    for split in ("train", "val", "test"):
        part = splits[splits["split"] == split]
        ids = part["participant_id"].astype(str).tolist()
        out[split] = (np.array([cache.row_of(p) for p in ids], dtype=np.int64), part["age"].to_numpy(np.float64), ids)
    return out


def _mae(pred: np.ndarray, age: np.ndarray) -> float:
    return float(np.abs(pred - age).mean()) if len(age) else float("nan")


def train_classical(name: str, spec: dict, splits: pd.DataFrame, volumes, index, out_dir, seed: int,
                    training: dict | None = None, preprocess: dict | None = None) -> dict:
    """Fit a classical model (resolved ``spec``) on the train split; write model.pt and friends.

    The files are the networks' (brainage.core.paths.model_files): model.pt (arrays + metadata,
    loads with weights_only=True), a one-row train_log.tsv (no epochs; ``train_loss`` is the
    leave-one-out MAE of the training subjects), learning_curve.png (predicted against
    chronological age: training subjects leave-one-out, validation) and model_card.json.
    Validation is only reported. Returns the metrics of the model card.
    """
    from brainage.data.cache import INTENSITY_NORMALISATION, CachedVolumes
    from brainage.core.io import write_json, write_tsv
    from brainage.models.files import save_model
    from brainage.core.paths import model_files
    from brainage.data.splits import split_hash

    start = time.time()
    cache = CachedVolumes(volumes, index)
    sets = _sets(splits, cache)
    rows, ages, _ = sets["train"]
    if len(rows) < 3:
        raise ValueError(f"{name}: a classical model needs >= 3 training subjects, got {len(rows)}")
    fitted, _ = fit_classical([cache.row(r) for r in rows], ages, spec["classical"], float(spec["grid"]), seed)
    pred = {s: fitted.predict([cache.row(r) for r in r_]) if len(r_) else np.zeros(0) for s, (r_, _, _) in sets.items()}
    fitted_mae, val_mae = _mae(pred["train"], ages), _mae(pred["val"], sets["val"][1])
    pred["train"] = fitted.loo_predict(ages)  # the figure and the log show leave-one-out, not the fit
    train_mae = _mae(pred["train"], ages)
    metrics = {"best_val_mae": val_mae, "train_loo_mae": train_mae, "train_fitted_mae": fitted_mae, "best_epoch": 1}
    test_age = sets["test"][1]
    if len(test_age):
        metrics.update(test_mae=_mae(pred["test"], test_age), n_test=int(len(test_age)),
                       test_mae_mean_age_baseline=_mae(np.full(len(test_age), ages.mean()), test_age))
        metrics["test_mae_ratio_to_baseline"] = metrics["test_mae"] / max(metrics["test_mae_mean_age_baseline"], 1e-9)
    age = {"train_mean": float(ages.mean()), "train_sd": float(ages.std()), "train_min": float(ages.min()),
           "train_max": float(ages.max())}
    meta = {"name": name, "kind": KIND, "grid_res": float(spec["grid"]), "grid_shape": list(cache.shape),
            "intensity_normalisation": INTENSITY_NORMALISATION, "preprocess": preprocess or {}, "age": age,
            "classical": fitted.meta(), "config": spec, "training": training or {}, "seed": seed, "metrics": metrics}
    files = model_files(Path(out_dir))
    save_model({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in fitted.state().items()}, meta, files["model"])
    seconds = time.time() - start
    write_tsv(files["log_tsv"], pd.DataFrame([{"phase": KIND, "epoch": 1, "train_loss": train_mae, "val_mae": val_mae,
                                               "lr": float("nan"), "seconds": seconds}]))
    plot_fit(pred, sets, name, fitted, files["curve"])
    write_json(files["card"], {
        "name": name, "kind": KIND, "grid_res": meta["grid_res"], "age": age, "metrics": metrics, "config": spec,
        "data": {s: {"n": len(ids), "hash": split_hash(ids)} for s, (_, _, ids) in sets.items()},
        "pca_components": int(fitted.components.shape[0]), "mask_voxels": int(fitted.mask.sum()),
        "kernel_hyperparameters": dict(zip(_THETA_NAMES[spec["classical"]["kernel"]], np.exp(fitted.theta).tolist())),
        "training": training or {}, "seed": seed, "training_seconds": seconds, "device": "cpu", "processes": 1,
    })
    log.info("%s: done %s", name, json.dumps(metrics))
    return metrics


#: names of exp(theta) of each kernel (scikit-learn's order)
_THETA_NAMES = {"rbf": ("amplitude", "length_scale", "noise_level"), "linear": ("amplitude", "sigma_0", "noise_level")}


def plot_fit(pred: dict, sets: dict, name: str, fitted: ClassicalModel, path) -> None:
    """A classical model's 'learning curve': predicted against chronological age, train and val."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from brainage.core.io import save_figure

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for split, marker in (("train", "o"), ("val", "s")):
        age = sets[split][1]
        if len(age):
            what = "train, leave-one-out" if split == "train" else split
            ax.scatter(age, pred[split], s=14, marker=marker, alpha=0.7, label=f"{what}: MAE {_mae(pred[split], age):.2f} y (n={len(age)})")
    lo, hi = ax.get_xlim()
    ax.plot([lo, hi], [lo, hi], color="grey", ls=":", lw=1)
    ax.set_xlabel("chronological age (years)")
    ax.set_ylabel("predicted age (years)")
    ax.set_title(f"{name}: PCA ({fitted.components.shape[0]} axes) + GP, {fitted.settings['features']}", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
