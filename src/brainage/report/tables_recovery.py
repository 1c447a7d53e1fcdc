"""The gap-recovery table of simulated cohorts: each model's predicted brain-age gap against the
simulator's true one (the shared table parts from :mod:`brainage.report.tables`)."""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from brainage.report import stats
from brainage.core.io import InputError
from brainage.report.tables import CORRECTED_LABEL, Table, fmt, fmt_ci, fmt_p, mark


# --------------------------------------------------------------------------- gap recovery
def table_gap_recovery(predictions: Mapping[str, pd.DataFrame], models: Mapping[str, Mapping[str, Any]],
                       alpha: float = 0.05) -> Table:
    """Simulated cohorts: predicted against true BAG per model for the HC test split, AD and PD.

    The truth is the simulator's: ``true_bag`` = biological age - chronological age of each
    subject (results/cohort/truth/subjects.tsv, carried into the predictions tables). Rows for
    the raw BAG and, when present, the age-bias corrected one.
    """
    names = [m for m in models if m in predictions] + [m for m in predictions if m not in models]
    rows = []
    for name in names:
        pred = predictions[name]
        if "true_bag" not in pred:
            raise InputError(f"gap recovery: predictions of {name} have no true_bag column (simulated cohorts only)")
        kinds = [("bag", "raw")] + ([("bag_corrected", CORRECTED_LABEL)] if stats.has_corrected_gap(pred) else [])
        for label, group in stats.gap_groups(pred):
            for column, kind in kinds:
                g = stats.gap_recovery(group["true_bag"], group[column])
                rows.append({"model": name, "group": label, "bag": kind, "n": g.n, "true_bag_mean": g.true_mean,
                             "bag_mean": g.predicted_mean, "bag_ci_low": g.ci_low, "bag_ci_high": g.ci_high,
                             "r": g.r, "p_r": g.p, "slope": g.slope})
    data = pd.DataFrame(rows)
    if data.empty:
        raise InputError("gap recovery: no predictions")
    display = pd.DataFrame({
        "Model": data["model"], "Group": data["group"], "BAG": data["bag"], "N": data["n"],
        "True BAG (years)": [fmt(v, 2) for v in data["true_bag_mean"]],
        "Predicted BAG (years)": [fmt(v, 2) for v in data["bag_mean"]],
        "95% CI": [fmt_ci(c) for c in zip(data["bag_ci_low"], data["bag_ci_high"])],
        "r (predicted, true)": [fmt(r) + mark(p, alpha) for r, p in zip(data["r"], data["p_r"])],
        "p (r)": data["p_r"].map(fmt_p),
        "Slope": data["slope"].map(fmt),
    })
    notes = [
        "True BAG: the simulator's biological minus chronological age of each subject (healthy ageing "
        "varies by person; AD and PD add their disease increment). A perfect model has r = 1, slope = 1 "
        "and a mean predicted BAG equal to the mean true BAG.",
        "95% CI: t-interval of the mean predicted BAG. Slope: least squares of predicted on true BAG.",
        f"r * : Pearson correlation of predicted with true BAG, two-sided p < {alpha:g}.",
    ]
    return Table("Gap recovery: predicted against the simulator's true brain-age gap", data, display, notes)
