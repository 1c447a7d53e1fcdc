"""A stacked model (``backbone: stack``): the weighted mean of other models' predictions.

The weights are a convex combination (non-negative, summing to 1, no intercept: the stack adds
no age bias of its own) minimising the squared error of the combined prediction, fitted on
out-of-fold predictions only (Wolpert 1992; Breiman 1996):

- inside the cross-validation, the stack of fold ``k`` is fitted on the out-of-fold predictions
  of fold ``k``'s *training* subjects, which are the test subjects of the other folds of the
  same repeat, predicted by models that never saw them. Fold ``k``'s own test subjects never
  enter its weights; the stack's out-of-fold MAE is then an honest estimate like any model's;
- the deployed stack (brainage.train.deploy) is fitted on every healthy subject's out-of-fold
  prediction and combines the members' deployed models.

The one indirect path left: the other folds' models were trained on subjects that include
fold ``k``'s test subjects; their *predictions* on other subjects enter the weights. This is
the standard stacking estimate; nothing of fold ``k``'s test subjects (age, prediction) does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from brainage.core.io import InputError
from brainage.data.cv import parse_fold

log = logging.getLogger(__name__)

__all__ = ["fit_weights", "stack_fold_table", "combine"]


def fit_weights(predictions: np.ndarray, age: np.ndarray) -> np.ndarray:
    """Convex weights (>= 0, sum 1) of the columns of ``predictions`` (N, M) minimising the squared
    error to ``age`` (N,). Solved as non-negative least squares with the sum constraint as a
    heavily weighted extra row, then renormalised."""
    predictions = np.asarray(predictions, dtype=np.float64)
    age = np.asarray(age, dtype=np.float64)
    if predictions.ndim != 2 or predictions.shape[0] != age.shape[0] or predictions.shape[0] < 2:
        raise ValueError(f"stack weights need (N >= 2, M) predictions and N ages, got {predictions.shape}, {age.shape}")
    scale = 1e3 * max(float(np.abs(age).max()), 1.0)
    design = np.vstack([predictions, np.full((1, predictions.shape[1]), scale)])
    target = np.concatenate([age, [scale]])
    weights, _ = nnls(design, target)
    if weights.sum() <= 0:
        weights = np.full(predictions.shape[1], 1.0 / predictions.shape[1])
    return weights / weights.sum()


def combine(tables: Mapping[str, pd.DataFrame], weights: Mapping[str, float]) -> pd.DataFrame:
    """The members' predictions tables (same subjects) combined with ``weights``: the first
    member's table with predicted_age (and bag, bag_corrected when every member has it) replaced."""
    names = list(tables)
    first = tables[names[0]].set_index("participant_id")
    out = first.copy()
    pred = sum(weights[m] * tables[m].set_index("participant_id").loc[out.index, "predicted_age"].astype(float)
               for m in names)
    out["predicted_age"] = pred
    out["bag"] = out["predicted_age"] - out["age"].astype(float)
    if all("bag_corrected" in tables[m] for m in names):
        # each member's corrected prediction (age + its corrected BAG), combined
        out["bag_corrected"] = sum(
            weights[m] * tables[m].set_index("participant_id").loc[out.index, "bag_corrected"].astype(float)
            for m in names)
    elif "bag_corrected" in out:
        out = out.drop(columns="bag_corrected")
    for column in [c for c in out.columns if c.startswith(("predicted_age_lower", "predicted_age_upper"))]:
        out = out.drop(columns=column)  # the stack's intervals come from its own residuals (brainage.data.cv)
    return out.reset_index()


def stack_fold_table(name: str, fold: str, member_folds: Mapping[str, Mapping[str, pd.DataFrame]],
                     mode: str = "fitted") -> tuple[pd.DataFrame, dict]:
    """Fold ``fold``'s predictions table of stack ``name`` and its weights.

    ``member_folds``: member -> fold name -> that fold's predictions table (every fold of the
    cross-validation). The weights are fitted on the healthy test rows of the *other* folds of
    ``fold``'s repeat (its training subjects' out-of-fold predictions), then applied to
    ``fold``'s own rows. ``mode`` (config ``combine``) ``mean``: equal weights (an ensemble; nothing is fitted).
    """
    members = list(member_folds)
    repeat = parse_fold(fold)[0]
    others = sorted(f for f in member_folds[members[0]] if f != fold and parse_fold(f)[0] == repeat)
    if not others:
        raise InputError(f"stack {name}: fold {fold} has no other fold of repeat {repeat} to fit its weights on")
    train = []
    for f in others:
        tables = {m: member_folds[m][f] for m in members}
        hc = {m: t[t["split"] == "test"].set_index("participant_id") for m, t in tables.items()}
        ids = hc[members[0]].index
        for m in members[1:]:
            if set(hc[m].index) != set(ids):
                raise InputError(f"stack {name}: members {members[0]} and {m} tested different subjects in fold {f}")
        train.append(pd.DataFrame({"age": hc[members[0]].loc[ids, "age"].astype(float),
                                   **{m: hc[m].loc[ids, "predicted_age"].astype(float) for m in members}}))
    fit = pd.concat(train)
    weights = dict(zip(members, fit_weights(fit[members].to_numpy(), fit["age"].to_numpy()) if mode == "fitted"
                       else np.full(len(members), 1.0 / len(members))))
    table = combine({m: member_folds[m][fold] for m in members}, weights)
    table["model"] = name
    info = {"model": name, "fold": fold, "combine": mode, "weights": weights,
            "fitted_on": {"folds": others, "n": int(len(fit))}}
    log.info("stack %s, fold %s: weights %s (fitted on %d out-of-fold subjects of folds %s)", name, fold,
             ", ".join(f"{m} {w:.3f}" for m, w in weights.items()), len(fit), ",".join(others))
    return table, info


def run_stack_fold(name: str, fold: str, member_tsvs: Mapping[str, Mapping[str, str]], out_tsv: str,
                   out_json: str, mode: str = "fitted") -> pd.DataFrame:
    """Rule ``stack_fold``: read every member's fold tables, write the stack's table of ``fold``."""
    from brainage.core.io import write_json, write_tsv
    from brainage.core.metrics import read_predictions

    member_folds = {m: {f: read_predictions(p) for f, p in folds.items()} for m, folds in member_tsvs.items()}
    table, info = stack_fold_table(name, fold, member_folds, mode)
    write_tsv(out_tsv, table)
    write_json(out_json, info)
    return table
