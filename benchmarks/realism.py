"""How real is the simulated cohort? Simulated and real heads through the same measurements.

Two families of measurements, each computed the same way on both cohorts:

Raw scan inside a deepbet brain mask (cheap: no registration) -- the *global-feature probe*.
Nine global features of a head (:func:`global_features`): the mask volume (ml), six intensity
percentiles (5, 10, 25, 75, 90, 95) over the median inside the mask, and two dark-voxel
fractions (share of mask voxels below 0.5 and 0.7 times the median: mostly CSF). A ridge
regression on them, 10-fold cross-validated (:func:`global_feature_probe`), predicts age; its
MAE over the MAE of predicting the training folds' mean age is the probe *ratio*. A ratio far
below the real cohort's means age can be read from the histogram and the mask size of the
simulated heads, a shortcut no real brain offers.

Template space (after the pipeline's preprocessing: deepbet, N4, 12-dof affine, intensities
normalised in the brain) (:func:`template_measures`): the intensity histogram inside the brain,
its tissue peaks (3-class k-means: CSF, GM, WM) and spread, the GM/WM contrast
``(wm - gm) / (wm + gm)``, the ventricle volume (dark voxels in a region around the template's
lateral and third ventricles, back in native ml through the affine's determinant), the brain
volume (native deepbet mask) and the registration NCC of the QC. Versus age each is summarised
by the least-squares slope per decade and the residual SD (:func:`age_trend`).

:func:`compare` puts the two cohorts side by side: one line per compared quantity,
``simulated`` vs ``real`` (``benchmarks/bench_realism.py`` prints them and draws the figure).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

PERCENTILES = (5, 10, 25, 75, 90, 95)
DARK_FRACTIONS = (0.5, 0.7)
FEATURES = ("mask_volume_ml", *(f"p{p}_over_median" for p in PERCENTILES),
            *(f"dark_below_{t:g}_median" for t in DARK_FRACTIONS))
HIST_BINS = np.linspace(0.0, 1.0, 51)


def global_features(data: np.ndarray, mask: np.ndarray, voxel_ml: float) -> dict[str, float]:
    """The nine global features (module docstring) of a raw scan ``data`` inside ``mask`` (bool)."""
    values = np.asarray(data, dtype=np.float64)[np.asarray(mask, dtype=bool)]
    if values.size == 0:
        raise ValueError("empty brain mask: no global features")
    median = float(np.median(values))
    out = {"mask_volume_ml": float(values.size * voxel_ml)}
    for p, q in zip(PERCENTILES, np.percentile(values, PERCENTILES)):
        out[f"p{p}_over_median"] = float(q / median)
    for t in DARK_FRACTIONS:
        out[f"dark_below_{t:g}_median"] = float(np.mean(values < t * median))
    return out


def global_feature_probe(features: pd.DataFrame, ages, folds: int = 10, seed: int = 0,
                         alpha: float = 1.0) -> dict:
    """Ridge regression of age on ``features`` (n, 9), ``folds``-fold cross-validated.

    Returns ``mae`` (years), ``mae_mean_age`` (predicting the training folds' mean age),
    ``ratio`` (their quotient), ``r`` (Pearson of prediction and age), ``n`` and the
    out-of-fold ``predicted`` ages (n,).
    """
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(ages, dtype=np.float64)
    predicted, baseline = np.empty_like(y), np.empty_like(y)
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(x):
        model = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x[train], y[train])
        predicted[test] = model.predict(x[test])
        baseline[test] = y[train].mean()
    mae, mae_mean = float(np.mean(np.abs(predicted - y))), float(np.mean(np.abs(baseline - y)))
    return {"mae": mae, "mae_mean_age": mae_mean, "ratio": mae / mae_mean,
            "r": float(np.corrcoef(predicted, y)[0, 1]), "n": int(y.size), "predicted": predicted}


def age_trend(values, ages, per: float = 10.0) -> dict[str, float]:
    """Least-squares line of ``values`` on age: ``slope`` per ``per`` years, residual ``sd``,
    ``mean`` and Pearson ``r``."""
    v, a = np.asarray(values, dtype=float), np.asarray(ages, dtype=float)
    ok = np.isfinite(v) & np.isfinite(a)
    v, a = v[ok], a[ok]
    slope, intercept = np.polyfit(a, v, 1)
    return {"slope": float(slope * per), "sd": float(np.std(v - (slope * a + intercept), ddof=2)),
            "mean": float(v.mean()), "r": float(np.corrcoef(a, v)[0, 1])}


def tissue_peaks(values: np.ndarray) -> tuple[float, float, float]:
    """CSF, GM and WM intensity peaks: centres of a 3-class 1D k-means of brain ``values``."""
    from brainage.data.simulate.anatomy import kmeans_1d

    lo, mid, hi = np.percentile(values, [5, 50, 95])
    return tuple(float(c) for c in kmeans_1d(np.asarray(values, dtype=np.float64), (lo, mid, hi)))  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def ventricle_region_2mm() -> np.ndarray:
    """Bool mask on the 2 mm template grid around the template's lateral and third ventricles:
    the dark, large connected components of the template brain in a central box, dilated 4 mm
    (room for the larger ventricles of older brains)."""
    from brainage.data.atlases import load_template_1mm
    from brainage.core.grids import downsample_from_1mm, template_grid

    template, brain = load_template_1mm()
    g = template_grid(2.0)
    tpl = downsample_from_1mm(np.where(brain, template, 0), 2.0)
    inside = downsample_from_1mm(brain.astype(np.float32), 2.0) > 0.5
    csf, gm, _ = tissue_peaks(tpl[inside])
    ijk = np.indices(g.shape).reshape(3, -1)
    x, y, z = (g.affine[:3, :3] @ ijk + g.affine[:3, 3:4]).reshape(3, *g.shape)
    box = (np.abs(x) < 32) & (y > -48) & (y < 34) & (z > -8) & (z < 36)
    comps, n = ndimage.label(inside & box & (tpl < (csf + gm) / 2))
    sizes = ndimage.sum_labels(np.ones_like(comps), comps, index=np.arange(1, n + 1))
    return ndimage.binary_dilation(np.isin(comps, 1 + np.flatnonzero(sizes >= 50)), iterations=2) & inside


def template_measures(volume: np.ndarray, qc: dict) -> dict[str, float]:
    """Template-space measures of one preprocessed 2 mm T1w (``volume``, normalised in [0, 1],
    0 outside the brain) and its QC dict (``ncc``, ``brain_volume_ml``, ``affine.determinant``)."""
    brain = volume > 0
    values = volume[brain].astype(np.float64)
    csf, gm, wm = tissue_peaks(values)
    det = float(qc["affine"]["determinant"])  # template volume per native volume
    vent = ventricle_region_2mm() & brain & (volume < (csf + gm) / 2)
    q25, q75 = np.percentile(values, [25, 75])
    return {
        "csf_peak": csf, "gm_peak": gm, "wm_peak": wm, "gm_wm_contrast": (wm - gm) / (wm + gm),
        "iqr": float(q75 - q25), "ventricles_ml": float(vent.sum() * 8e-3 / det),
        "brain_volume_ml": float(qc["brain_volume_ml"]), "ncc": float(qc["ncc"]),
        "hist": np.histogram(values, bins=HIST_BINS, density=True)[0],
    }


def cohort_template_measures(preprocess_dirs: dict[str, Path], ages: pd.Series) -> pd.DataFrame:
    """:func:`template_measures` of every subject with outputs in ``preprocess_dirs`` (pid -> folder)."""
    import nibabel as nib

    from brainage.core.paths import preprocess_outputs

    rows = []
    for pid, folder in preprocess_dirs.items():
        paths = preprocess_outputs(folder, pid, [2.0])
        if not paths["qc_json"].exists():
            continue
        qc = json.loads(paths["qc_json"].read_text())
        row = template_measures(np.asarray(nib.load(paths["res2"]).dataobj, dtype=np.float32), qc)
        rows.append({"participant_id": pid, "age": float(ages[pid]), **row})
    return pd.DataFrame(rows)


def _fmt(v: float, digits: int) -> str:
    return f"{v:.{digits}f}"


def compare(sim: dict, real: dict) -> list[str]:
    """One line per compared quantity, ``simulated`` vs ``real``.

    ``sim``/``real``: ``probe`` (:func:`global_feature_probe`), ``features`` (DataFrame of
    :data:`FEATURES` + ``age``) and ``template`` (:func:`cohort_template_measures`).
    """
    lines = []
    for key, label in (("ratio", "probe MAE / mean-age MAE"), ("mae", "probe MAE (y)"),
                       ("mae_mean_age", "mean-age MAE (y)"), ("r", "probe r")):
        lines.append(f"{label}: simulated {_fmt(sim['probe'][key], 2)} (n={sim['probe']['n']}) "
                     f"vs real {_fmt(real['probe'][key], 2)} (n={real['probe']['n']})")
    for name in FEATURES:
        rs = age_trend(sim["features"][name], sim["features"]["age"])["r"]
        rr = age_trend(real["features"][name], real["features"]["age"])["r"]
        lines.append(f"r(age, {name}): simulated {rs:+.2f} vs real {rr:+.2f}")
    ts, tr = sim["template"], real["template"]
    n = f"(n={len(ts)} vs {len(tr)})"
    for name in ("csf_peak", "gm_peak", "wm_peak", "iqr"):
        lines.append(f"{name} (mean +- SD): simulated {ts[name].mean():.3f} +- {ts[name].std():.3f} "
                     f"vs real {tr[name].mean():.3f} +- {tr[name].std():.3f} {n}")
    for name, unit, digits in (("gm_wm_contrast", "", 3), ("brain_volume_ml", " ml", 0), ("ventricles_ml", " ml", 1),
                               ("ncc", "", 3)):
        a, b = age_trend(ts[name], ts["age"]), age_trend(tr[name], tr["age"])
        lines.append(f"{name}: mean {_fmt(a['mean'], digits)} vs {_fmt(b['mean'], digits)}{unit}; "
                     f"slope/decade simulated {_fmt(a['slope'], digits + 1)} vs real {_fmt(b['slope'], digits + 1)}; "
                     f"SD at a given age simulated {_fmt(a['sd'], digits + 1)} vs real {_fmt(b['sd'], digits + 1)}; "
                     f"r(age) {a['r']:+.2f} vs {b['r']:+.2f} {n}")
    return lines


def cohort_raw_features(table: pd.DataFrame, mask_for, cache_tsv: str | Path) -> pd.DataFrame:
    """:func:`global_features` of every row of ``table`` (``participant_id``, ``age``, ``t1w``).

    ``mask_for(pid, img)``: the subject's deepbet brain mask (bool, the image's voxel order).
    Rows already in ``cache_tsv`` are read back, new ones appended: reruns are cheap.
    """
    import nibabel as nib

    cache_tsv = Path(cache_tsv)
    done = pd.read_csv(cache_tsv, sep="\t") if cache_tsv.exists() else pd.DataFrame(columns=["participant_id"])
    rows = []
    for row in table.itertuples(index=False):
        if row.participant_id in set(done["participant_id"]):
            continue
        img = nib.load(row.t1w)
        voxel_ml = float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000.0
        feats = global_features(np.asarray(img.dataobj), mask_for(row.participant_id, img), voxel_ml)
        rows.append({"participant_id": row.participant_id, "age": float(row.age), **feats})
        done = pd.concat([done, pd.DataFrame(rows[-1:])], ignore_index=True)
        cache_tsv.parent.mkdir(parents=True, exist_ok=True)
        done.to_csv(cache_tsv, sep="\t", index=False)
    return done.set_index("participant_id").loc[list(table["participant_id"])].reset_index()


def cached_deepbet_mask(mask_dir: str | Path, existing=None):
    """``mask_for`` of :func:`cohort_raw_features`: deepbet masks saved as ``<mask_dir>/<pid>.nii.gz``;
    ``existing(pid)``: a path to reuse when it exists (e.g. the ``desc-brain_mask`` of a pipeline run)."""
    import nibabel as nib

    from brainage.preprocess.native import brain_mask_deepbet

    def mask_for(pid: str, img) -> np.ndarray:
        path = Path(mask_dir) / f"{pid}.nii.gz"
        if existing is not None and Path(existing(pid)).exists():
            path = Path(existing(pid))
        if path.exists():
            return np.asarray(nib.load(path).dataobj) > 0
        mask = brain_mask_deepbet(img)
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), img.affine), path)
        return mask

    return mask_for


def simulated_true_mask(sim_dir: str | Path):
    """``mask_for`` of :func:`cohort_raw_features` reading the simulator's true brain masks: a fast
    stand-in for deepbet on simulated heads (its masks are ~2.5 % larger, features r 0.89-0.997)."""
    import nibabel as nib

    from brainage.core.paths import simulated_subject_files

    def mask_for(pid: str, img) -> np.ndarray:
        path = simulated_subject_files(Path(sim_dir) / "bids", Path(sim_dir) / "truth", pid)["mask"]
        return np.asarray(nib.load(path).dataobj) > 0

    return mask_for


def realism_figure(sim: dict, real: dict, path: str | Path) -> None:
    """The two cohorts overlaid: brain histogram, GM/WM contrast, brain and ventricle volume
    vs age, NCC, probe predictions, and the age correlation of each global feature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(20, 9))
    centres = (HIST_BINS[:-1] + HIST_BINS[1:]) / 2
    cohorts = (("simulated", sim, "tab:orange"), ("real IXI", real, "tab:blue"))
    for name, c, colour in cohorts:
        t = c["template"]
        hist = np.stack(t["hist"].to_numpy())
        lo, mid, hi = np.percentile(hist, [10, 50, 90], axis=0)
        axes[0, 0].plot(centres, mid, color=colour, label=f"{name} (n={len(t)})")
        axes[0, 0].fill_between(centres, lo, hi, color=colour, alpha=0.25)
        for ax, key in zip((axes[0, 1], axes[0, 2], axes[0, 3], axes[1, 0]),
                           ("gm_wm_contrast", "brain_volume_ml", "ventricles_ml", "ncc")):
            tr = age_trend(t[key], t["age"])
            ax.scatter(t["age"], t[key], s=10, color=colour, alpha=0.6,
                       label=f"{name}: {tr['slope']:+.3g}/decade, SD {tr['sd']:.3g}")
            ax.set_title(key)
        p, f = c["probe"], c["features"]
        axes[1, 1].scatter(f["age"], p["predicted"], s=8, color=colour, alpha=0.6,
                           label=f"{name}: ratio {p['ratio']:.2f}, r {p['r']:.2f} (n={p['n']})")
        r = [age_trend(f[k], f["age"])["r"] for k in FEATURES]
        axes[1, 2].barh(np.arange(len(FEATURES)) + (0.2 if colour == "tab:orange" else -0.2), r, height=0.4,
                        color=colour, label=name)
    axes[0, 0].set(title="brain intensity histogram (median, 10-90 %)", xlabel="normalised intensity")
    axes[1, 1].plot([20, 90], [20, 90], "k:", lw=1)
    axes[1, 1].set(title="global-feature probe (ridge, 10-fold CV)", xlabel="age", ylabel="predicted age")
    axes[1, 2].set(yticks=np.arange(len(FEATURES)), yticklabels=FEATURES, title="r(age, global feature)")
    axes[1, 2].axvline(0, color="k", lw=0.5)
    for ax in axes.flat[:7]:
        ax.legend(fontsize=7)
    for ax in (axes[0, 1], axes[0, 2], axes[0, 3], axes[1, 0]):
        ax.set_xlabel("age")
    _raw_slices(axes[1, 3], sim.get("raw_example"), real.get("raw_example"))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _raw_slices(ax, sim_t1w, real_t1w) -> None:
    """Mid-sagittal slices of one raw simulated and one raw real head, side by side (RAS)."""
    import nibabel as nib

    panels = []
    for path in (sim_t1w, real_t1w):
        if path is None:
            continue
        img = nib.as_closest_canonical(nib.load(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        zooms = img.header.get_zooms()[:3]
        mm = ndimage.zoom(data[data.shape[0] // 2], (zooms[1] / 2, zooms[2] / 2), order=1)
        canvas = np.zeros((130, 130), np.float32)
        h, w = min(mm.shape[0], 130), min(mm.shape[1], 130)
        canvas[:h, :w] = mm[:h, :w] / max(np.percentile(mm, 99.5), 1e-6)
        panels.append(canvas.T[::-1])
    if panels:
        ax.imshow(np.hstack(panels), cmap="gray", vmin=0, vmax=1.1)
    ax.set(title="raw heads, mid-sagittal: simulated | real", xticks=[], yticks=[])


def preprocess_subset(table: pd.DataFrame, n: int, out_root: str | Path, threads: int = 2,
                      budget_s: float | None = None) -> dict[str, Path]:
    """Preprocess (native engine, 2 mm) up to ``n`` subjects of ``table`` spread evenly over its
    ages into ``<out_root>/<pid>``, in an order whose every prefix covers the age range, and
    start no new one after ``budget_s`` seconds. Returns pid -> folder of every subject of
    ``table`` finished there (by this call or an earlier one: reruns extend the subset)."""
    import time

    from brainage.preprocess import preprocess_t1w
    from brainage.core.paths import preprocess_outputs

    order = table.sort_values("age").reset_index(drop=True)
    pick = np.unique(np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int))
    pick = pick[np.argsort((np.arange(pick.size) * 0.6180339887) % 1.0, kind="stable")]  # golden-ratio interleave
    started = time.perf_counter()
    for row in order.iloc[pick].itertuples(index=False):
        if budget_s is not None and time.perf_counter() - started > budget_s:
            break
        folder = Path(out_root) / row.participant_id
        if not preprocess_outputs(folder, row.participant_id, [2.0])["qc_json"].exists():
            preprocess_t1w(row.t1w, folder, row.participant_id, [2.0], threads=threads)
    return {pid: Path(out_root) / pid for pid in table["participant_id"]
            if preprocess_outputs(Path(out_root) / pid, pid, [2.0])["qc_json"].exists()}
