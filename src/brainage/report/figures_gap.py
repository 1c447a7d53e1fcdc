"""The brain-age gap figures: BAG violins by cohort and model (Fig. 6), and on simulated cohorts
the predicted against the simulator's true brain-age gap."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from brainage.data import cv

from brainage.report import stats
# before pyplot: brainage.report.figures selects the Agg backend and sets the figures' style
from brainage.report.figures import COHORT_COLOURS, COHORT_MARKERS, save, square_panel

import matplotlib.pyplot as plt  # noqa: E402


# --------------------------------------------------------------------------- Figure 6
def fig6_bag_violin(
    predictions: Mapping[str, pd.DataFrame],
    chosen: Mapping[str, str],
    colours: Mapping[str, str],
    paths: Sequence[str | Path],
) -> list[str]:
    """Brain-age gap by cohort (HC test, AD, PD) and model: violins, points, means, 0 line.

    When a shown model's predictions hold the age-bias-corrected BAG (``bag_corrected``), a
    second panel on the same y scale shows it; the raw BAG panel stays first (the study's
    measure). Returns the BAG columns drawn, one panel each.
    """
    names = list(dict.fromkeys(chosen.values()))
    columns = ["bag"]
    if any(stats.has_corrected_gap(predictions[n]) for n in names):
        columns.append(stats.CORRECTED_BAG)
    absent = stats.absent_cohorts([predictions[n] for n in names])
    cohorts = ["HC"] + [c for c in stats.SEVERITY if c not in absent]
    width = 0.8 / max(1, len(names))
    panel_width = 1.6 + 1.5 * len(cohorts) * max(1, len(names)) / 2
    # the corrected panel goes below the raw one, same axes, so the shift of each violin reads directly
    fig, axes = plt.subplots(len(columns), 1, figsize=(panel_width, 3.6 + 3.0 * (len(columns) - 1)), sharex=True, sharey=True,
                             squeeze=False)
    axes = axes.T
    titles = {"bag": "Brain-age gap (predicted - chronological age)",
              stats.CORRECTED_BAG: "Brain-age gap, age-bias corrected (fit on healthy validation subjects)"}
    for ax, column in zip(axes[0], columns):
        _bag_violins(ax, predictions, names, colours, column, cohorts, width)
        ax.set_title(titles[column] + (f"\n{stats.absent_line(absent)}" if absent else ""), fontsize=9 if absent else None)
    axes[0, 0].set_ylabel("Brain-age gap (years)")
    if len(columns) > 1:
        axes[0, 1].set_ylabel("Corrected brain-age gap (years)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours.get(n, "grey"), alpha=0.6) for n in names]
    labels = [f"{n} ({role})" for role, n in chosen.items()]
    # outside the axes, right: inside, it covered the top of the first violins
    axes[0, 0].legend(handles, labels[: len(handles)], frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    fig.tight_layout()
    save(fig, paths)
    return columns


def _bag_violins(ax: plt.Axes, predictions: Mapping[str, pd.DataFrame], names: Sequence[str], colours: Mapping[str, str],
                 column: str, cohorts: Sequence[str], width: float) -> None:
    """One violin per (cohort, model) of BAG ``column``; a model without the column leaves a gap."""
    rng = np.random.default_rng(0)  # jitter only; fixed so reruns are byte-identical
    for m, name in enumerate(names):
        pred = predictions[name]
        for c, cohort in enumerate(cohorts):
            sub = stats.healthy_test(pred) if cohort == "HC" else stats.disease_group(pred, cohort)
            bag = pd.to_numeric(sub[column], errors="coerce").to_numpy(dtype=float) if column in sub else np.array([])
            bag = bag[np.isfinite(bag)]
            if len(bag) == 0:
                continue
            x = c + (m - (len(names) - 1) / 2) * width
            if len(bag) > 1 and np.ptp(bag) > 0:
                parts = ax.violinplot(bag, positions=[x], widths=width * 0.9, showextrema=False)
                for body in parts["bodies"]:
                    body.set_facecolor(colours.get(name, "grey"))
                    body.set_edgecolor("black")
                    body.set_linewidth(0.5)
                    body.set_alpha(0.55)
            ax.scatter(x + rng.uniform(-width * 0.15, width * 0.15, len(bag)), bag, s=4, color="black", alpha=0.5, linewidths=0)
            ax.plot([x - width * 0.3, x + width * 0.3], [bag.mean()] * 2, color="black", linewidth=1.5)
    ax.axhline(0, color="grey", linestyle="--", linewidth=0.8)
    ns = []
    for cohort in cohorts:
        first = predictions[names[0]] if names else pd.DataFrame(columns=["cohort", "split"])
        sub = stats.healthy_test(first) if cohort == "HC" else stats.disease_group(first, cohort)
        hc = "HC (out-of-fold)" if cv.has_folds(first) else "HC (test)"
        ns.append(f"{hc if cohort == 'HC' else cohort}\nN = {len(sub)}")
    ax.set_xticks(range(len(cohorts)), ns)
    ax.spines[["top", "right"]].set_visible(False)


# --------------------------------------------------------------------------- gap recovery
def fig_gap_recovery(predictions: Mapping[str, pd.DataFrame], colours: Mapping[str, str],
                     paths: Sequence[str | Path]) -> dict[str, pd.DataFrame]:
    """Simulated cohorts: predicted against the simulator's true BAG per model, HC test, AD and
    PD; identity line; r per group. When a model's predictions hold the age-bias-corrected BAG
    (infer.bias_correction), a second block of panels below shows it on the same axes. Returns
    the points drawn per model (group, true_bag, bag and, when drawn, bag_corrected)."""
    names = list(predictions)
    kinds = [("bag", "Predicted BAG (years)")]
    if any(stats.has_corrected_gap(p) for p in predictions.values()):
        kinds.append((stats.CORRECTED_BAG, "Predicted BAG, age-bias\ncorrected (years)"))
    ncols = min(4, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows * len(kinds), ncols, figsize=(2.8 * ncols, 2.8 * nrows * len(kinds) + 0.3),
                             squeeze=False, sharex=True, sharey=True)
    columns = [k for k, _ in kinds]
    values = pd.concat([p[["true_bag"] + [c for c in columns if c in p]] for p in predictions.values()])
    values = values.apply(pd.to_numeric, errors="coerce").to_numpy(float)
    lim = 5 * math.ceil(np.nanmax(np.abs(values)) / 5) if np.isfinite(values).any() else 10
    drawn: dict[str, pd.DataFrame] = {}
    for k, (column, ylabel) in enumerate(kinds):
        block = axes[k * nrows:(k + 1) * nrows]
        for ax, name in zip(block.flat, names):
            pred = predictions[name]
            if column not in pred:  # a model predicted without the correction
                ax.text(0.5, 0.5, "no age-bias\ncorrection", transform=ax.transAxes, ha="center", va="center", fontsize=8)
                square_panel(ax, name, colours.get(name, "black"), -lim, lim)
                continue
            points, text = [], []
            for label, group in stats.gap_groups(pred):
                cohort = "HC" if label.startswith("HC") else label
                style = (dict(color=colours.get(name, "grey"), linewidths=0) if cohort == "HC"
                         else dict(facecolors="none", edgecolors=COHORT_COLOURS[cohort], linewidths=0.7))
                predicted = pd.to_numeric(group[column], errors="coerce")
                ax.scatter(group["true_bag"], predicted, s=10, marker=COHORT_MARKERS[cohort], alpha=0.8, label=label, **style)
                points.append(pd.DataFrame({"group": label, "true_bag": group["true_bag"], column: predicted}))
                g = stats.gap_recovery(group["true_bag"], predicted)
                if g.n:
                    text.append(f"{label}: r {g.r:.2f}" if np.isfinite(g.r) else f"{label}: n {g.n}")
            ax.plot([-lim, lim], [-lim, lim], color="black", linestyle="--", linewidth=0.8)
            ax.axhline(0, color="grey", linewidth=0.5), ax.axvline(0, color="grey", linewidth=0.5)
            ax.text(0.03, 0.97, "\n".join(text), transform=ax.transAxes, va="top", fontsize=7)
            square_panel(ax, name if k == 0 else f"{name} (corrected)", colours.get(name, "black"), -lim, lim)
            frame = pd.concat(points, ignore_index=True) if points else pd.DataFrame(columns=["group", "true_bag", column])
            drawn[name] = frame if k == 0 else drawn[name].assign(**{column: frame[column].to_numpy()})
        for ax in block.flat[len(names):]:
            ax.set_visible(False)
        for ax in block[:, 0]:
            ax.set_ylabel(ylabel)
    for ax in axes[-1]:
        ax.set_xlabel("True BAG (years, simulator)")
    axes.flat[0].legend(loc="lower right", frameon=False, fontsize=7, markerscale=1.5)
    fig.tight_layout(w_pad=1.5)  # the panels' end ticks (-lim, lim) would touch
    save(fig, paths)
    return drawn
