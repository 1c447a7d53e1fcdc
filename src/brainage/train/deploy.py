"""The model a cross-validated run leaves to apply to new scans: ``results/models/<name>/model.pt``.

A cross-validation trains one model per fold (``results/models/<name>/cv/<fold>/``) and none on
everyone. The deployed model is the **ensemble of the fold models** (the mean of their
predictions; brainage.models.ensemble), not a refit on every subject: (a) its members are the
very models whose out-of-fold accuracy Table 2 reports, so no number describes an untested
model (a refit can be tested on no subject of the cohort); (b) on 92 unseen real IXI heads the
mean of five fold models beat a single fold model by about 1 y for the networks (issue 28's
measurement), more than the 25 % more training subjects of a refit would be expected to give;
(c) it needs no further training job. A refit was not measured here.

A stacked model is deployed as its members' deployed models with the weights fitted on every
healthy subject's out-of-fold predictions (brainage.train.stack.fit_weights).

Every deployed model carries its prediction interval (``meta["interval"]``,
brainage.core.intervals): split-conformal on the healthy subjects' out-of-fold residuals.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from brainage.core.intervals import Calibration, calibrate, settings
from brainage.core.io import InputError, write_json
from brainage.core.metrics import mean_absolute_error, read_predictions
from brainage.models.ensemble import ensemble_blob
from brainage.models.files import read_blob, save_torch
from brainage.train.stack import fit_weights

log = logging.getLogger(__name__)

__all__ = ["deploy_cv_model", "deploy_stack", "oof_calibration"]

#: meta keys every member must agree on (they decide how a new scan is prepared)
SHARED_KEYS = ("grid_res", "grid_shape", "preprocess", "intensity_normalisation")


def oof_calibration(oof: pd.DataFrame, interval: Mapping | None) -> Calibration:
    """The interval rule from a model's out-of-fold predictions of its healthy subjects."""
    hc = oof[oof["split"] == "test"]
    return calibrate(hc["predicted_age"].to_numpy(float), hc["age"].to_numpy(float), **settings(interval))


def _shared_meta(name: str, metas: list[dict], what: str) -> dict:
    first = metas[0]
    for key in SHARED_KEYS:
        for other in metas[1:]:
            if key in first and other.get(key) != first.get(key):
                raise InputError(f"{name}: its {what} differ in {key} ({first.get(key)} vs {other.get(key)}); "
                                 f"one model file cannot prepare a scan for both")
    return {key: first[key] for key in SHARED_KEYS if key in first}


def _write(name: str, blobs: list[dict], weights, oof: pd.DataFrame, interval: Mapping | None, extra: dict,
           out_model: str | Path, out_card: str | Path) -> dict:
    calibration = oof_calibration(oof, interval)
    hc = oof[oof["split"] == "test"]
    metrics = {"oof_mae": mean_absolute_error(hc["age"].to_numpy(float), hc["predicted_age"].to_numpy(float))[0],
               "n_oof": int(len(hc))}
    ages = [b["meta"].get("age") or {} for b in blobs]
    age = {"train_min": min((a.get("train_min", np.inf) for a in ages), default=None),
           "train_max": max((a.get("train_max", -np.inf) for a in ages), default=None)}
    meta = {"name": name, **_shared_meta(name, [b["meta"] for b in blobs], "members"), "age": age,
            "interval": calibration.to_meta(), "metrics": metrics, **extra}
    save_torch(ensemble_blob(blobs, weights, 0.0, meta), out_model)
    card = dict(meta)
    card.update(kind="ensemble", members=[b["meta"].get("name") for b in blobs], weights=[float(w) for w in weights])
    write_json(out_card, card)
    log.info("%s: deployed %d members (weights %s); out-of-fold MAE %.2f y, %g %% interval +- %.2f y (n=%d)", name,
             len(blobs), ", ".join(f"{w:.3f}" for w in weights), metrics["oof_mae"], 100 * calibration.level,
             calibration.halfwidth, calibration.n)
    return card


def deploy_cv_model(name: str, fold_models: Mapping[str, str | Path], oof_tsv: str | Path,
                    out_model: str | Path, out_card: str | Path, interval: Mapping | None = None) -> dict:
    """Rule ``deploy`` of a trained model: the ensemble of its fold models, calibrated on its
    out-of-fold predictions (``oof_tsv``, brainage.data.cv)."""
    blobs = [read_blob(path) for path in fold_models.values()]
    weights = [1.0 / len(blobs)] * len(blobs)
    return _write(name, blobs, weights, read_predictions(oof_tsv), interval,
                  {"deployed": "mean of the cross-validation's fold models", "folds": list(fold_models)},
                  out_model, out_card)


def deploy_stack(name: str, member_models: Mapping[str, str | Path], member_oof: Mapping[str, str | Path],
                 oof_tsv: str | Path, out_model: str | Path, out_card: str | Path,
                 interval: Mapping | None = None, combine: str = "fitted") -> dict:
    """Rule ``deploy`` of a stacked model: its members' deployed models, weighted by the fit on
    every healthy subject's out-of-fold predictions; calibrated on the stack's own out-of-fold
    predictions (``oof_tsv``: its per-fold weights, brainage.train.stack)."""
    members = list(member_models)
    tables = {m: read_predictions(member_oof[m]) for m in members}
    hc = {m: t[t["split"] == "test"].set_index("participant_id") for m, t in tables.items()}
    ids = hc[members[0]].index
    weights = (fit_weights(np.column_stack([hc[m].loc[ids, "predicted_age"].to_numpy(float) for m in members]),
                           hc[members[0]].loc[ids, "age"].to_numpy(float)) if combine == "fitted"
               else np.full(len(members), 1.0 / len(members)))
    blobs = [read_blob(member_models[m]) for m in members]
    return _write(name, blobs, weights, read_predictions(oof_tsv), interval,
                  {"deployed": "stack of the members' deployed models", "stack": dict(zip(members, map(float, weights)))},
                  out_model, out_card)
