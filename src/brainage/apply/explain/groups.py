"""The groups whose saliency maps are averaged: HC age group x sex, all HC, AD, PD and the
age-matched controls of AD and PD; running per-group means of the maps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

#: the study's age groups (years): [low, high); the last is open-ended
AGE_GROUPS: tuple[tuple[str, float, float], ...] = (
    ("20-40", 20.0, 40.0),
    ("40-60", 40.0, 60.0),
    ("60-80", 60.0, 80.0),
    ("80plus", 80.0, float("inf")),
)
SEXES = ("F", "M")


def age_group(age: float) -> str | None:
    """The study's age group of ``age`` (``20-40`` ... ``80plus``), None below 20 or unknown."""
    if age is None or not np.isfinite(age):
        return None
    for name, low, high in AGE_GROUPS:
        if low <= age < high:
            return name
    return None


@dataclass
class Group:
    """A set of subjects whose saliency maps are averaged (``id`` is used in file names)."""

    id: str
    label: str
    cohort: str
    age_group: str = "all"
    sex: str = "all"
    members: list[str] = field(default_factory=list)


def saliency_groups(subjects: pd.DataFrame) -> list[Group]:
    """Groups of the study: HC by age group (x sex and both sexes), all HC, AD and PD.

    ``subjects`` has columns participant_id, cohort (HC|AD|PD), age, sex (F|M). Every group
    is listed, also empty ones (``members == []``), so the outputs have a fixed layout.
    """
    groups: list[Group] = []
    hc = subjects[subjects["cohort"] == "HC"]
    bins = hc["age"].map(age_group)
    for name, low, high in AGE_GROUPS:
        span = f"{low:g}+" if not np.isfinite(high) else f"{low:g}-{high:g}"
        in_bin = hc[bins == name]
        for sex in SEXES:
            members = in_bin.loc[in_bin["sex"] == sex, "participant_id"].tolist()
            groups.append(Group(f"HC_{name}_{sex}", f"HC {span} y, {sex}", "HC", name, sex, members))
        groups.append(Group(f"HC_{name}", f"HC {span} y", "HC", name, "all", in_bin["participant_id"].tolist()))
    groups.append(Group("HC", "HC, all ages", "HC", members=hc["participant_id"].tolist()))
    for cohort in ("AD", "PD"):
        members = subjects.loc[subjects["cohort"] == cohort, "participant_id"].tolist()
        groups.append(Group(cohort, cohort, cohort, members=members))
    return groups


def match_controls_by_age(patients: pd.DataFrame, controls: pd.DataFrame) -> pd.DataFrame:
    """Age-matched controls: for each patient (oldest first) the nearest-age unused control.

    Without replacement while controls last, then with replacement; ties go to the same sex,
    then to the smaller participant_id, so the matching is deterministic. Returns columns
    participant_id, age, control_id, control_age.
    """
    rows = []
    columns = ["participant_id", "age", "control_id", "control_age"]
    if controls.empty or patients.empty:
        return pd.DataFrame({c: pd.Series(dtype=float if "age" in c else object) for c in columns})
    free = controls.sort_values("participant_id").copy()
    for _, p in patients.sort_values(["age", "participant_id"], ascending=[False, True]).iterrows():
        pool = free if not free.empty else controls
        cost = pd.DataFrame(
            {
                "gap": (pool["age"] - p["age"]).abs().to_numpy(),
                "other_sex": (pool["sex"] != p["sex"]).to_numpy().astype(int),
                "participant_id": pool["participant_id"].to_numpy(),
            },
            index=pool.index,
        )
        best = cost.sort_values(["gap", "other_sex", "participant_id"]).index[0]
        rows.append(
            {"participant_id": p["participant_id"], "age": p["age"], "control_id": pool.at[best, "participant_id"], "control_age": pool.at[best, "age"]}
        )
        if not free.empty:
            free = free.drop(index=best)
    return pd.DataFrame(rows, columns=columns)


class GroupMeans:
    """Running sums of saliency maps per group: memory is one map per group, not per subject."""

    def __init__(self, groups: Sequence[Group], shape: tuple[int, ...]) -> None:
        self.groups = list(groups)
        self.shape = tuple(shape)
        self._index: dict[str, list[int]] = {}
        for k, g in enumerate(self.groups):
            for pid in g.members:
                self._index.setdefault(pid, []).append(k)
        self._sum = np.zeros((len(self.groups), *self.shape), dtype=np.float64)
        self._n = np.zeros(len(self.groups), dtype=np.int64)

    def add(self, participant_id: str, saliency: np.ndarray) -> None:
        for k in self._index.get(participant_id, []):
            self._sum[k] += saliency
            self._n[k] += 1

    def means(self) -> dict[str, np.ndarray | None]:
        """Mean map per group id (float32); None for a group with no subject."""
        return {g.id: (self._sum[k] / self._n[k]).astype(np.float32) if self._n[k] else None for k, g in enumerate(self.groups)}

    def counts(self) -> dict[str, int]:
        return {g.id: int(self._n[k]) for k, g in enumerate(self.groups)}
