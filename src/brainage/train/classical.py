"""Fitting the classical kind (brainage.models.classical, brainageR-style): PCA of smoothed voxel
features, then a Gaussian process whose hyper-parameters maximise the marginal likelihood of the
training subjects (scikit-learn); the fitted state is stored as arrays and applied without
scikit-learn by :class:`brainage.models.classical.ClassicalModel`."""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from brainage.core.io import write_json, write_tsv
from brainage.core.paths import model_files
from brainage.data.cache import INTENSITY_NORMALISATION, CachedVolumes
from brainage.data.splits import split_hash
from brainage.models.classical import KIND, ClassicalModel, brain_mask, voxel_features
from brainage.models.files import save_model
from brainage.models.spec import ModelSpec

log = logging.getLogger("brainage.models.classical")


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
    k = min(len(ages) - 1 if k is None else int(k), len(ages) - 1, feats.shape[1])
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


def train_classical(spec: ModelSpec, splits: pd.DataFrame, volumes, index, out_dir, seed: int,
                    training: dict | None = None, preprocess: dict | None = None,
                    interval: dict | None = None) -> dict:
    """Fit classical model ``spec`` on the train split; write model.pt and friends.

    The files are the networks' (brainage.core.paths.model_files): model.pt (arrays + metadata,
    loads with weights_only=True), a one-row train_log.tsv (no epochs; ``train_loss`` is the
    leave-one-out MAE of the training subjects), learning_curve.png (predicted against
    chronological age: training subjects leave-one-out, validation) and model_card.json.
    Validation is only reported. Returns the metrics of the model card.
    """

    name, settings = spec.name, spec.settings
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
            "classical": fitted.meta(), "config": settings, "training": training or {}, "seed": seed, "metrics": metrics}
    if interval and len(sets["val"][1]):
        from brainage.train.outputs import val_interval

        meta["interval"] = val_interval(pred["val"], sets["val"][1], interval)
    files = model_files(Path(out_dir))
    save_model({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in fitted.state().items()}, meta, files["model"])
    seconds = time.time() - start
    write_tsv(files["log_tsv"], pd.DataFrame([{"phase": KIND, "epoch": 1, "train_loss": train_mae, "val_mae": val_mae,
                                               "lr": float("nan"), "seconds": seconds}]))
    plot_fit(pred, sets, name, fitted, files["curve"])
    write_json(files["card"], {
        "name": name, "kind": KIND, "grid_res": meta["grid_res"], "age": age, "metrics": metrics,
        "interval": meta.get("interval"), "config": settings,
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
