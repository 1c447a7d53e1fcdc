"""Participant-level train/val/test splits of the healthy controls, stratified by age and dataset.

Every model reads the same ``results/splits.tsv``: one row per participant with ``split`` in
``train``, ``val``, ``test`` (healthy controls) or ``AD``/``PD`` (patients, never trained on).
Subjects listed in the QC exclusion table are left out entirely.

Stratification: healthy controls are ordered by dataset, age bin and (seeded) random order, and
each consecutive block of 10 receives a seeded random permutation of 8 train, 1 val and 1 test
labels (for 80/10/10). Every stratum therefore contributes to each split in proportion up to
one block, and the whole cohort's split sizes are exact to within one subject.

Cross-validation (``training.splits.scheme: kfold``), for cohorts of tens to hundreds where one
test split of a few people is noise: the healthy controls are dealt into ``folds`` folds the
same stratified way (blocks of ``folds`` consecutive subjects in dataset / age-bin / random
order, each block a seeded permutation of the fold numbers), anew for each of ``repeats``
repeats. Fold ``r{r}f{k}`` tests fold k of repeat r; the other folds are split again, stratified,
into train and val (``val_fraction``). Every healthy subject is thus tested exactly once per
repeat, by a model that never saw it. Patients (AD, PD) are in every fold's table, never trained on.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from brainage.data.cv import parse_fold
from brainage.core.io import InputError

__all__ = ["make_splits", "make_cv_splits", "splits_from_config", "fold_names", "read_splits", "read_excluded", "split_hash", "TRAINING_SPLITS"]

TRAINING_SPLITS = ("train", "val", "test")
_COLUMNS = ["participant_id", "dataset", "cohort", "age", "sex", "split"]


def _block_pattern(fractions: tuple[float, float, float]) -> list[str]:
    """Labels of the smallest block with the given fractions (0.8/0.1/0.1 -> 8+1+1)."""
    fr = [Fraction(f).limit_denominator(100) for f in fractions]
    if sum(fr) != 1 or any(f < 0 for f in fr):
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    denom = int(np.lcm.reduce([f.denominator for f in fr]))
    counts = [int(f * denom) for f in fr]
    return [name for name, n in zip(TRAINING_SPLITS, counts) for _ in range(n)]


def make_splits(
    participants: pd.DataFrame,
    seed: int,
    excluded: set[str] | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    age_bin_years: float = 10.0,
) -> pd.DataFrame:
    """Assign every participant a split; columns participant_id, dataset, cohort, age, sex, split.

    ``participants`` has the manifest columns (participant_id, dataset, cohort HC|AD|PD, age,
    sex). ``excluded`` participant ids are dropped. The result is sorted by participant_id.
    """
    missing = {"participant_id", "dataset", "cohort", "age"} - set(participants.columns)
    if missing:
        raise InputError(f"participants table: missing column(s) {', '.join(sorted(missing))}")
    table = participants.copy()
    if "sex" not in table:
        table["sex"] = "n/a"
    if table["participant_id"].duplicated().any():
        dup = table.loc[table["participant_id"].duplicated(), "participant_id"].iloc[0]
        raise InputError(f"{dup}: participants table: participant listed twice")
    table = table[~table["participant_id"].isin(excluded or set())]
    table = table.sort_values("participant_id", kind="stable").reset_index(drop=True)
    bad = table[~table["cohort"].isin(["HC", "AD", "PD"])]
    if len(bad):
        raise InputError(f"{bad['participant_id'].iloc[0]}: participants table: cohort {bad['cohort'].iloc[0]!r} is not HC, AD or PD")

    rng = np.random.default_rng(seed)
    table["split"] = table["cohort"].where(table["cohort"] != "HC", "")
    hc = table[table["cohort"] == "HC"].copy()
    hc["_bin"] = np.floor(hc["age"].astype(float) / age_bin_years)
    hc["_rand"] = rng.permutation(len(hc))
    hc = hc.sort_values(["dataset", "_bin", "_rand"], kind="stable")
    pattern = _block_pattern(fractions)
    labels: list[str] = []
    while len(labels) < len(hc):
        labels.extend(rng.permutation(pattern).tolist())
    table.loc[hc.index, "split"] = labels[: len(hc)]
    return table[_COLUMNS]


def fold_names(folds: int, repeats: int = 1) -> list[str]:
    """Names of the cross-validation folds: ``r0f0``, ``r0f1``, ... (repeat, fold)."""
    if folds < 2 or repeats < 1:
        raise ValueError(f"cross-validation needs folds >= 2 and repeats >= 1, got {folds} and {repeats}")
    return [f"r{r}f{k}" for r in range(repeats) for k in range(folds)]


def make_cv_splits(
    participants: pd.DataFrame,
    seed: int,
    excluded: set[str] | None = None,
    folds: int = 5,
    repeats: int = 1,
    val_fraction: float = 0.1,
    age_bin_years: float = 10.0,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Stratified, repeated k-fold splits of the healthy controls.

    Returns ``(assignment, tables)``: ``assignment`` has the :func:`make_splits` columns (its
    ``split`` column is fold ``r0f0``'s) plus ``fold_r<r>`` (each subject's test fold in repeat
    r; empty for patients); ``tables`` maps each fold name (:func:`fold_names`) to a splits table
    of the :func:`make_splits` format, whose ``test`` rows are that fold.
    """
    names = fold_names(folds, repeats)
    base = make_splits(participants, seed, excluded, (1.0, 0.0, 0.0), age_bin_years)
    hc = base[base["cohort"] == "HC"]
    if len(hc) < 2 * folds:
        raise InputError(f"cross-validation: {len(hc)} healthy controls for {folds} folds; "
                         f"need at least {2 * folds} (fewer training.splits.folds)")
    assignment = base.copy()
    for r in range(repeats):
        rng = np.random.default_rng([seed, r])
        order = hc.assign(_bin=np.floor(hc["age"].astype(float) / age_bin_years), _rand=rng.permutation(len(hc)))
        order = order.sort_values(["dataset", "_bin", "_rand"], kind="stable")
        # cycling through the folds in this order keeps every stratum (a run of consecutive
        # subjects) balanced to within one subject per fold
        labels = rng.permutation(folds)[np.arange(len(order)) % folds]
        assignment[f"fold_r{r}"] = pd.Series(dtype="Int64")
        assignment.loc[order.index, f"fold_r{r}"] = labels
    tables = {}
    for name in names:
        r, k = parse_fold(name)
        test = (assignment[f"fold_r{r}"] == k).fillna(False).astype(bool)
        train_ids = base.loc[~test & (base["cohort"] == "HC"), "participant_id"]
        rest = make_splits(participants[participants["participant_id"].isin(train_ids)],
                           seed + 1000 * (r + 1) + k, None, (1 - val_fraction, val_fraction, 0.0), age_bin_years)
        if not (rest["split"] == "val").any():  # a small cohort: still one subject to validate on
            rest.loc[rest.index[np.random.default_rng([seed, r, k]).integers(len(rest))], "split"] = "val"
        table = base.copy()
        inner = table["participant_id"].map(rest.set_index("participant_id")["split"])
        table["split"] = inner.where(inner.notna(), table["split"].where(~test, "test"))
        tables[name] = table
    assignment["split"] = tables[names[0]]["split"]
    return assignment, tables


