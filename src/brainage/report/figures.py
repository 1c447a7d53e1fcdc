"""Shared plotting helpers and the accuracy figures: age distribution (Fig. 1), batch-size sweep
(Fig. 3), predicted vs chronological age, training curves.

Every figure is written as a PNG at print resolution (300 dpi) plus a vector copy (SVG or PDF,
chosen by the output names) through :func:`brainage.core.io.save_figure` (atomic, no time stamps).
Each model keeps one colour in every figure: :func:`model_colours` assigns colours in the order
of the config's ``models:`` block, so adding a model never recolours the others. The Grad-RAM
group maps (Figs. 4, 5, 7) are drawn by :mod:`brainage.report.figures_saliency`, the BAG violins
(Fig. 6) and the gap recovery by :mod:`brainage.report.figures_gap`, both with the backend,
style and helpers set here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from brainage.report import stats  # noqa: E402
from brainage.core.io import save_figure  # noqa: E402

DPI = 300
COHORT_COLOURS = {"HC": "#4c72b0", "AD": "#c44e52", "PD": "#55a868"}
COHORT_MARKERS = {"HC": "o", "AD": "^", "PD": "s"}

plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "svg.hashsalt": "brainage"})


def model_colours(models: Sequence[str]) -> dict[str, str]:
    """One colour per model, in config order (tab10 up to 10 models, tab20 beyond)."""
    cmap = plt.get_cmap("tab10" if len(models) <= 10 else "tab20")
    return {name: matplotlib.colors.to_hex(cmap(i % cmap.N)) for i, name in enumerate(models)}


def save(fig: plt.Figure, paths: Sequence[str | Path]) -> None:
    """Write ``fig`` to every path (PNG at 300 dpi, SVG/PDF vector) and close it."""
    for path in paths:
        save_figure(fig, path, dpi=DPI)
    plt.close(fig)


def note_figure(title: str, line: str, paths: Sequence[str | Path]) -> None:
    """A figure that has nothing to draw: its title and one line saying what is absent."""
    fig = plt.figure(figsize=(6.6, 1.2))
    fig.text(0.5, 0.7, title, ha="center", va="center", fontsize=10)
    fig.text(0.5, 0.3, line, ha="center", va="center", fontsize=9)
    save(fig, paths)


# --------------------------------------------------------------------------- Figure 1
def fig1_age_distribution(participants: pd.DataFrame, paths: Sequence[str | Path], bin_years: float = 5.0) -> None:
    """Relative age distribution (% of each group per age bin) per dataset and cohort."""
    groups = list(participants.groupby(["dataset", "cohort"], sort=False))
    order = {"HC": 0, "AD": 1, "PD": 2}
    groups.sort(key=lambda g: (order.get(g[0][1], 9), str(g[0][0])))
    lo = 5 * math.floor(participants["age"].min() / 5)
    hi = 5 * math.ceil(participants["age"].max() / 5 + 1e-9)
    bins = np.arange(lo, hi + bin_years, bin_years)
    fig, axes = plt.subplots(len(groups), 1, figsize=(4.5, 0.9 * len(groups) + 0.8), sharex=True, squeeze=False)
    for ax, ((dataset, cohort), sub) in zip(axes[:, 0], groups):
        weights = np.full(len(sub), 100.0 / len(sub))
        ax.hist(sub["age"], bins=bins, weights=weights, color=COHORT_COLOURS.get(cohort, "grey"), edgecolor="white", linewidth=0.5)
        ax.text(0.01, 0.9, f"{dataset} {cohort} (N = {len(sub)})", transform=ax.transAxes, va="top", fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_ylabel("%")
    axes[-1, 0].set_xlabel("Age (years)")
    axes[0, 0].set_title("Age distribution per dataset (% of each group)")
    fig.tight_layout(h_pad=0.3)
    save(fig, paths)


# --------------------------------------------------------------------------- Figure 3
def fig3_batch_size(
    predictions: Mapping[str, pd.DataFrame],
    models: Mapping[str, Mapping],
    paths: Sequence[str | Path],
    n_resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Test MAE (95 % bootstrap CI) of the RNC models against their batch size, one line per grid.

    The sweep is every group of RNC models that differ only in batch size and grid
    (:func:`brainage.report.stats.model_roles`). Returns the plotted numbers.
    """
    roles = stats.model_roles(models)
    rows = []
    for k, group in enumerate(roles.sweeps):
        for name in group:
            if name not in predictions:
                continue
            acc = stats.accuracy(stats.healthy_test(predictions[name]), n_resamples, seed)
            spec = models[name]
            rows.append({"sweep": k, "model": name, "backbone": spec.get("backbone", "?"), "grid": float(spec.get("grid", math.nan)),
                         "batch_size": int(spec["batch_size"]), "mae": acc.mae, "ci_low": acc.mae_ci[0], "ci_high": acc.mae_ci[1]})
    data = pd.DataFrame(rows, columns=["sweep", "model", "backbone", "grid", "batch_size", "mae", "ci_low", "ci_high"])
    # one line per (sweep, grid), its points in batch-size order whatever the config order
    data = data.sort_values(["sweep", "grid", "batch_size"], kind="stable").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    lines = list(data.groupby(["sweep", "grid"], sort=True))
    cmap = plt.get_cmap("viridis")
    for i, ((sweep, grid), sub) in enumerate(lines):
        sub = sub.sort_values("batch_size")
        colour = cmap(0.15 + 0.7 * i / max(1, len(lines) - 1))
        err = np.vstack([sub["mae"] - sub["ci_low"], sub["ci_high"] - sub["mae"]])
        err = np.where(np.isfinite(err), err, 0.0)
        label = f"{sub['backbone'].iloc[0]}, {grid:g} mm grid"
        ax.errorbar(sub["batch_size"], sub["mae"], yerr=err, marker="o", capsize=3, color=colour, label=label)
    if data.empty:
        ax.text(0.5, 0.5, "no batch-size sweep in config models", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.set_xticks(sorted(data["batch_size"].unique()))
        ax.legend(frameon=False)
    ax.set_xlabel("RNC batch size (subjects)")
    ax.set_ylabel("Test MAE (years), bars: 95 % CI")
    ax.set_title("RNC: accuracy against batch size")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    save(fig, paths)
    return data


# --------------------------------------------------------------------------- predicted vs age
def square_panel(ax: plt.Axes, title: str, colour: str, lo: float, hi: float) -> None:
    """One model's panel of a predicted-against-truth grid: title, equal square limits."""
    ax.set_title(title, color=colour)
    ax.set_xlim(lo, hi), ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.spines[["top", "right"]].set_visible(False)


def _label_panels(axes: np.ndarray, used: int, xlabel: str, ylabel: str) -> None:
    """Hide the unused panels of a grid, label its outer axes, and put the legend in the first."""
    for ax in axes.flat[used:]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    axes.flat[0].legend(loc="lower right", frameon=False, fontsize=7, markerscale=1.5)


def fig_pred_vs_age(
    predictions: Mapping[str, pd.DataFrame],
    colours: Mapping[str, str],
    paths: Sequence[str | Path],
) -> None:
    """Predicted against chronological age per model: HC test, AD, PD; identity line; MAE, R2;
    the prediction intervals (:func:`_draw_intervals`), their level in the legend."""
    names = list(predictions)
    ncols = min(4, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.6 * nrows + 0.3), squeeze=False, sharex=True, sharey=True)
    all_ages = pd.concat([p[["age", "predicted_age"]] for p in predictions.values()])
    lo = 5 * math.floor(min(all_ages.min()) / 5)
    hi = 5 * math.ceil(max(all_ages.max()) / 5)
    absent = stats.absent_cohorts(list(predictions.values()))
    for ax, name in zip(axes.flat, names):
        pred = predictions[name]
        cohorts = ["HC"] + [c for c in stats.SEVERITY if c not in absent]
        interval_line = _draw_intervals(ax, pred, cohorts, colours.get(name, "grey"), lo, hi)
        for cohort in cohorts:
            sub = stats.healthy_test(pred) if cohort == "HC" else stats.disease_group(pred, cohort)
            # HC filled in the model's colour; patients hollow in the cohort colour (never confused
            # with a model colour of the same hue: the marker shape and fill differ)
            style = (dict(color=colours.get(name, "grey"), linewidths=0) if cohort == "HC"
                     else dict(facecolors="none", edgecolors=COHORT_COLOURS[cohort], linewidths=0.7))
            ax.scatter(sub["age"], sub["predicted_age"], s=10, marker=COHORT_MARKERS[cohort], alpha=0.8,
                       label="HC test" if cohort == "HC" else cohort, **style)
        ax.plot([lo, hi], [lo, hi], color="black", linestyle="--", linewidth=0.8)
        test = stats.healthy_test(pred)
        if len(test):
            mae, sd = stats.mean_absolute_error(test["age"], test["predicted_age"])
            r2 = stats.r_squared(test["age"], test["predicted_age"])
            lines = [f"HC: MAE {mae:.2f} \u00b1 {sd:.2f} y", f"R$^2$ {r2:.2f}", *([interval_line] if interval_line else [])]
            ax.text(0.03, 0.97, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=7)
        square_panel(ax, name, colours.get(name, "black"), lo, hi)
    _label_panels(axes, len(names), "Chronological age (years)", "Predicted brain age (years)")
    if absent:
        fig.suptitle(f"{stats.absent_line(absent)}: healthy test subjects only", fontsize=8)
    fig.tight_layout()
    save(fig, paths)


