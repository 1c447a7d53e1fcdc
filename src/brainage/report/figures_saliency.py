"""The saliency figures: group-mean maps (config ``explain.method``; the study: Grad-RAM) of the
best model of a role on the template, by age group (Figs. 4, 5) and in AD and PD beside their
difference from age-matched controls (Fig. 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import matplotlib
import nibabel as nib
import numpy as np

from brainage.report import stats
# before pyplot: brainage.report.figures selects the Agg backend and sets the figures' style
from brainage.report.figures import note_figure, save

import matplotlib.pyplot as plt  # noqa: E402

#: MNI coordinates (mm) of the slices shown in saliency figures: through hippocampus and ventricles
CUT_COORDS = (-26.0, -20.0, 6.0)


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
