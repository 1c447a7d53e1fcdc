"""The study's figures: age distribution (Fig. 1), batch-size sweep (Fig. 3), Grad-RAM group maps
(Figs. 4, 5, 7), BAG violins (Fig. 6), predicted vs chronological age, training curves.

Every figure is written as a PNG at print resolution (300 dpi) plus a vector copy (SVG or PDF,
chosen by the output names) through :func:`brainage.core.io.save_figure` (atomic, no time stamps).
Each model keeps one colour in every figure: :func:`model_colours` assigns colours in the order
of the config's ``models:`` block, so adding a model never recolours the others.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from brainage.data import cv

from brainage.report import stats  # noqa: E402
from brainage.core.io import save_figure  # noqa: E402

DPI = 300
COHORT_COLOURS = {"HC": "#4c72b0", "AD": "#c44e52", "PD": "#55a868"}
COHORT_MARKERS = {"HC": "o", "AD": "^", "PD": "s"}
#: MNI coordinates (mm) of the slices shown in saliency figures: through hippocampus and ventricles
CUT_COORDS = (-26.0, -20.0, 6.0)

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


# --------------------------------------------------------------------------- Figures 4, 5, 7
def _slices(volume: np.ndarray, affine: np.ndarray, cut_coords: Sequence[float]) -> list[np.ndarray]:
    """Sagittal, coronal and axial slices through the MNI point ``cut_coords`` (x, y, z in mm).

    Each slice is transposed for ``imshow(origin="lower")``: sagittal (y -> right = anterior,
    z up), coronal (x -> right = the subject's right, neurological view), axial (x right, y up).
    """
    ijk = np.linalg.inv(affine) @ np.array([*cut_coords, 1.0])
    i, j, k = (int(np.clip(round(c), 0, n - 1)) for c, n in zip(ijk[:3], volume.shape))
    return [volume[i, :, :].T, volume[:, j, :].T, volume[:, :, k].T]


def _load_map(path: str | Path | None, shape: tuple[int, ...], signed: bool = False) -> np.ndarray | None:
    """A group map on the template grid, or None when absent or empty (a group without subjects).

    Empty means no finite value above 0 (a mean map) or no finite non-zero value (a signed
    difference map, ``signed``).
    """
    if path is None or not Path(path).exists():
        return None
    data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    if data.shape[:3] != tuple(shape):
        raise ValueError(f"{path}: saliency grid {data.shape} differs from the template {tuple(shape)}")
    data = data.reshape(shape)
    finite = data[np.isfinite(data)]
    if not finite.size or (np.abs(finite).max() == 0 if signed else finite.max() <= 0):
        return None
    return data


def _absent_text(path: str | Path | None, missing: str, empty: str) -> str:
    """What a row without a map says: ``missing`` (no file: a group without subjects) or
    ``empty`` (a file whose map is all zero, e.g. Grad-RAM's ReLU left nothing)."""
    return missing if path is None or not Path(path).exists() else empty


def _draw_row(
    axes: Sequence[plt.Axes],
    tpl_slices: Sequence[np.ndarray],
    sal_slices: Sequence[np.ndarray] | None,
    cmap: str,
    norm: matplotlib.colors.Normalize,
    hidden: Callable[[np.ndarray], np.ndarray],
    empty_text: str,
):
    """Three orthogonal template slices with the saliency slices over them; returns the image."""
    image = None
    height = tpl_slices[0].shape[0]
    for c, (ax, bg) in enumerate(zip(axes, tpl_slices)):
        ax.imshow(bg, cmap="gray", origin="lower", interpolation="nearest")
        if sal_slices is not None:
            sal = sal_slices[c]
            shown = np.ma.masked_where(~(bg > 0) | ~np.isfinite(sal) | hidden(sal), sal)
            image = ax.imshow(shown, cmap=cmap, norm=norm, origin="lower", alpha=0.75, interpolation="nearest")
        else:
            ax.text(0.5, 0.5, empty_text, color="white", ha="center", va="center", fontsize=7, transform=ax.transAxes)
        ax.set_xticks([]), ax.set_yticks([])
        if c == 0:
            ax.set_ylim(0, height - 1)
    axes[1].text(0.02, 0.04, "L", color="white", fontsize=7, transform=axes[1].transAxes)
    axes[1].text(0.94, 0.04, "R", color="white", fontsize=7, transform=axes[1].transAxes)
    return image


def fig_saliency(
    maps: Sequence[tuple[str, str | Path | None]],
    template: str | Path,
    paths: Sequence[str | Path],
    title: str,
    cut_coords: Sequence[float] = CUT_COORDS,
    threshold: float = 0.15,
    differences: Sequence[str | Path | None] | None = None,
    difference_title: str = "Minus age-matched HC",
    method: str = "gradram",
) -> None:
    """Group-mean saliency maps (``method``: brainage.core.paths.SALIENCY_METHODS) on the template: one row
    per map, three orthogonal slices.

    ``maps`` is a list of (row label, NIfTI path); a missing path or an empty/all-NaN map
    (a group without subjects) gives a row saying so. All mean rows share one colour scale so
    that the rows are comparable. With ``differences`` (one signed NIfTI per row, e.g. AD minus
    age-matched HC, or None), three more columns show it beside the mean in a diverging
    colormap centred on 0, symmetric per row (differences are small next to the means and vary
    by orders of magnitude between models, so each row has its own labelled colour bar).
    """
    from brainage.core.paths import SALIENCY_METHOD_LABELS as METHOD_LABELS

    what = METHOD_LABELS[method]
    tpl_img = nib.load(str(template))
    tpl = np.asarray(tpl_img.dataobj, dtype=np.float32)
    loaded = [(label, _load_map(path, tpl.shape)) for label, path in maps]
    diffs = [_load_map(path, tpl.shape, signed=True) for path in differences] if differences is not None else None
    if diffs is not None and len(diffs) != len(loaded):
        raise ValueError(f"{len(diffs)} difference maps for {len(loaded)} rows")
    vmax = max([float(np.nanmax(d)) for _, d in loaded if d is not None] or [1.0])
    tpl_slices = _slices(tpl, tpl_img.affine, cut_coords)
    widths = [s.shape[1] for s in tpl_slices]
    view_names = (f"x = {cut_coords[0]:g} mm", f"y = {cut_coords[1]:g} mm", f"z = {cut_coords[2]:g} mm")
    n = len(loaded)
    fig = plt.figure(figsize=(6.6 if diffs is None else 12.4, 1.75 * n + 0.6), layout="constrained")
    if diffs is None:
        panels = [fig]
    else:
        panels = list(fig.subfigures(1, 2, wspace=0.02, width_ratios=[1.0, 1.05]))
    mean_axes = panels[0].subplots(n, 3, squeeze=False, gridspec_kw={"width_ratios": widths, "wspace": 0.0, "hspace": 0.0})
    norm = matplotlib.colors.Normalize(0.0, vmax)
    image = None
    for r, (label, data) in enumerate(loaded):
        sal = _slices(data, tpl_img.affine, cut_coords) if data is not None else None
        # values below ``threshold`` of the scale stay transparent so the anatomy shows through
        shown = _draw_row(mean_axes[r], tpl_slices, sal, "hot", norm, lambda s: s < threshold * vmax,
                          _absent_text(maps[r][1], "no subjects", f"{what} 0 in every subject"))
        image = shown if shown is not None else image
        mean_axes[r, 0].set_ylabel(label, fontsize=8)
    for c in range(3):
        mean_axes[0, c].set_title(view_names[c], fontsize=8)
    if image is not None:
        cbar = panels[0].colorbar(image, ax=mean_axes, fraction=0.025, pad=0.01)
        cbar.set_label(f"{what}, group mean (normalised)")
    if diffs is not None:
        panels[0].suptitle("Group mean", fontsize=9)
        panels[1].suptitle(difference_title, fontsize=9)
        diff_axes = panels[1].subplots(n, 3, squeeze=False, gridspec_kw={"width_ratios": widths, "wspace": 0.0, "hspace": 0.0})
        for r, data in enumerate(diffs):
            vabs = float(np.nanmax(np.abs(data))) if data is not None else 1.0
            # centred on 0: red = more saliency in patients, blue = more in their matched controls;
            # |difference| below 10 % of the row's scale stays transparent
            dnorm = matplotlib.colors.TwoSlopeNorm(0.0, -vabs, vabs)
            sal = _slices(data, tpl_img.affine, cut_coords) if data is not None else None
            shown = _draw_row(diff_axes[r], tpl_slices, sal, "RdBu_r", dnorm, lambda s, v=vabs: np.abs(s) < 0.1 * v,
                              _absent_text(differences[r], "no difference map", "no difference (all 0)"))
            if shown is not None:
                cbar = panels[1].colorbar(shown, ax=diff_axes[r], fraction=0.04, pad=0.01, ticks=[-vabs, 0.0, vabs], format="%.2g")
                cbar.ax.tick_params(labelsize=6)
        for c in range(3):
            diff_axes[0, c].set_title(view_names[c], fontsize=8)
        diff_axes[-1, 1].set_xlabel(f"Difference of group means (normalised {what}); red: patients > controls", fontsize=7)
    fig.suptitle(title, fontsize=10)
    save(fig, paths)


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


# --------------------------------------------------------------------------- predicted vs age
def _square_panel(ax: plt.Axes, title: str, colour: str, lo: float, hi: float) -> None:
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
    """Predicted against chronological age per model: HC test, AD, PD; identity line; MAE, R2."""
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
        for cohort in ["HC"] + [c for c in stats.SEVERITY if c not in absent]:
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
            ax.text(0.03, 0.97, f"HC: MAE {mae:.2f} \u00b1 {sd:.2f} y\nR$^2$ {stats.r_squared(test['age'], test['predicted_age']):.2f}",
                    transform=ax.transAxes, va="top", fontsize=7)
        _square_panel(ax, name, colours.get(name, "black"), lo, hi)
    _label_panels(axes, len(names), "Chronological age (years)", "Predicted brain age (years)")
    if absent:
        fig.suptitle(f"{stats.absent_line(absent)}: healthy test subjects only", fontsize=8)
    fig.tight_layout()
    save(fig, paths)


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
                _square_panel(ax, name, colours.get(name, "black"), -lim, lim)
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
            _square_panel(ax, name if k == 0 else f"{name} (corrected)", colours.get(name, "black"), -lim, lim)
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


# --------------------------------------------------------------------------- saliency figures
#: rows of Figures 4 and 5 (group id of brainage.apply.explain, row label)
AGE_GROUP_ROWS = (("HC_20-40", "HC 20-40 y"), ("HC_40-60", "HC 40-60 y"), ("HC_60-80", "HC 60-80 y"), ("HC_80plus", "HC 80+ y"))
DISEASE_ROWS = (("AD", "AD"), ("PD", "PD"))
#: Figure 7: the difference map drawn beside each disease group mean (explain stage: the group
#: mean minus the mean of its age-matched healthy controls)
DISEASE_DIFFERENCES = {"AD": "AD-minus-HC", "PD": "PD-minus-HC"}


def group_map_path(groups_dir: str | Path, grid: float, group: str, method: str = "gradram") -> Path:
    """The group-mean saliency NIfTI that the explain stage writes for ``group`` by ``method``."""
    from brainage.core.paths import saliency_file
    from brainage.core.grids import res_label

    return Path(groups_dir) / saliency_file(res_label(grid), group=group, method=method)


def fig_gradram(
    models: Mapping[str, Mapping],
    val_mae: Mapping[str, float],
    groups_dirs: Mapping[str, str | Path],
    templates: Sequence[str | Path],
    paths: Sequence[str | Path],
    roles: Sequence[str],
    rows: Sequence[tuple[str, str]],
    title: str,
    cut_coords: Sequence[float] = CUT_COORDS,
    differences: Mapping[str, str] | None = None,
    method: str = "gradram",
) -> dict[str, str]:
    """Group-mean saliency (``method``, config ``explain.method``) of the best model of each of ``roles`` ("e2e", "rnc"), ``rows`` groups.

    The best model of a role is the one with the lowest validation MAE
    (:func:`brainage.report.stats.select_best`), as in Tables 3-4 and Figure 6. All models shown must
    share one grid (the rows are drawn on one template). ``differences`` maps a row group to a
    signed group map drawn beside it (e.g. :data:`DISEASE_DIFFERENCES`). ``templates``: the
    template files of the models' grids (brainage.data.atlases.resource_paths); the one of the grid
    drawn is used. Returns {role: model}.
    """
    from brainage.data.atlases import resource_paths

    role_sets = stats.model_roles(models)
    chosen = {}
    for role in roles:
        name, _ = stats.select_best(getattr(role_sets, role), val_mae)
        if name is not None:
            chosen[role] = name
    if not chosen:
        raise ValueError(f"no {' or '.join(roles)} model configured")
    grids = {float(models[n]["grid"]) for n in chosen.values()}
    if len(grids) > 1:
        # different grids cannot share the template rows: draw the finest model's grid only
        keep = min(grids)
        chosen = {r: n for r, n in chosen.items() if float(models[n]["grid"]) == keep}
    grid = float(models[next(iter(chosen.values()))]["grid"])
    label_of = {"e2e": "best end-to-end", "rnc": "RNC"}
    maps, diffs, without = [], [], []
    for role, name in chosen.items():
        for group, label in rows:
            path = group_map_path(groups_dirs[name], grid, group, method)
            if not path.exists():  # no subject in this group (e.g. no AD in a healthy cohort): no row
                without.append(label)
                continue
            row_label = f"{label}\n{name}" if len(chosen) > 1 or role != roles[0] else label
            maps.append((row_label, path))
            diff = (differences or {}).get(group)
            diffs.append(group_map_path(groups_dirs[name], grid, diff, method) if diff else None)
    who = ", ".join(f"{label_of.get(r, r)}: {n}" for r, n in chosen.items())
    title = f"{title} ({who}, {grid:g} mm)"
    absent = f"No subjects in this cohort for {', '.join(dict.fromkeys(without))}" if without else ""
    if not maps:
        note_figure(title, absent, paths)
        return chosen
    wanted = resource_paths(".", grid)["template"].name
    template = next((Path(p) for p in templates if Path(p).name == wanted), None)
    if template is None:
        raise ValueError(f"no {grid:g} mm template ({wanted}) among {[str(p) for p in templates]}")
    fig_saliency(maps, template, paths, title + (f"\n{absent}: not drawn" if absent else ""), cut_coords,
                 differences=diffs if differences else None, method=method)
    return chosen


def note_figure(title: str, line: str, paths: Sequence[str | Path]) -> None:
    """A figure that has nothing to draw: its title and one line saying what is absent."""
    fig = plt.figure(figsize=(6.6, 1.2))
    fig.text(0.5, 0.7, title, ha="center", va="center", fontsize=10)
    fig.text(0.5, 0.3, line, ha="center", va="center", fontsize=9)
    save(fig, paths)
