"""AAL116 tables of a saliency map and the check of their ranking against the simulator's truth.

On the simulated cohort the region ranking is checked against the regions the simulator
changed most (precision at k against random rankings; see :func:`relevant_regions`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from brainage.core.io import InputError

# the logger of the module this code came from: the pipeline's log lines name it
log = logging.getLogger("brainage.apply.explain")


def parcel_means(saliency: np.ndarray, atlas: np.ndarray, labels: pd.DataFrame) -> np.ndarray:
    """Mean of ``saliency`` in each region of ``atlas`` (same grid), ordered as ``labels.index``.

    A region with no voxel on this grid gets NaN.
    """
    if saliency.shape != atlas.shape:
        raise ValueError(f"saliency grid {saliency.shape} differs from atlas grid {atlas.shape}")
    idx = labels["index"].to_numpy().astype(np.int64)
    flat = atlas.reshape(-1).astype(np.int64)
    top = max(int(flat.max(initial=0)), int(idx.max())) + 1
    sums = np.bincount(flat, weights=saliency.reshape(-1).astype(np.float64), minlength=top)
    counts = np.bincount(flat, minlength=top)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts[idx] > 0, sums[idx] / np.maximum(counts[idx], 1), np.nan)


def parcel_table(
    saliency: np.ndarray, atlas: np.ndarray, labels: pd.DataFrame, threshold: float = 0.8, signed: bool = False
) -> pd.DataFrame:
    """AAL116 table of one (group) map: index, name, hemisphere, mean, mean_scaled, rank, above_threshold.

    ``mean`` is the region mean of the map. A mean of [0, 1] maps rarely reaches 0.8, so the
    study's "regions above 0.8" is read on ``mean_scaled``: the region means divided by their
    maximum (by the maximum absolute value for a ``signed`` difference map), i.e. relative to
    the most salient region. ``rank`` 1 is the most salient region (largest ``mean``).
    """
    means = parcel_means(saliency, atlas, labels)
    scale = np.nanmax(np.abs(means)) if signed else np.nanmax(means) if np.isfinite(means).any() else np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = means / scale if scale and np.isfinite(scale) and scale > 0 else np.zeros_like(means)
    table = labels[["index", "name", "hemisphere"]].copy().reset_index(drop=True)
    table["mean"] = means
    table["mean_scaled"] = scaled
    table["rank"] = pd.Series(means).rank(ascending=False, method="min").astype("Int64")
    table["above_threshold"] = np.nan_to_num(scaled, nan=-np.inf) > threshold
    return table


def precision_at_k(ranked_names: Sequence[str], relevant: Iterable[str], k: int = 10) -> float:
    """Share of the first ``k`` names of a ranking that are in ``relevant``."""
    relevant = set(relevant)
    top = list(ranked_names)[:k]
    return float(np.mean([name in relevant for name in top])) if top else float("nan")


def random_precision_at_k(n_regions: int, n_relevant: int, k: int, draws: int, seed: int) -> np.ndarray:
    """Precision at ``k`` of ``draws`` uniformly random rankings of ``n_regions`` regions."""
    rng = np.random.default_rng(seed)
    hits = np.array([(rng.permutation(n_regions)[:k] < n_relevant).sum() for _ in range(draws)])
    return hits / k


def truth_check(table: pd.DataFrame, relevant: Iterable[str], k: int = 10, draws: int = 10000, seed: int = 0) -> dict:
    """Precision at ``k`` of a group's AAL116 ranking against the regions the simulator changed.

    The baseline is the distribution over random rankings of the same regions; ``p_value``
    is the share of random rankings at least as precise (with the +1 correction). A map that
    is the same in every region (Grad-RAM 0 in every subject: the ReLU of a weighted sum that
    is negative everywhere) ranks nothing: ``precision`` and ``p_value`` are NaN, not the
    score of its ties broken by AAL index.
    """
    relevant = set(relevant)
    ranked = table.dropna(subset=["mean"]).sort_values(["rank", "index"])
    names = ranked["name"].tolist()
    n_relevant = len(relevant & set(names))
    if ranked["mean"].nunique() <= 1:
        nan = float("nan")
        return {"k": k, "n_relevant": n_relevant, "precision": nan, "random_mean": nan, "random_sd": nan,
                "p_value": nan, "top": ""}
    observed = precision_at_k(names, relevant, k)
    baseline = random_precision_at_k(len(names), n_relevant, k, draws, seed)
    return {
        "k": k,
        "n_relevant": n_relevant,
        "precision": observed,
        "random_mean": float(baseline.mean()),
        "random_sd": float(baseline.std(ddof=1)) if draws > 1 else float("nan"),
        "p_value": float((1 + np.sum(baseline >= observed)) / (1 + draws)),
        "top": ";".join(names[:k]),
    }


#: the simulator's effect (``effect`` column of results/cohort/truth/effects_aal116.tsv) each
#: group's ranking is checked against: healthy groups -> ageing; AD and PD (and their
#: difference maps against age-matched controls) -> all that the simulator changed in the
#: cohort's mean patient against an age-matched control: the disease's own atrophy plus the
#: ageing of its biological-age increment (the table's ``AD_specific`` and ``PD_specific``, the
#: atrophy alone, are reported by benchmarks/bench_saliency_truths.py: an age model's map of AD
#: ranks the regions of faster ageing first, not the MTL atrophy that no healthy brain shows)
TRUTH_EFFECT = {"HC": "ageing", "AD": "AD", "PD": "PD"}
#: how strongly the simulator changed a region: mean |signal change| of the simulator's mean
#: subject rendered on the template (relative to WM = 1; brainage.data.simulate.cohort.signal_change),
#: i.e. what the scanner sees change. The volume change of the deformation (``volume_change_pct``,
#: the measure before 2026-12-05) ranks small regions whose tissue was compressed without
#: changing the image much (vermis lobules, temporal pole) above the regions beside the growing
#: ventricles whose image changes most; even the voxelwise correlation of the preprocessed images
#: with age reaches only 0.4 of its top 10 on the demo (benchmarks/bench_saliency_truths.py).
#: Tables written before the column existed fall back to the volume change.
TRUTH_MEASURE = "signal_change"
TRUTH_FALLBACK = "volume_change_pct"

TRUTH_COLUMNS = ["group", "n", "effect", "k", "n_relevant", "precision", "random_mean", "random_sd", "p_value", "p_holm",
                 "top", "relevant"]


def read_effects(path: str | Path) -> pd.DataFrame:
    """The simulator's truth table (index, name, effect, cohort, signal_change, volume_change_pct, ...)."""
    effects = pd.read_csv(path, sep="\t")
    if TRUTH_MEASURE not in effects.columns and TRUTH_FALLBACK in effects.columns:
        log.warning("%s: no %s column (written by an older simulator): ranking by %s", path, TRUTH_MEASURE, TRUTH_FALLBACK)
        effects = effects.assign(**{TRUTH_MEASURE: effects[TRUTH_FALLBACK]})
    missing = {"name", "effect", TRUTH_MEASURE} - set(effects.columns)
    if missing:
        raise InputError(f"{path}: simulator truth table lacks column(s) {', '.join(sorted(missing))}")
    if "AD" in set(effects["effect"]) and "AD_specific" not in set(effects["effect"]):
        log.warning("%s: written by an older simulator: its AD and PD rows are the disease-specific atrophy alone, "
                    "without the biological-age increment (rerun simulate_cohort for the current truth)", path)
    return effects


