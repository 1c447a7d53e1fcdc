"""The study's Tables 3 and 4: the headline models against the baselines on the healthy test
split, and the brain-age gap in Alzheimer's and Parkinson's disease.

Which model is "best end-to-end", "RNC" or "SFCN" comes from the config via
:func:`brainage.report.stats.model_roles`; the shared table parts from :mod:`brainage.report.tables`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd

from brainage.data import cv

from brainage.report import stats
from brainage.report.tables import CORRECTED_LABEL, CORRECTED_NOTE, Table, corrected_gap, fmt, fmt_ci, fmt_p, fmt_pm, mark


# --------------------------------------------------------------------------- Table 3
@dataclass(frozen=True)
class External:
    """A model the user brings: its predictions on (some of) the same test subjects."""

    name: str
    predictions: pd.DataFrame
    train_size: int | None = None


def headline_models(models: Mapping[str, Mapping[str, Any]], val_mae: Mapping[str, float]) -> tuple[dict[str, str], list[str]]:
    """{role: model} for the best e2e, the best RNC, each SFCN and each classical model (PCA + GP,
    brainage.models.classical), and how they were chosen.

    "Best" is the lowest validation MAE (never the test MAE, which the tables report), so the
    tables, Figure 6 and the saliency figures all pick the same models from the same files.
    """
    roles = stats.model_roles(models)
    chosen: dict[str, str] = {}
    notes = []
    for role, candidates in (("best end-to-end", roles.e2e), ("RNC", roles.rnc)):
        name, why = stats.select_best(candidates, val_mae)
        if name is not None:
            chosen[role] = name
            if len(candidates) > 1:
                notes.append(f"{role}: {name}, {why} among {', '.join(candidates)}.")
    for label, names in (("SFCN baseline", roles.sfcn), ("classical baseline", roles.classical)):
        for i, name in enumerate(names):
            chosen[label + (f" {i + 1}" if len(names) > 1 else "")] = name
    return chosen, notes


def table3_baselines(
    predictions: Mapping[str, pd.DataFrame],
    models: Mapping[str, Mapping[str, Any]],
    val_mae: Mapping[str, float],
    n_train: int | None,
    external: External | None = None,
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Table:
    """The best end-to-end model and the RNC model against the baselines (SFCN, classical, external)."""
    chosen, notes = headline_models(models, val_mae)
    entries = [(role, name, predictions[name], n_train) for role, name in chosen.items() if name in predictions]
    if not any(role.startswith("SFCN") for role in chosen):
        notes.append("No SFCN model configured (config models: backbone sfcn): SFCN row skipped.")
    if not any(role.startswith("classical") for role in chosen):
        notes.append("No classical model configured (config models: backbone pca_gpr): classical row skipped.")
    if external is not None:
        entries.append(("external", external.name, external.predictions, external.train_size))
    else:
        notes.append("No external model supplied (config stats.external): row skipped.")
    reference = chosen.get("RNC")
    ref_test = stats.healthy_test(predictions[reference]) if reference in predictions else None
    rows = []
    for role, name, pred, n_tr in entries:
        hc_test = stats.healthy_test(pred)
        acc = stats.accuracy(hc_test, n_resamples, seed)
        test = stats.paired_error_test(hc_test, ref_test) if ref_test is not None and name != reference else None
        rows.append(
            {
                "role": role,
                "model": name,
                "n_train": n_tr if n_tr is not None else math.nan,
                "n_test": acc.n,
                "mae": acc.mae,
                "mae_sd": acc.mae_sd,
                "mae_ci_low": acc.mae_ci[0],
                "mae_ci_high": acc.mae_ci[1],
                "r2": acc.r2,
                "bag_mean": acc.bag_mean,
                "bag_sd": acc.bag_sd,
                "p_bag_vs_0": acc.bag_test.pvalue,
                **corrected_gap(hc_test),
                "n_paired_vs_rnc": test.n if test else math.nan,
                "p_vs_rnc": test.pvalue if test else math.nan,
            }
        )
    data = pd.DataFrame(rows)
    with_corrected = bool(data["bag_corrected_mean"].notna().any())
    display = pd.DataFrame(
        {
            "Role": data["role"],
            "Model": data["model"],
            "Train N": data["n_train"].map(lambda n: fmt(n, 0)),
            "Test N": data["n_test"],
            "MAE (years)": [fmt_pm(m, s) + mark(p, alpha) for m, s, p in zip(data["mae"], data["mae_sd"], data["p_vs_rnc"])],
            "MAE 95% CI": [fmt_ci(c) for c in zip(data["mae_ci_low"], data["mae_ci_high"])],
            "R2": data["r2"].map(fmt),
            "Mean BAG (years)": [fmt_pm(m, s, signed=True) + mark(p, alpha) for m, s, p in zip(data["bag_mean"], data["bag_sd"], data["p_bag_vs_0"])],
            "p vs RNC": data["p_vs_rnc"].map(fmt_p),
        }
    )
    if with_corrected:
        # beside the raw mean BAG, never instead of it
        display.insert(display.columns.get_loc("Mean BAG (years)") + 1, f"Mean BAG, {CORRECTED_LABEL} (years)", _fmt_corrected(data, alpha))
    else:
        data = _drop_corrected(data)
    cv_note = next((n for n in (cv.pooled_note(e[2]) for e in entries) if n), None)
    notes = [
        *([cv_note + " Train N: the first fold's."] if cv_note else []),
        "Healthy test split. MAE * : differs from the RNC model, two-sided paired t-test on absolute errors "
        f"(p < {alpha:g}, subjects common to both); BAG * : mean BAG differs from 0 (one-sample t-test).",
        *([CORRECTED_NOTE] if with_corrected else []),
        *notes,
    ]
    return Table("Table 3. Best end-to-end and RNC models against the baselines", data, display, notes)


def _drop_corrected(data: pd.DataFrame) -> pd.DataFrame:
    """``data`` without the (all-nan) corrected-BAG columns: predictions made without bias correction."""
    return data.drop(columns=[c for c in data.columns if "corrected" in c])


def _fmt_corrected(data: pd.DataFrame, alpha: float) -> list[str]:
    """``mean +- SD`` (* one-sample test against 0) of the corrected BAG, "n/a" where absent."""
    return [fmt_pm(m, s, signed=True) + mark(p, alpha)
            for m, s, p in zip(data["bag_corrected_mean"], data["bag_corrected_sd"], data["p_bag_corrected_vs_0"])]


# --------------------------------------------------------------------------- Table 4
def table4_disease(
    predictions: Mapping[str, pd.DataFrame],
    models: Mapping[str, Mapping[str, Any]],
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
    older_than: float = 60.0,
) -> Table:
    """AD and PD per model: MAE, BAG (one-sample test), Cohen's d vs HC, correlation with severity."""
    names = [m for m in models if m in predictions] + [m for m in predictions if m not in models]
    rows = []
    for name in names:
        pred = predictions[name]
        hc = stats.healthy_test(pred)
        hc_old = stats.healthy_test(pred, older_than)
        for cohort, score in stats.SEVERITY.items():
            group = stats.disease_group(pred, cohort)
            if not len(group):
                continue
            rows.append(_disease_row(name, cohort, score, group, hc, hc_old, n_resamples, seed, older_than))
    data = pd.DataFrame(rows)
    title = "Table 4. Brain-age gap in Alzheimer's and Parkinson's disease"
    absent = stats.absent_cohorts(list(predictions.values()))
    if data.empty:  # a healthy-only cohort: the table says so in one line
        line = f"{stats.absent_line(absent or list(stats.SEVERITY))}: no disease brain-age gap to report."
        return Table(title, pd.DataFrame(columns=["model", "cohort", "n"]), pd.DataFrame(), [line])
    o = f"{older_than:g}"
    display = pd.DataFrame(
        {
            "Model": data["model"],
            "Cohort": data["cohort"],
            "N": data["n"],
            "MAE (years)": [fmt_pm(m, s) for m, s in zip(data["mae"], data["mae_sd"])],
            "BAG (years)": [fmt_pm(m, s, signed=True) + mark(p, alpha) for m, s, p in zip(data["bag_mean"], data["bag_sd"], data["p_bag_vs_0"])],
            "BAG 95% CI": [fmt_ci(c) for c in zip(data["bag_ci_low"], data["bag_ci_high"])],
            "p (BAG=0)": data["p_bag_vs_0"].map(fmt_p),
            "d vs HC": data["d_vs_hc"].map(fmt),
            f"d vs HC >{o}": data[f"d_vs_hc_over{o}"].map(fmt),
            "Severity": data["severity"].map(lambda s: stats.SEVERITY_LABEL.get(s, s)),
            "r": [fmt(r) + mark(p, alpha) for r, p in zip(data["r"], data["p_r"])],
            "r 95% CI": [fmt_ci(c) for c in zip(data["r_ci_low"], data["r_ci_high"])],
            "p (r)": data["p_r"].map(fmt_p),
        }
    )
    with_corrected = bool(data["bag_corrected_mean"].notna().any())
    if with_corrected:
        # beside the raw columns, never instead of them
        at = display.columns.get_loc("p (BAG=0)") + 1
        display.insert(at, f"BAG, {CORRECTED_LABEL} (years)", _fmt_corrected(data, alpha))
        display[f"r, {CORRECTED_LABEL} BAG"] = [fmt(r) + mark(p, alpha) for r, p in zip(data["r_corrected"], data["p_r_corrected"])]
    else:
        data = _drop_corrected(data)
    notes = [
        f"BAG * : mean BAG differs from 0, two-sided one-sample t-test, p < {alpha:g}.",
        f"r * : Pearson correlation of BAG with severity (ADAS-Cog-11 in AD, MDS-UPDRS-III in PD), p < {alpha:g}.",
        f"Cohen's d (pooled SD) of BAG against the healthy test split, and against its subjects older than {o}.",
        f"95% CI: BCa bootstrap over subjects, {n_resamples} resamples, seed {seed}.",
        *([CORRECTED_NOTE + " Its marks are the same tests on the corrected BAG."] if with_corrected else []),
        *([f"{stats.absent_line(absent)}."] if absent else []),
    ]
    return Table(title, data, display, notes)


