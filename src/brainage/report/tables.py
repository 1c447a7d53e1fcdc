"""The study's Tables 1-4 and the comparison sheet with its published figures.

Each table is written three ways: a TSV with plain numbers (machine-readable, one value per
column), a Markdown rendering and an HTML rendering (``mean +- SD`` cells, marks, notes) for
people and for the Snakemake report. Statistics come from :mod:`brainage.report.stats`; which model is
"best end-to-end", "RNC" or "SFCN" comes from the config via :func:`brainage.report.stats.model_roles`.
"""

from __future__ import annotations

import html
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

#: the study's published results (../shared/DESIGN.md), different subjects from any run here
PUBLISHED = {
    "rnc_highrez": {"label": "RNC-highRez (ResNet18, RNC, 1 mm)", "mae": 4.27, "mae_sd": 3.32, "r2": 0.93},
    "e2e_highrez": {"label": "ResNet50-highRez (end-to-end L1, 1 mm)", "mae": 4.92, "mae_sd": 3.96, "r2": 0.90},
    "ad_bag": {"label": "AD mean BAG, RNC model (years)", "value": 2.12},
    "ad_r": {"label": "Pearson r, AD BAG vs ADAS-Cog-11", "value": 0.37},
}


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
        return _HTML.format(title=html.escape(self.title), table=table, notes=f"<ul>{notes}</ul>" if notes else "")


