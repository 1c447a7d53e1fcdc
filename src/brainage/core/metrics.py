"""Elementary brain-age metrics and the predictions table, used by every stage that scores
predictions (cross-validation folds, saliency truth checks, the report): MAE, R2, Holm's
adjusted p-values, and reading a predictions TSV with its columns checked."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from brainage.core.io import InputError

#: columns every predictions table must hold (the inference stage writes more)
PREDICTION_COLUMNS = ("participant_id", "cohort", "dataset", "sex", "age", "predicted_age", "split")

def absolute_errors(age: Sequence[float], predicted: Sequence[float]) -> np.ndarray:
    """|predicted - age| per subject: (N,)."""
    age, predicted = _paired_arrays(age, predicted)
    return np.abs(predicted - age)


def mean_absolute_error(age: Sequence[float], predicted: Sequence[float]) -> tuple[float, float]:
    """(MAE, SD of the absolute errors with ddof=1), in years, as the study's "MAE +- SD"."""
    err = absolute_errors(age, predicted)
    return float(err.mean()), _sd(err)


def r_squared(age: Sequence[float], predicted: Sequence[float]) -> float:
    """Coefficient of determination of the predictions, 1 - SS_res / SS_tot.

    This is the R2 of the predictions against the identity line (scikit-learn's ``r2_score``),
    not the squared Pearson r: a biased model is penalised, and R2 can be negative.
    """
    age, predicted = _paired_arrays(age, predicted)
    ss_tot = float(((age - age.mean()) ** 2).sum())
    if len(age) < 2 or ss_tot == 0.0:
        return math.nan
    return 1.0 - float(((age - predicted) ** 2).sum()) / ss_tot



def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions table (results/predictions/<model>.tsv) with its columns checked.

    ``bag`` is recomputed from predicted_age - age when absent, so a user-supplied table of an
    external model needs only the columns of :data:`PREDICTION_COLUMNS` (``split`` may be absent
    there: every HC row is then taken as test).
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, sep="\t", na_values=["n/a", "NA", ""], dtype={"participant_id": str})
    except (OSError, pd.errors.ParserError) as err:
        raise InputError(f"{path}: cannot read predictions table ({err})") from None
    if "split" not in frame.columns:
        frame["split"] = np.where(frame.get("cohort", "HC") == "HC", "test", frame.get("cohort", "HC"))
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: predictions table lacks column(s) {', '.join(missing)}")
    bad = frame.loc[~np.isfinite(frame["predicted_age"].astype(float)), "participant_id"]
    if len(bad):
        raise InputError(f"{path}: subject {bad.iloc[0]} has no finite predicted_age")
    frame["bag"] = frame["predicted_age"].astype(float) - frame["age"].astype(float)
    return frame



def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (familywise error over the finite ones; NaN stays NaN):
    sorted ascending, p_(i) * (m - i + 1), made monotone, capped at 1."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok):
        order = ok[np.argsort(p[ok], kind="stable")]
        m = len(order)
        adjusted = np.maximum.accumulate(p[order] * (m - np.arange(m)))
        out[order] = np.minimum(adjusted, 1.0)
    return out


def _paired_arrays(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {b.shape}")
    return a, b


def _sd(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if len(x) >= 2 else math.nan