def _draw_intervals(ax: plt.Axes, pred: pd.DataFrame, cohorts: Sequence[str], colour: str, lo: float, hi: float) -> str:
    """The prediction intervals of one panel, and the line that states them ('' for a table without
    them): a band of +- the healthy subjects' median half-width around the identity line (with one
    width for all, a prediction outside it is exactly a subject whose age its interval misses), and,
    where the widths differ (predicted-age bins, cross-validation folds), a light bar per subject."""
    if not {stats.LOWER, stats.UPPER} <= set(pred.columns):
        return ""
    level = pred.attrs.get("interval_level")
    name = f"{100 * level:g} % PI" if level else "PI"
    half_widths = (pred[stats.UPPER] - pred[stats.LOWER]).to_numpy(float) / 2
    hc = stats.healthy_test(pred)
    rows = (hc if len(hc) else pred)[[stats.LOWER, stats.UPPER]].to_numpy(float)
    if not len(rows) or np.isnan(rows).all():
        return ""
    half = float(np.nanmedian(rows[:, 1] - rows[:, 0]) / 2)
    if not np.isfinite(half):
        return f"{name} unbounded (n too small)"
    ax.fill_between([lo, hi], [lo - half, hi - half], [lo + half, hi + half], color=colour, alpha=0.13, linewidth=0,
                    label=f"{name} (HC median)", zorder=0)
    if np.nanmax(half_widths) - np.nanmin(half_widths) > 0.01 * half:
        for cohort in cohorts:
            sub = stats.healthy_test(pred) if cohort == "HC" else stats.disease_group(pred, cohort)
            sub = sub[np.isfinite(sub[stats.LOWER]) & np.isfinite(sub[stats.UPPER])]
            ax.vlines(sub["age"], sub[stats.LOWER], sub[stats.UPPER], linewidth=0.6, alpha=0.3, zorder=1,
                      color=colour if cohort == "HC" else COHORT_COLOURS[cohort])
    return f"{name} \u00b1{half:.1f} y"