_HTML = """<!DOCTYPE html>
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
    """Prediction tables keyed by model name (the file stem of results/predictions/<model>.tsv)."""
    return {Path(p).stem: stats.read_predictions(p) for p in paths}


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
    rows = []
    for name in names:
        spec = models.get(name, {})
        test = stats.healthy_test(predictions[name])
        older = stats.healthy_test(predictions[name], older_than)
        acc = stats.accuracy(test, n_resamples, seed)
        acc_old = stats.accuracy(older, n_resamples, seed)
        rows.append(
            {
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
                **cv.fold_summary(predictions[name]),
            }
        )
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
    cv_notes = [n for n in (cv.pooled_note(predictions[m]) for m in names) if n]
    if cv_notes:
        at = display.columns.get_loc("MAE 95% CI") + 1
        display.insert(at, "MAE folds (years)", [fmt_pm(m, s) for m, s in zip(data["mae_folds_mean"], data["mae_folds_sd"])])
        display.insert(at + 1, "R2 folds", [fmt_pm(m, s) for m, s in zip(data["r2_folds_mean"], data["r2_folds_sd"])])
        cv_notes = [cv_notes[0] + " MAE and R2 are pooled over all healthy subjects; "
                    "'folds' columns: mean \u00b1 SD of each fold's MAE and R2."]
    notes = [
        *cv_notes,
        f"Healthy test split; MAE \u00b1 SD of the absolute errors; R2 = 1 - SS_res/SS_tot; BAG = predicted - chronological age.",
        f"* p < {alpha:g}, two-sided paired t-test on absolute errors against {best} (lowest test MAE); "
        "p (Holm): Holm-corrected over the comparisons.",
        f"95% CI: BCa bootstrap over subjects, {n_resamples} resamples, seed {seed}.",
        f"Columns >{o}: healthy test subjects older than {o} years (the disease cohorts' age range).",
    ]
    return Table("Table 2. Accuracy of every model on the healthy test split", data, display, notes)


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
            acc = stats.accuracy(group, n_resamples, seed)
            scores = group[score].astype(float) if score in group else pd.Series(np.nan, index=group.index)
            corr = stats.severity_correlation(group["bag"], scores)
            rows.append(
                {
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
            )
            rows[-1]["r_ci_low"], rows[-1]["r_ci_high"] = stats.correlation_ci(group["bag"], scores, n_resamples, seed)
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


# --------------------------------------------------------------------------- comparison sheet
def study_comparison(
    predictions: Mapping[str, pd.DataFrame],
    models: Mapping[str, Mapping[str, Any]],
    val_mae: Mapping[str, float],
    cohort_label: str,
) -> str:
    """Markdown sheet: the study's published numbers beside this run's, labelled as different data."""
    chosen, selection = headline_models(models, val_mae)
    rnc, e2e = chosen.get("RNC"), chosen.get("best end-to-end")

    def acc(name: str | None) -> stats.Accuracy | None:
        return stats.accuracy(stats.healthy_test(predictions[name]), 0) if name in predictions else None

    def describe(name: str | None) -> str:
        if name is None:
            return "not configured"
        spec = models.get(name, {})
        return f"{name} ({spec.get('backbone', '?')}, {spec.get('loss', '?')}, {spec.get('grid', '?')} mm)"

    rows = []
    for key, name in (("rnc_highrez", rnc), ("e2e_highrez", e2e)):
        pub, a = PUBLISHED[key], acc(name)
        rows.append(
            {
                "Quantity": "HC test MAE (years) / R2",
                "Published (study)": f"{pub['label']}: {fmt_pm(pub['mae'], pub['mae_sd'])} / {pub['r2']:.2f}",
                "This run": f"{describe(name)}: " + (f"{fmt_pm(a.mae, a.mae_sd)} / {fmt(a.r2)}" if a else "n/a"),
            }
        )
    ad_bag, ad_r = "n/a", "n/a"
    if "AD" in stats.absent_cohorts(list(predictions.values())):
        ad_bag = ad_r = f"{stats.absent_line(['AD'])}"
    elif rnc in predictions:
        ad = stats.disease_group(predictions[rnc], "AD")
        if len(ad):
            bag_mean, bag_sd = stats.gap_summary(ad["bag"])
            test = stats.bag_vs_zero(ad["bag"])
            ad_bag = f"{describe(rnc)}: {fmt_pm(bag_mean, bag_sd, signed=True)} (p = {fmt_p(test.pvalue)}, N = {len(ad)})"
            if "adas_cog11" in ad:
                corr = stats.severity_correlation(ad["bag"], ad["adas_cog11"].astype(float))
                ad_r = f"{describe(rnc)}: r = {fmt(corr.r)} (p = {fmt_p(corr.pvalue)}, N = {corr.n})"
    rows.append({"Quantity": "AD mean BAG (years)", "Published (study)": f"{PUBLISHED['ad_bag']['value']:+.2f} (RNC)", "This run": ad_bag})
    rows.append({"Quantity": "r(AD BAG, ADAS-Cog-11)", "Published (study)": f"{PUBLISHED['ad_r']['value']:.2f} (RNC)", "This run": ad_r})
    lines = [
        "# Study comparison: published figures beside this run",
        "",
        "**Different data.** The published column is copied from the study (Crête, Kersten-Oertel, Xiao: "
        "\"MRI-based brain age estimation with supervised contrastive learning of continuous representation\"), "
        "measured on its own cohorts (IXI, HCP-Aging, OpenNeuro, ADNI, PPMI) at 1 mm. "
        f"This run used: {cohort_label}. The numbers are not a replication and must not be compared "
        "as if the subjects, scanners, grids or training budgets were the same; they show whether this run "
        "reproduces the study's direction of effects (RNC at least as accurate as end-to-end, AD BAG > 0, "
        "positive BAG-ADAS-Cog-11 correlation).",
        "",
        markdown_table(pd.DataFrame(rows)),
        "",
    ]
    lines += [f"- {s}" for s in selection]
    return "\n".join(lines).rstrip() + "\n"


def markdown_to_html(markdown: str, title: str) -> str:
    """A minimal HTML page for the report from a sheet made of paragraphs and one table."""
    body = []
    for block in markdown.strip().split("\n\n"):
        lines = block.splitlines()
        if lines[0].startswith("# "):
            body.append(f"<h3>{html.escape(lines[0][2:])}</h3>")
        elif lines[0].startswith("|"):
            cells = [[c.strip().replace("\\|", "|") for c in line.strip("|").split(" | ")] for line in lines if not line.startswith("|---")]
            head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif lines[0].startswith("- "):
            body.append("<ul>" + "".join(f"<li>{html.escape(l[2:])}</li>" for l in lines) + "</ul>")
        else:
            text = html.escape(" ".join(lines)).replace("**", "")
            body.append(f"<p>{text}</p>")
    return _HTML.format(title=html.escape(title), table="\n".join(body), notes="").replace(f"<h3>{html.escape(title)}</h3>\n", "", 1)
