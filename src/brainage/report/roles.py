"""Which configured models play which part in the study (model roles), and the best model of a
role chosen on validation MAE, never on the test split: config logic that the workflow
(``workflow/rules/stats.smk``), the tables and the figures share. Torch-free."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from brainage.models.kinds import CLASSICAL, RNC, STACK, kind_of


#: config keys that may differ between the models of one batch-size sweep
SWEEP_FREE_KEYS = frozenset({"batch_size", "grid", "chunk_size"})


def normalise_models(models: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Config ``models:`` as {name: spec} with the grid (mm) as a float."""
    out = {}
    for name, spec in (models or {}).items():
        spec = dict(spec or {})
        if "grid" in spec:
            spec["grid"] = float(spec["grid"])
        out[str(name)] = spec
    return out


@dataclass(frozen=True)
class ModelRoles:
    """Which configured models play which part in the study's comparisons.

    e2e: end-to-end regression models (loss l1, a ResNet backbone), candidates for "best e2e";
    rnc: Rank-N-Contrast models (loss rnc), candidates for "the RNC model";
    sfcn: SFCN baselines trained here;
    sweeps: groups of RNC models identical but for batch size and grid (Figure 3), each sorted
    by (grid, batch_size); only groups with at least two batch sizes count;
    classical: classical baselines (brainage.models.classical, no network: no saliency), never e2e;
    stack: stacked models (brainage.train.stack: a weighted mean of other entries' predictions).
    """

    e2e: tuple[str, ...]
    rnc: tuple[str, ...]
    sfcn: tuple[str, ...]
    sweeps: tuple[tuple[str, ...], ...]
    classical: tuple[str, ...] = ()
    stack: tuple[str, ...] = ()

    @property
    def sweep_models(self) -> tuple[str, ...]:
        return tuple(name for group in self.sweeps for name in group)


def model_roles(models: Mapping[str, Mapping[str, Any]]) -> ModelRoles:
    """Sort the config ``models:`` entries (name -> backbone, grid, loss, batch_size, ...) by role."""
    models = normalise_models(models)
    e2e, rnc, sfcn, classical, stack = [], [], [], [], []
    for name, spec in models.items():
        kind = kind_of(spec)
        if kind is STACK:
            stack.append(name)
        elif kind is CLASSICAL:
            classical.append(name)
        elif str(spec.get("backbone", "")).lower() == "sfcn":
            sfcn.append(name)
        elif kind is RNC:
            rnc.append(name)
        else:
            e2e.append(name)
    groups: dict[str, list[str]] = {}
    for name in rnc:
        key = json.dumps(_sweep_key(models[name]), sort_keys=True, default=str)
        groups.setdefault(key, []).append(name)
    sweeps = []
    for names in groups.values():
        if len({models[n].get("batch_size") for n in names}) >= 2:
            sweeps.append(tuple(sorted(names, key=lambda n: (float(models[n].get("grid", 0)), int(models[n].get("batch_size", 0))))))
    return ModelRoles(tuple(e2e), tuple(rnc), tuple(sfcn), tuple(sweeps), tuple(classical), tuple(stack))


def _sweep_key(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` without the keys a batch-size sweep may vary, also inside nested blocks (the RNC
    loss's ``rnc: {chunk_size}`` only trades memory for speed, so it never splits a sweep)."""
    return {k: _sweep_key(v) if isinstance(v, Mapping) else v for k, v in spec.items() if k not in SWEEP_FREE_KEYS}


def validation_mae(train_log: str | Path | None = None, model_card: str | Path | None = None) -> float:
    """The validation MAE of a trained model, used to pick the best model without the test set.

    Read from ``model_card.json`` (a ``metrics`` entry whose key names val/validation and mae)
    or else the lowest value of a val-MAE column of ``train_log.tsv``; nan when neither has one.
    """
    if model_card is not None and Path(model_card).exists():
        card = json.loads(Path(model_card).read_text())
        for key, value in _flatten(card.get("metrics", {})).items():
            low = key.lower()
            if "val" in low and "mae" in low and isinstance(value, (int, float)):
                return float(value)
    if train_log is not None and Path(train_log).exists():
        log = pd.read_csv(train_log, sep="\t", na_values=["n/a", "NA", ""])
        cols = [c for c in log.columns if "val" in c.lower() and "mae" in c.lower()]
        if cols:
            values = pd.to_numeric(log[cols[0]], errors="coerce").dropna()
            if len(values):
                return float(values.min())
    return math.nan


def validation_maes(train_logs: Sequence[str | Path]) -> dict[str, float]:
    """{model: validation MAE} from results/models/<model>/train_log.tsv files (model_card.json
    beside each one is preferred when present)."""
    return {Path(p).parent.name: validation_mae(p, Path(p).parent / "model_card.json") for p in train_logs}


def select_best(candidates: Sequence[str], val_mae: Mapping[str, float]) -> tuple[str | None, str]:
    """The candidate with the lowest validation MAE, and how it was chosen.

    Never the test MAE: choosing on the test split would bias the reported test accuracy.
    Ties keep config order; without any validation MAE the first configured candidate is taken
    (and the reason says so).
    """
    if not candidates:
        return None, "no candidate"
    scored = [(val_mae.get(c, math.nan), i, c) for i, c in enumerate(candidates)]
    scored = [s for s in scored if np.isfinite(s[0])]
    if scored:
        return min(scored)[2], "lowest validation MAE"
    return candidates[0], "first configured (no validation MAE recorded)"


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out
