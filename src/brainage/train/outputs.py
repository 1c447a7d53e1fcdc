"""What a trained network leaves: model.pt, train_log.tsv, learning_curve.png, model_card.json."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from brainage.core.io import save_figure, write_json, write_tsv
from brainage.core.paths import model_files
from brainage.data.cache import INTENSITY_NORMALISATION
from brainage.data.splits import split_hash
from brainage.models.files import save_model, unwrap
from brainage.models.networks import architecture_of
from brainage.train.run import Run, predict_rows


def write_outputs(run: Run, model: nn.Module, state: dict, out_dir: Path, preprocess: dict | None,
                  interval: dict | None = None) -> dict:
    """Test metrics; on the main process model.pt, train_log.tsv, learning_curve.png, model_card.json.
    With ``interval`` (config infer.interval) and validation subjects, model.pt carries the
    split-conformal interval calibrated on them (brainage.core.intervals)."""
    model.eval()
    metrics: dict[str, Any] = {"best_val_mae": state["best_val"], "best_epoch": state["best_epoch"] + 1}
    if len(run.rows["test"]):
        pred = predict_rows(run, model, run.rows["test"])
        metrics["test_mae"] = float(np.abs(pred - run.ages["test"]).mean())
        metrics["test_mae_mean_age_baseline"] = float(np.abs(run.age_mean - run.ages["test"]).mean())
        metrics["test_mae_ratio_to_baseline"] = metrics["test_mae"] / max(metrics["test_mae_mean_age_baseline"], 1e-9)
        metrics["n_test"] = int(len(run.rows["test"]))
    if not run.main:
        return metrics
    spec, ages = run.spec, run.ages
    meta = {
        "name": run.name, "kind": run.kind.name, "architecture": architecture_of(spec.settings),
        "feature_dim": int(unwrap(model).encoder.out_features), "grid_res": float(spec["grid"]),
        "grid_shape": list(run.cache.shape), "intensity_normalisation": INTENSITY_NORMALISATION,
        "preprocess": preprocess or {}, "age": {"train_mean": run.age_mean, "train_sd": run.age_sd,
        "train_min": float(ages["train"].min()), "train_max": float(ages["train"].max())},
        "config": spec.settings, "training": run.training, "seed": run.seed, "metrics": metrics,
    }
    if interval and len(run.rows["val"]):
        meta["interval"] = val_interval(predict_rows(run, unwrap(model), run.rows["val"]), ages["val"], interval)
    head = unwrap(model).head
    if hasattr(head, "shape_meta"):  # a kernel head (brainage.models.networks.KernelHead)
        meta["head"] = head.shape_meta()
    files = model_files(out_dir)
    save_model(unwrap(model).state_dict(), meta, files["model"])
    table = pd.DataFrame(state["log"], columns=["phase", "epoch", "train_loss", "val_mae", "lr", "seconds"])
    write_tsv(files["log_tsv"], table)
    plot_learning_curve(table, run.name, files["curve"])
    import monai

    write_json(files["card"], {
        "name": run.name, "kind": run.kind.name, "architecture": meta["architecture"], "grid_res": meta["grid_res"],
        "data": {s: {"n": len(v), "hash": split_hash(v)} for s, v in run.sets.items()},
        "age": meta["age"], "metrics": metrics, "interval": meta.get("interval"), "config": spec.settings,
        "training": run.training, "seed": run.seed,
        "init_from": run.init_from, "training_seconds": state["elapsed"], "device": str(run.device), "processes": run.world,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
                     "numpy": np.__version__},
    })
    return metrics


def val_interval(predicted, age, interval: dict) -> dict:
    """The split-conformal interval of a model calibrated on its validation subjects (model.pt meta)."""
    from brainage.core.intervals import calibrate, settings

    return calibrate(predicted, age, **settings(interval)).to_meta()


def plot_learning_curve(table: pd.DataFrame, name: str, path: str | Path) -> None:
    """Training loss and validation MAE per epoch (two panels for RNC: encoder, then head)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [p for p in ("e2e", "encoder", "head") if (table["phase"] == p).any()]
    fig, axes = plt.subplots(1, len(phases), figsize=(5 * len(phases), 3.6), squeeze=False)
    for ax, phase in zip(axes[0], phases):
        t = table[table["phase"] == phase]
        if phase == "encoder":
            ax.plot(t["epoch"], t["train_loss"], "o-", ms=3, label="train RNC loss")
            ax.set_ylabel("Rank-N-Contrast loss")
            ax.set_title(f"{name}: RNC encoder")
        else:
            ax.plot(t["epoch"], t["train_loss"], "o-", ms=3, label="train L1 (years)")
            ax.plot(t["epoch"], t["val_mae"], "s-", ms=3, label="val MAE (years)")
            best = t.loc[t["val_mae"].idxmin()]
            ax.axvline(best["epoch"], color="grey", ls=":", label=f"best val {best['val_mae']:.2f} (epoch {int(best['epoch'])})")
            ax.set_ylabel("years")
            ax.set_title(f"{name}: {'end-to-end' if phase == 'e2e' else 'head (encoder frozen)'}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