def relevant_regions(effects: pd.DataFrame, effect: str, k: int, among: Iterable[str] | None = None) -> list[str]:
    """The ``k`` AAL116 regions the simulator changed most by ``effect``: largest |:data:`TRUTH_MEASURE`|.

    ``effects``: the simulator's truth table (one row per region and effect); ``among``: only
    these regions compete (those that have voxels on the saliency grid), so that a region the
    ranking cannot contain never counts against it. Ties go to the smaller AAL index.
    """
    rows = effects[effects["effect"] == effect]
    if rows.empty:
        raise ValueError(f"no effect {effect!r} in the simulator truth table (has: {', '.join(map(str, effects['effect'].unique()))})")
    if among is not None:
        rows = rows[rows["name"].isin(set(among))]
    order = rows.assign(_size=rows[TRUTH_MEASURE].abs())
    keys = ["_size", "index"] if "index" in rows else ["_size"]
    return order.sort_values(keys, ascending=[False, True][: len(keys)], kind="stable")["name"].head(k).tolist()


def truth_checks(aal_table: pd.DataFrame, effects: pd.DataFrame, k: int = 10, draws: int = 10000, seed: int = 0) -> pd.DataFrame:
    """Precision at ``k`` of every group's AAL116 ranking against the simulator's truth.

    ``aal_table``: the long table of :func:`run_saliency` (group, n, index, name, mean, rank);
    each group is compared with the top-``k`` regions of its effect (:data:`TRUTH_EFFECT` by
    the group's cohort: HC age and sex groups -> ``ageing``; ``AD``, ``AD-minus-HC`` -> ``AD``;
    ``PD``, ``PD-minus-HC`` -> ``PD``). Age-matched control groups are not checked (they are
    the difference maps' baseline). One row per group, columns :data:`TRUTH_COLUMNS`;
    ``p_holm`` is ``p_value`` Holm-corrected across the groups checked.
    """
    rows = []
    if aal_table.empty:
        return pd.DataFrame(rows, columns=TRUTH_COLUMNS)
    for group, table in aal_table.groupby("group", sort=False):
        if group.endswith("matchedHC"):
            continue
        cohort = group.split("_")[0].split("-")[0]
        effect = TRUTH_EFFECT.get(cohort)
        if effect is None or table["mean"].notna().sum() == 0:
            continue
        present = table.loc[table["mean"].notna(), "name"]
        relevant = relevant_regions(effects, effect, k, among=present)
        check = truth_check(table, relevant, k, draws, seed)
        n = int(table["n"].iloc[0]) if "n" in table else np.nan
        rows.append({"group": group, "n": n, "effect": effect, **check, "relevant": ";".join(relevant)})
    table = pd.DataFrame(rows, columns=TRUTH_COLUMNS)
    if len(table):
        # every group's ranking is one test: Holm's step-down over all of them (familywise error)
        from brainage.core.metrics import holm

        table["p_holm"] = holm(table["p_value"])
    return table
