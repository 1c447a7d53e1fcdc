"""Shared parts of the study's tables, and Tables 1 and 2.

Each table is written three ways: a TSV with plain numbers (machine-readable, one value per
column), a Markdown rendering and an HTML rendering (``mean +- SD`` cells, marks, notes) for
people and for the Snakemake report. This module holds what every table uses (:class:`Table`,
the cell formatting, the corrected-BAG columns, the inputs) and Tables 1-2; Tables 3-4 are in
:mod:`brainage.report.tables_disease`, the gap-recovery table in
:mod:`brainage.report.tables_recovery` and the comparison sheet with the study's published
figures in :mod:`brainage.report.comparison`. Statistics come from :mod:`brainage.report.stats`.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from brainage.data import cv

from brainage.report import stats
from brainage.core.io import InputError, write_text, write_tsv

PM = "\u00b1"


@dataclass
class Table:
    """A result table: numbers for the TSV, formatted cells for Markdown/HTML, and notes."""

    title: str
    data: pd.DataFrame
    display: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def write(self, tsv: str | Path | None = None, md: str | Path | None = None, html_path: str | Path | None = None) -> None:
        if tsv is not None:
            write_tsv(tsv, self.data)
        if md is not None:
            write_text(md, self.markdown())
        if html_path is not None:
            write_text(html_path, self.html())

    def markdown(self) -> str:
        # a table without columns (nothing to report) is its notes alone, never an empty grid
        lines = [f"# {self.title}", "", *([markdown_table(self.display), ""] if len(self.display.columns) else [])]
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def html(self) -> str:
        table = self.display.to_html(index=False, escape=True, border=0, na_rep="") if len(self.display.columns) else ""
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return HTML_PAGE.format(title=html.escape(self.title), table=table, notes=f"<ul>{notes}</ul>" if notes else "")


#: the page around a table (or, from brainage.report.comparison, a sheet) and its notes
HTML_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{font-family: sans-serif; font-size: 14px; margin: 1em;}}
table {{border-collapse: collapse;}}
th, td {{padding: 4px 10px; text-align: right; border-bottom: 1px solid #ddd;}}
th {{background: #f3f3f3;}}
td:first-child, th:first-child {{text-align: left;}}
li {{margin: 0.2em 0; color: #333;}}
</style></head>
<body><h3>{title}</h3>
{table}
{notes}
</body></html>
"""


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (cells as strings, '|' escaped)."""

    def cell(v: Any) -> str:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).replace("|", "\\|")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


# --------------------------------------------------------------------------- formatting
def _augment_label(augment) -> object:
    """A model's ``augment`` setting for Table 2: the boolean, or its overrides spelled out."""
    if isinstance(augment, dict):
        return "True (" + ", ".join(f"{k} {v}" for k, v in augment.items()) + ")"
    return augment


def fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def fmt_pm(mean: float, sd: float, digits: int = 2, signed: bool = False) -> str:
    if not np.isfinite(mean):
        return "n/a"
    m = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return f"{m} {PM} {fmt(sd, digits)}"


def fmt_ci(ci: tuple[float, float], digits: int = 2) -> str:
    lo, hi = ci
    return "n/a" if not (np.isfinite(lo) and np.isfinite(hi)) else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def mark(p: float, alpha: float) -> str:
    return "*" if p is not None and np.isfinite(p) and p < alpha else ""


#: label of the age-bias-corrected BAG in every table and figure (raw BAG stays primary)
CORRECTED_LABEL = "age-bias corrected"
CORRECTED_NOTE = (
    "BAG, age-bias corrected: the inference stage's bag_corrected (infer.bias_correction: BAG minus a "
    "linear fit of BAG on age in the healthy validation split); shown beside the raw BAG, which stays the "
    "primary measure as in the study."
)