def splits_from_config(participants: pd.DataFrame, seed: int, excluded: set[str] | None,
                       cfg: dict) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The splits a config's ``training.splits`` asks for: the fixed split (``scheme: fixed``,
    the default: no fold tables) or :func:`make_cv_splits` (``scheme: kfold``)."""
    if cfg.get("scheme", "fixed") == "kfold":
        return make_cv_splits(participants, seed, excluded, int(cfg["folds"]), int(cfg.get("repeats", 1)),
                              float(cfg.get("val_fraction", 0.1)), float(cfg["age_bin_years"]))
    return make_splits(participants, seed, excluded, tuple(cfg["fractions"]), float(cfg["age_bin_years"])), {}


def read_excluded(path: str | Path) -> set[str]:
    """Participant ids of the QC exclusion table (a TSV with a participant_id column; may be empty)."""
    path = Path(path)
    if path.stat().st_size == 0:
        return set()
    frame = pd.read_csv(path, sep="\t", dtype=str)
    if len(frame.columns) and "participant_id" not in frame.columns:
        raise InputError(f"{path}: exclusion table has no participant_id column")
    return set(frame.get("participant_id", pd.Series(dtype=str)).dropna())


def read_splits(path: str | Path) -> pd.DataFrame:
    """The splits table written by :func:`make_splits` (ages as float)."""
    frame = pd.read_csv(path, sep="\t", dtype={"participant_id": str, "split": str})
    frame["age"] = frame["age"].astype(float)
    return frame


def split_hash(ids) -> str:
    """A short hash of a set of participant ids (model cards record which subjects were used)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]