# --------------------------------------------------------------------------- training curves
def fig_training_curves(logs: Mapping[str, str | Path], colours: Mapping[str, str], paths: Sequence[str | Path]) -> None:
    """Per model, from results/models/<name>/train_log.tsv (phase, epoch, train_loss, val_mae, ...):
    the training loss of the first phase (end-to-end L1, or the RNC encoder; log scale, as the
    two losses differ in units) and the validation MAE of the phase that predicts age
    (end-to-end, or the RNC linear head)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    for name, path in logs.items():
        log = pd.read_csv(path, sep="\t", na_values=["n/a", "NA", ""])
        colour = colours.get(name, "grey")
        if "epoch" not in log:
            log["epoch"] = np.arange(1, len(log) + 1)
        phases = list(dict.fromkeys(log["phase"])) if "phase" in log else [None]
        first = log[log["phase"] == phases[0]] if phases[0] is not None else log
        loss = pd.to_numeric(first.get("train_loss", pd.Series(dtype=float)), errors="coerce")
        left.plot(first["epoch"], loss.where(loss > 0), color=colour, label=f"{name} ({phases[0] or 'train'})")
        val = pd.to_numeric(log.get("val_mae", pd.Series(np.nan, index=log.index)), errors="coerce")
        has_val = log[val.notna()]
        if len(has_val):
            phase = has_val["phase"].iloc[-1] if "phase" in log else None
            rows = has_val[has_val["phase"] == phase] if phase is not None else has_val
            right.plot(rows["epoch"], val[rows.index], color=colour, marker=".", markersize=3,
                       label=f"{name} ({phase})" if phase is not None and phase != phases[0] else name)
    left.set_yscale("log")
    left.set_xlabel("Epoch")
    left.set_ylabel("Training loss (L1: years; RNC: unitless)")
    right.set_xlabel("Epoch (of the phase that predicts age)")
    right.set_ylabel("Validation MAE (years)")
    left.set_title("Training loss")
    right.set_title("Validation MAE")
    for ax in (left, right):
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(frameon=False, fontsize=6)
    fig.tight_layout()
    save(fig, paths)


def copy_figure(source: str | Path, target: str | Path) -> None:
    """Copy a figure made by another stage (e.g. the QC montage) into the report, atomically."""
    from brainage.core.io import atomic_path

    with atomic_path(target) as tmp:
        tmp.write_bytes(Path(source).read_bytes())
