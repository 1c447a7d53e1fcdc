"""Participant-level train/val/test splits of the healthy controls, stratified by age and dataset.

Every model reads the same ``results/splits.tsv``: one row per participant with ``split`` in
``train``, ``val``, ``test`` (healthy controls) or ``AD``/``PD`` (patients, never trained on).
Subjects listed in the QC exclusion table are left out entirely.

Stratification: healthy controls are ordered by dataset, age bin and (seeded) random order, and
each consecutive block of 10 receives a seeded random permutation of 8 train, 1 val and 1 test
labels (for 80/10/10). Every stratum therefore contributes to each split in proportion up to
one block, and the whole cohort's split sizes are exact to within one subject.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from brainage.io import InputError

__all__ = ["make_splits", "read_splits", "read_excluded", "split_hash", "TRAINING_SPLITS"]

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