def corrected_gap(group: pd.DataFrame, score: pd.Series | None = None) -> dict[str, float]:
    """Mean +- SD and one-sample test of the corrected BAG of ``group`` (and, with ``score``,
    its Pearson r with the score); nan when the table has no corrected BAG."""
    out = {"bag_corrected_mean": math.nan, "bag_corrected_sd": math.nan, "p_bag_corrected_vs_0": math.nan}
    if score is not None:
        out.update(r_corrected=math.nan, p_r_corrected=math.nan)
    if not stats.has_corrected_gap(group):
        return out
    bag = pd.to_numeric(group[stats.CORRECTED_BAG], errors="coerce").astype(float)
    finite = bag[np.isfinite(bag)]
    out["bag_corrected_mean"], out["bag_corrected_sd"] = stats.gap_summary(finite)
    out["p_bag_corrected_vs_0"] = stats.bag_vs_zero(finite).pvalue
    if score is not None:
        corr = stats.severity_correlation(bag, score)
        out.update(r_corrected=corr.r, p_r_corrected=corr.pvalue)
    return out


# --------------------------------------------------------------------------- inputs
def load_predictions(paths: Sequence[str | Path]) -> dict[str, pd.DataFrame]:
    """Prediction tables keyed by model name (the file stem of results/predictions/<model>.tsv);
    the interval level of the summary beside each (``<model>.json``, written with it) is kept
    in the table's ``attrs["interval_level"]``."""
    frames = {}
    for path in paths:
        frame = stats.read_predictions(path)
        summary = Path(path).with_suffix(".json")
        if summary.exists():
            level = (json.loads(summary.read_text()).get("interval") or {}).get("level")
            if level is not None:
                frame.attrs["interval_level"] = float(level)
        frames[Path(path).stem] = frame
    return frames


def train_size(splits: str | Path | None) -> int | None:
    """Number of training subjects in results/splits.tsv (shared by every model trained here)."""
    if splits is None or not Path(splits).exists():
        return None
    frame = pd.read_csv(splits, sep="\t")
    return int((frame["split"] == "train").sum())


# --------------------------------------------------------------------------- Table 1
def table1_cohort(participants: pd.DataFrame) -> Table:
    """Cohort statistics per dataset and cohort: N, age mean +- SD, range, F/M; then totals."""
    rows = []
    groups = list(participants.groupby(["dataset", "cohort"], sort=False))
    order = {"HC": 0, "AD": 1, "PD": 2}
    groups.sort(key=lambda g: (order.get(g[0][1], 9), str(g[0][0])))
    for (dataset, cohort), sub in groups:
        rows.append(_demographics(f"{dataset}", cohort, sub))
    for cohort in ("HC", "AD", "PD"):
        sub = participants[participants["cohort"] == cohort]
        if len(sub):
            rows.append(_demographics(f"Total {cohort}", cohort, sub))
    rows.append(_demographics("Total", "all", participants))
    data = pd.DataFrame(rows)
    display = pd.DataFrame(
        {
            "Dataset": data["dataset"],
            "Cohort": data["cohort"],
            "N": data["n"],
            "Age (years)": [fmt_pm(m, s, 1) for m, s in zip(data["age_mean"], data["age_sd"])],
            "Range (years)": [f"{lo:.0f}-{hi:.0f}" for lo, hi in zip(data["age_min"], data["age_max"])],
            "F/M": [f"{f}/{m}" for f, m in zip(data["n_female"], data["n_male"])],
        }
    )
    notes = ["Age as mean \u00b1 SD (ddof 1); F/M = number of female/male participants."]
    absent = stats.absent_cohorts([participants])
    if absent:
        notes.append(f"{stats.absent_line(absent)}.")
    return Table("Table 1. Cohort statistics per dataset", data, display, notes)


def _demographics(dataset: str, cohort: str, sub: pd.DataFrame) -> dict[str, Any]:
    age = sub["age"].astype(float)
    return {
        "dataset": dataset,
        "cohort": cohort,
        "n": len(sub),
        "age_mean": age.mean(),
        "age_sd": age.std(ddof=1) if len(sub) > 1 else math.nan,
        "age_min": age.min(),
        "age_max": age.max(),
        "n_female": int((sub["sex"] == "F").sum()),
        "n_male": int((sub["sex"] == "M").sum()),
    }