def _disease_row(
    name: str,
    cohort: str,
    score: str,
    group: pd.DataFrame,
    hc: pd.DataFrame,
    hc_old: pd.DataFrame,
    n_resamples: int,
    seed: int,
    older_than: float,
) -> dict[str, Any]:
    """Table 4's numbers of one model in one disease ``group``: accuracy, BAG and its test against
    0, Cohen's d against the healthy test split ``hc`` (and its older subjects ``hc_old``), and the
    correlation of BAG with the severity ``score``."""
    acc = stats.accuracy(group, n_resamples, seed)
    scores = group[score].astype(float) if score in group else pd.Series(np.nan, index=group.index)
    corr = stats.severity_correlation(group["bag"], scores)
    row = {
        "model": name,
        "cohort": cohort,
        "n": acc.n,
        "age_mean": group["age"].mean(),
        "mae": acc.mae,
        "mae_sd": acc.mae_sd,
        "bag_mean": acc.bag_mean,
        "bag_sd": acc.bag_sd,
        "bag_ci_low": acc.bag_ci[0],
        "bag_ci_high": acc.bag_ci[1],
        "t_bag_vs_0": acc.bag_test.statistic,
        "p_bag_vs_0": acc.bag_test.pvalue,
        "hc_bag_mean": hc["bag"].mean() if len(hc) else math.nan,
        "d_vs_hc": stats.cohens_d(group["bag"], hc["bag"]),
        f"d_vs_hc_over{older_than:g}": stats.cohens_d(group["bag"], hc_old["bag"]),
        "severity": score,
        "n_severity": corr.n,
        "r": corr.r,
        "p_r": corr.pvalue,
        "r_ci_low": math.nan,
        "r_ci_high": math.nan,
        **corrected_gap(group, scores),
    }
    # the nan placeholders above keep the CI columns beside r in the table
    row["r_ci_low"], row["r_ci_high"] = stats.correlation_ci(group["bag"], scores, n_resamples, seed)
    return row
