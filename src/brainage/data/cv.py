"""Out-of-fold predictions of a cross-validated model (``training.splits.scheme: kfold``).

Each fold ``r<r>f<k>`` (brainage.data.splits.make_cv_splits) trains one model and predicts its own
test fold, the patients and its validation subjects (for the bias correction), exactly as a
fixed-split model does (brainage.apply.infer). :func:`merge_folds` joins the fold tables into the
model's predictions table, ``results/predictions/<model>.tsv``, so that every downstream table
and figure reads out-of-fold predictions without knowing about folds:

- a healthy control appears once, with split ``test``: its prediction is the mean over repeats of
  the one model per repeat that never saw it (columns ``predicted_age_r<r>``, ``fold_r<r>``
  keep each repeat's);
- a patient (AD, PD) is predicted by every fold's model; its prediction is their mean;
- ``bag`` is recomputed from the merged prediction, ``bag_corrected`` (each fold's own
  correction) and ``true_bag`` are averaged like the prediction;
- ``predicted_age_lower``/``_upper``: a split-conformal interval (brainage.core.intervals) around
  the merged prediction, calibrated on out-of-fold residuals: a healthy subject of fold k (the
  first repeat's folds) on the healthy subjects *not* in fold k, so its own fold never
  calibrates its own interval and the out-of-fold coverage is honest; a patient on every
  healthy subject (what a deployed model would use). Each fold's own interval, from its
  validation subjects, is replaced.

:func:`fold_accuracy` recovers each fold's MAE and R2 from those columns (Table 2 reports them
as mean +- SD over folds beside the pooled figures).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping

import pandas as pd

from brainage.core import intervals
from brainage.core.io import InputError

log = logging.getLogger(__name__)

__all__ = ["merge_folds", "fold_accuracy", "fold_summary", "has_folds", "parse_fold", "pooled_note"]

_FOLD = re.compile(r"^r(\d+)f(\d+)$")
#: columns averaged over the models that predicted a subject
AVERAGED = ("predicted_age", "bag_corrected", "true_bag")


def parse_fold(name: str) -> tuple[int, int]:
    """``"r1f3"`` -> (repeat 1, fold 3)."""
    match = _FOLD.match(name)
    if not match:
        raise ValueError(f"fold name {name!r} is not r<repeat>f<fold>")
    return int(match.group(1)), int(match.group(2))


def merge_folds(
    tables: Mapping[str, pd.DataFrame], level: float = intervals.LEVEL, conditional: str | None = None
) -> tuple[pd.DataFrame, dict]:
    """The out-of-fold predictions table of one model, and a summary with each fold's accuracy
    and the ``level`` prediction interval (``conditional``: none or predicted_age).

    ``tables``: fold name -> that fold's predictions table (brainage.apply.infer.predictions_table).
    Raises InputError when a healthy control is tested twice in one repeat or never.
    """
    if not tables:
        raise InputError("cross-validation: no fold predictions to merge")
    long = pd.concat([t.assign(_repeat=parse_fold(f)[0], _fold=f) for f, t in tables.items()], ignore_index=True)
    hc = long[long["split"] == "test"]
    twice = hc[hc.duplicated(["participant_id", "_repeat"])]
    if len(twice):
        raise InputError(f"{twice['participant_id'].iloc[0]}: tested by two folds of repeat {twice['_repeat'].iloc[0]}")
    repeats = sorted(long["_repeat"].unique())
    tested = {r: set(hc.loc[hc["_repeat"] == r, "participant_id"]) for r in repeats}
    if any(s != tested[repeats[0]] for s in tested.values()):
        odd = sorted(set.union(*tested.values()) - set.intersection(*tested.values()))
        raise InputError(f"{odd[0]}: tested in some repeats of the cross-validation but not in all")
    columns = [c for c in tables[next(iter(tables))].columns if c not in (intervals.LOWER, intervals.UPPER)]
    averaged = [c for c in AVERAGED if c in long]
    first = long.drop_duplicates("participant_id").set_index("participant_id")
    merged = first[[c for c in columns if c != "participant_id"]].copy()
    merged[averaged] = long.groupby("participant_id")[averaged].mean().loc[merged.index]
    merged["bag"] = merged["predicted_age"] - merged["age"]
    for r in repeats:
        rows = hc[hc["_repeat"] == r].set_index("participant_id")
        merged[f"fold_r{r}"] = rows["_fold"].reindex(merged.index)
        merged[f"predicted_age_r{r}"] = rows["predicted_age"].reindex(merged.index)
    merged = merged.reset_index()[[*columns, *[c for c in merged.columns if c.startswith(("fold_r", "predicted_age_r"))]]]
    order = {"test": 0, "AD": 1, "PD": 2}
    merged = merged.sort_values(["split", "participant_id"], key=lambda c: c.map(order) if c.name == "split" else c)
    merged, interval = out_of_fold_intervals(merged.reset_index(drop=True), level, conditional)
    info = {"folds": fold_accuracy(merged).to_dict("records"), **fold_summary(merged),
            "n": {s: int((merged["split"] == s).sum()) for s in order}, "interval": interval}
    return merged, info


def out_of_fold_intervals(merged: pd.DataFrame, level: float, conditional: str | None) -> tuple[pd.DataFrame, dict]:
    """``merged`` with the interval columns (see the module's docstring), and their summary: the
    all-subjects calibration and each fold's half-width (the first repeat's folds)."""
    healthy = (merged["split"] == "test").to_numpy()
    pred, age = merged["predicted_age"].to_numpy(float), merged["age"].to_numpy(float)
    overall = intervals.calibrate(pred[healthy], age[healthy], level, conditional)
    lower, upper = overall.bounds(pred)
    fold_column = min((c for c in merged.columns if str(c).startswith("fold_r")), key=lambda c: int(c[len("fold_r"):]),
                      default=None)
    by_fold = {}
    if fold_column is not None and healthy.any():
        folds = merged.loc[healthy, fold_column].astype(str).to_numpy()
        by_fold = intervals.calibrate_by_group(pred[healthy], age[healthy], folds, level, conditional)
        for fold, calibration in by_fold.items():
            rows = healthy.nonzero()[0][folds == fold]
            lower[rows], upper[rows] = calibration.bounds(pred[rows])
    per_fold = {f: {"halfwidth": c.halfwidth, "halfwidths": list(c.halfwidths), "n": c.n} for f, c in by_fold.items()}
    summary = {**overall.to_meta(), "fold_column": fold_column, "folds": per_fold,
               "calibrated_on": "healthy out-of-fold residuals; each fold's subjects on the other folds' only"}
    if not overall.finite or not all(c.finite for c in by_fold.values()):
        log.warning(
            "prediction interval: %d out-of-fold healthy subjects (fewer outside one fold) are too few for a finite "
            "%g %% interval (needs >= %d); half-width written as inf", overall.n, 100 * level, intervals.min_subjects(level))
    return intervals.add_bounds(merged, lower, upper), summary


def fold_summary(frame: pd.DataFrame) -> dict[str, float]:
    """Number of folds and mean +- SD over folds of MAE and R2 (nan for a fixed split)."""
    folds = fold_accuracy(frame)

    def mean(x):
        return float(x.mean()) if len(x) else math.nan

    def sd(x):
        return float(x.std(ddof=1)) if len(x) > 1 else math.nan

    return {"n_folds": int(len(folds)), "mae_folds_mean": mean(folds["mae"]), "mae_folds_sd": sd(folds["mae"]),
            "r2_folds_mean": mean(folds["r2"]), "r2_folds_sd": sd(folds["r2"])}


def has_folds(frame: pd.DataFrame) -> bool:
    """Whether a predictions table is out-of-fold (has the per-repeat fold columns)."""
    return any(str(c).startswith("fold_r") for c in frame.columns)


def fold_accuracy(frame: pd.DataFrame) -> pd.DataFrame:
    """MAE and R2 of every fold, from an out-of-fold predictions table (:func:`merge_folds`).

    One row per fold: fold, repeat, n, mae, r2 (R2 = 1 - SS_res/SS_tot within the fold's test
    subjects). Empty when ``frame`` has no fold columns.
    """
    from brainage.core.metrics import mean_absolute_error, r_squared

    rows = []
    hc = frame[frame["split"] == "test"]
    for column in sorted(c for c in frame.columns if str(c).startswith("fold_r")):
        r = int(column[len("fold_r"):])
        for fold, group in hc.groupby(column):
            age = group["age"].to_numpy(float)
            pred = group[f"predicted_age_r{r}"].to_numpy(float)
            rows.append({"fold": fold, "repeat": r, "n": len(group), "mae": mean_absolute_error(age, pred)[0],
                         "r2": r_squared(age, pred) if len(group) > 1 else math.nan})
    return pd.DataFrame(rows, columns=["fold", "repeat", "n", "mae", "r2"])


def pooled_note(frame: pd.DataFrame) -> str | None:
    """One line saying how the out-of-fold predictions were made (None for a fixed split)."""
    if not has_folds(frame):
        return None
    folds = fold_accuracy(frame)
    repeats = folds["repeat"].nunique()
    return (f"{folds.groupby('repeat').size().iloc[0]}-fold cross-validation x {repeats} repeat(s): every healthy "
            "subject predicted by models that never saw it (mean over repeats); patients by the mean of all folds' models.")



def write_merged_folds(
    fold_tsvs: Mapping[str, str], out_tsv: str, out_json: str, interval: Mapping | None = None
) -> pd.DataFrame:
    """Rule ``predict_oof``: read each fold's predictions, merge them, write table and summary.

    ``interval``: config ``infer.interval`` (level, conditional)."""
    from brainage.core.io import write_json, write_tsv
    from brainage.core.metrics import read_predictions

    merged, info = merge_folds({fold: read_predictions(path) for fold, path in fold_tsvs.items()},
                               **intervals.settings(interval))
    model = str(merged["model"].iloc[0]) if "model" in merged and len(merged) else None
    log.info(
        "%s: %d folds, MAE %.2f +- %.2f y over folds, pooled out-of-fold MAE %.2f y (n=%d)", model, info["n_folds"],
        info["mae_folds_mean"], info["mae_folds_sd"], merged.loc[merged["split"] == "test", "bag"].abs().mean(),
        info["n"]["test"])
    log.info("%g %% prediction interval: half-width %.2f y on %d out-of-fold subjects", 100 * info["interval"]["level"],
             info["interval"]["halfwidth"], info["interval"]["n"])
    write_tsv(out_tsv, merged)
    write_json(out_json, {"model": model, **info})
    return merged