# --------------------------------------------------------------------------- Table 2
def table2_accuracy(
    predictions: Mapping[str, pd.DataFrame],
    models: Mapping[str, Mapping[str, Any]],
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
    older_than: float = 60.0,
) -> Table:
    """Accuracy of every model on the HC test split, the >``older_than`` subgroup, paired tests.

    Each model is compared with the most accurate one (lowest test MAE) by a two-sided paired
    t-test on absolute errors; ``*`` marks p < alpha (uncorrected, as in the study) and the
    Holm-corrected p over all comparisons is given beside it.
    """
    names = [m for m in models if m in predictions] + [m for m in predictions if m not in models]
    if not names:
        raise InputError("table 2: no predictions given")
    rows = [_accuracy_row(name, models.get(name, {}), predictions[name], n_resamples, seed, older_than) for name in names]
    data = pd.DataFrame(rows)
    best = data.loc[data["mae"].idxmin(), "model"] if data["mae"].notna().any() else names[0]
    best_test = stats.healthy_test(predictions[best])
    tests = {n: stats.paired_error_test(stats.healthy_test(predictions[n]), best_test) for n in names if n != best}
    data["compared_with"] = best
    data["t_vs_best"] = [tests[n].statistic if n in tests else math.nan for n in names]
    data["p_vs_best"] = [tests[n].pvalue if n in tests else math.nan for n in names]
    data["p_holm"] = stats.holm(data["p_vs_best"].to_numpy())
    o = f"{older_than:g}"
    display = pd.DataFrame(
        {
            "Model": data["model"],
            "Backbone": data["backbone"],
            "Loss": data["loss"],
            "Grid (mm)": data["grid_mm"].map(lambda g: fmt(g, 0) if np.isfinite(g) and float(g).is_integer() else fmt(g, 1)),
            "Batch": data["batch_size"].map(lambda b: fmt(b, 0)),
            "N": data["n_test"],
            "MAE (years)": [
                fmt_pm(m, s) + mark(p, alpha) for m, s, p in zip(data["mae"], data["mae_sd"], data["p_vs_best"])
            ],
            "MAE 95% CI": [fmt_ci(c) for c in zip(data["mae_ci_low"], data["mae_ci_high"])],
            "R2": data["r2"].map(fmt),
            "R2 95% CI": [fmt_ci(c) for c in zip(data["r2_ci_low"], data["r2_ci_high"])],
            "BAG (years)": [fmt_pm(m, s, signed=True) for m, s in zip(data["bag_mean"], data["bag_sd"])],
            f"p vs {best}": data["p_vs_best"].map(fmt_p),
            "p (Holm)": data["p_holm"].map(fmt_p),
            f"N >{o}": data[f"n_over{o}"],
            f"MAE >{o} (years)": [fmt_pm(m, s) for m, s in zip(data[f"mae_over{o}"], data[f"mae_sd_over{o}"])],
            f"R2 >{o}": data[f"r2_over{o}"].map(fmt),
        }
    )
    interval_columns, interval_notes = _interval_columns(data)
    display = display.assign(**interval_columns)
    cv_notes = [n for n in (cv.pooled_note(predictions[m]) for m in names) if n]
    if cv_notes:
        at = display.columns.get_loc("MAE 95% CI") + 1
        display.insert(at, "MAE folds (years)", [fmt_pm(m, s) for m, s in zip(data["mae_folds_mean"], data["mae_folds_sd"])])
        display.insert(at + 1, "R2 folds", [fmt_pm(m, s) for m, s in zip(data["r2_folds_mean"], data["r2_folds_sd"])])
        cv_notes = [cv_notes[0] + " MAE and R2 are pooled over all healthy subjects; "
                    "'folds' columns: mean \u00b1 SD of each fold's MAE and R2."]
    notes = [
        *cv_notes,
        "Healthy test split; MAE \u00b1 SD of the absolute errors; R2 = 1 - SS_res/SS_tot; BAG = predicted - chronological age.",
        f"* p < {alpha:g}, two-sided paired t-test on absolute errors against {best} (lowest test MAE); "
        "p (Holm): Holm-corrected over the comparisons.",
        f"95% CI: BCa bootstrap over subjects, {n_resamples} resamples, seed {seed}.",
        f"Columns >{o}: healthy test subjects older than {o} years (the disease cohorts' age range).",
        *interval_notes,
    ]
    return Table("Table 2. Accuracy of every model on the healthy test split", data, display, notes)


def _accuracy_row(
    name: str, spec: Mapping[str, Any], pred: pd.DataFrame, n_resamples: int, seed: int, older_than: float
) -> dict[str, Any]:
    """Table 2's numbers of one model: its settings, its accuracy on the HC test split and on the
    test subjects older than ``older_than``, and its cross-validation folds' summary."""
    test = stats.healthy_test(pred)
    older = stats.healthy_test(pred, older_than)
    acc = stats.accuracy(test, n_resamples, seed)
    acc_old = stats.accuracy(older, n_resamples, seed)
    interval = stats.interval_summary(test)
    young, old, n_edge = stats.edge_bias(test, EDGE_SHARE)
    return {
        "model": name,
        "backbone": spec.get("backbone", "n/a"),
        "loss": spec.get("loss", "n/a"),
        "grid_mm": spec.get("grid", math.nan),
        "batch_size": spec.get("batch_size", math.nan),
        "augment": _augment_label(spec.get("augment", spec.get("augmentation", "n/a"))),
        "n_test": acc.n,
        "mae": acc.mae,
        "mae_sd": acc.mae_sd,
        "mae_ci_low": acc.mae_ci[0],
        "mae_ci_high": acc.mae_ci[1],
        "r2": acc.r2,
        "r2_ci_low": acc.r2_ci[0],
        "r2_ci_high": acc.r2_ci[1],
        "bag_mean": acc.bag_mean,
        "bag_sd": acc.bag_sd,
        f"n_over{older_than:g}": acc_old.n,
        f"mae_over{older_than:g}": acc_old.mae,
        f"mae_sd_over{older_than:g}": acc_old.mae_sd,
        f"r2_over{older_than:g}": acc_old.r2,
        **cv.fold_summary(pred),
        "interval_level": pred.attrs.get("interval_level", math.nan),
        "interval_coverage": interval.coverage,
        "interval_width_median": interval.width_median,
        "bag_youngest": young,
        "bag_oldest": old,
        "n_edge": n_edge,
    }


#: the share of healthy test subjects at each end of the age range for the edge bias
EDGE_SHARE = 0.1


def _interval_columns(data: pd.DataFrame) -> tuple[dict[str, list[str]], list[str]]:
    """Table 2's display columns of the prediction intervals and the edge bias, and their notes
    (``n/a`` for a table without interval columns)."""
    levels = sorted({float(v) for v in data["interval_level"] if np.isfinite(v)})
    level = f"{100 * levels[0]:g} % PI" if len(levels) == 1 else "PI"
    share = f"{100 * EDGE_SHARE:g} %"

    def width(w: float) -> str:
        return "unbounded" if w == math.inf else fmt(w)

    def signed(b: float) -> str:
        return f"{b:+.2f}" if np.isfinite(b) else "n/a"

    columns = {
        f"Coverage ({level})": data["interval_coverage"].map(fmt).tolist(),
        "PI width, median (years)": data["interval_width_median"].map(width).tolist(),
        f"BAG youngest {share} (years)": data["bag_youngest"].map(signed).tolist(),
        f"BAG oldest {share} (years)": data["bag_oldest"].map(signed).tolist(),
    }
    stated = ", ".join(f"{m} {100 * v:g} %" for m, v in zip(data["model"], data["interval_level"]) if np.isfinite(v))
    notes = [
        "Coverage: share of the healthy test subjects whose age lies inside their split-conformal prediction "
        "interval (predicted_age_lower, predicted_age_upper; calibrated on validation residuals, or on the other "
        "folds' out-of-fold residuals under cross-validation), to compare with the interval's level"
        + (f" ({stated})" if len(levels) > 1 else "") + "; PI width: median of upper - lower; 'unbounded': too few "
        "calibration subjects for the level; n/a: a predictions table without intervals.",
        f"BAG youngest/oldest {share}: mean BAG of the youngest and of the oldest {share} of the healthy test "
        "subjects by chronological age (at least one each); a positive young and negative old end is the "
        "regression-to-the-mean bias of brain-age models.",
    ]
    return columns, notes
