"""Per-subject prediction intervals: split-conformal, from held-out residuals.

Split conformal prediction (Vovk et al. 2005; Lei et al. 2018): given the absolute residuals
``|predicted - age|`` of ``n`` calibration subjects the model never trained on (a fixed split's
validation subjects, or a cross-validation's out-of-fold subjects), the interval
``predicted +- q`` with ``q`` the ``ceil((n + 1) * level)``-th smallest residual covers the age
of a new subject from the same population with probability at least ``level`` (and at most
``level + 1 / (n + 1)``), whatever the model, as long as calibration and new subjects are
exchangeable. With fewer than ``1 / (1 - level) - 1`` calibration subjects ``q`` is infinite:
no finite interval can promise the level.

``conditional: predicted_age`` (Mondrian conformal) calibrates separately within bins of the
predicted age (quantile bins of the calibration predictions, each with at least
``MIN_PER_BIN`` subjects, at most ``MAX_BINS`` bins): a model that is surer of young heads than
of old ones gets narrower intervals for the young. Bins are of the *predicted* age because a new
scan's age may be unknown.

Cross-validation calibrates each fold's subjects on the *other* folds' out-of-fold residuals
(:func:`calibrate_by_group`): a subject's own residual never sets its own interval, so the
out-of-fold coverage is an honest estimate of a new subject's.

A :class:`Calibration` is plain numbers (``to_meta``/``from_meta``): it travels in model.pt's
``meta["interval"]`` and in the predictions JSON. Numpy only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Calibration", "calibrate", "calibrate_by_group", "conformal_quantile", "coverage", "add_bounds",
           "min_subjects", "settings",
           "LEVEL", "MIN_PER_BIN", "MAX_BINS", "LOWER", "UPPER"]

#: default interval level
LEVEL = 0.9
#: fewest calibration subjects in one predicted-age bin (else fewer bins)
MIN_PER_BIN = 20
#: most predicted-age bins: the 19th of 20 residuals is a noisy quantile, so many small bins
#: buy little conditional coverage for much noisier widths
MAX_BINS = 5
#: the interval columns of a predictions table, right after ``predicted_age``
LOWER, UPPER = "predicted_age_lower", "predicted_age_upper"
CONDITIONAL = (None, "none", "predicted_age")


def conformal_quantile(abs_residuals, level: float = LEVEL) -> float:
    """The split-conformal half-width: the ``ceil((n + 1) * level)``-th smallest absolute residual
    (inf when that rank exceeds n: too few calibration subjects for the level)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level must be between 0 and 1, got {level}")
    r = np.sort(np.abs(np.asarray(abs_residuals, dtype=np.float64)))
    r = r[np.isfinite(r)]
    rank = math.ceil((r.size + 1) * level)
    return float(r[rank - 1]) if rank <= r.size else math.inf


def min_subjects(level: float = LEVEL) -> int:
    """Fewest calibration subjects with a finite half-width at ``level``: ceil((n + 1) level) <= n."""
    n = max(1, math.floor(level / (1.0 - level)) - 1)
    while math.ceil((n + 1) * level) > n:
        n += 1
    return n


def settings(interval: dict | None) -> dict:
    """Config ``infer.interval`` as keyword arguments of :func:`calibrate` (``none`` -> None)."""
    interval = interval or {}
    conditional = interval.get("conditional")
    return {"level": float(interval.get("level", LEVEL)),
            "conditional": None if conditional in (None, "none") else str(conditional)}


@dataclass(frozen=True)
class Calibration:
    """A fitted interval rule: ``predicted +- halfwidth`` (per predicted-age bin when ``edges``)."""

    level: float
    halfwidth: float
    n: int
    #: interior bin edges of the predicted age (empty: one global half-width)
    edges: tuple = ()
    #: half-width of each bin (len(edges) + 1)
    halfwidths: tuple = ()
    method: str = "split-conformal on held-out absolute residuals"

    def widths(self, predicted) -> np.ndarray:
        """Half-width for each predicted age."""
        predicted = np.asarray(predicted, dtype=np.float64)
        if not self.edges:
            return np.full(predicted.shape, self.halfwidth)
        return np.asarray(self.halfwidths, dtype=np.float64)[np.searchsorted(self.edges, predicted, side="right")]

    def bounds(self, predicted) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) of each predicted age."""
        predicted = np.asarray(predicted, dtype=np.float64)
        half = self.widths(predicted)
        return predicted - half, predicted + half

    @property
    def finite(self) -> bool:
        """Whether every half-width is finite (enough calibration subjects for the level)."""
        return bool(np.isfinite([self.halfwidth, *self.halfwidths]).all())

    def to_meta(self) -> dict:
        out = asdict(self)
        out["edges"], out["halfwidths"] = list(self.edges), list(self.halfwidths)
        return out

    @classmethod
    def from_meta(cls, meta: dict | None) -> "Calibration | None":
        if not meta:
            return None
        return cls(float(meta["level"]), float(meta["halfwidth"]), int(meta["n"]),
                   tuple(float(e) for e in meta.get("edges", ())), tuple(float(h) for h in meta.get("halfwidths", ())),
                   str(meta.get("method", cls.method)))


def calibrate(predicted, age, level: float = LEVEL, conditional: str | None = None) -> Calibration:
    """The interval rule from calibration subjects' predictions and ages (held out from training)."""
    if conditional not in CONDITIONAL:
        raise ValueError(f"interval conditional must be none or predicted_age, got {conditional!r}")
    predicted = np.asarray(predicted, dtype=np.float64)
    age = np.asarray(age, dtype=np.float64)
    keep = np.isfinite(predicted) & np.isfinite(age)
    predicted, age = predicted[keep], age[keep]
    residual = np.abs(predicted - age)
    overall = conformal_quantile(residual, level)
    bins = min(predicted.size // MIN_PER_BIN, MAX_BINS) if conditional == "predicted_age" else 1
    if bins < 2:
        return Calibration(level, overall, int(predicted.size))
    edges = tuple(float(e) for e in np.quantile(predicted, np.linspace(0, 1, bins + 1)[1:-1]))
    which = np.searchsorted(edges, predicted, side="right")
    halves = tuple(conformal_quantile(residual[which == b], level) for b in range(bins))
    return Calibration(level, overall, int(predicted.size), edges, halves)


def calibrate_by_group(predicted, age, groups, level: float = LEVEL, conditional: str | None = None) -> dict:
    """Group -> the rule calibrated on every *other* group's subjects (cross-conformal by fold:
    a subject's own group never calibrates its own interval)."""
    predicted, age, groups = np.asarray(predicted, dtype=np.float64), np.asarray(age, dtype=np.float64), np.asarray(groups)
    return {g: calibrate(predicted[groups != g], age[groups != g], level, conditional)
            for g in dict.fromkeys(groups.tolist())}


def add_bounds(table, lower, upper):
    """``table`` (a DataFrame) with :data:`LOWER`, :data:`UPPER` right after ``predicted_age``
    (replacing any already there)."""
    table = table.drop(columns=[c for c in (LOWER, UPPER) if c in table.columns])
    at = table.columns.get_loc("predicted_age") + 1
    table.insert(at, LOWER, np.asarray(lower, dtype=np.float64))
    table.insert(at + 1, UPPER, np.asarray(upper, dtype=np.float64))
    return table


def coverage(age, lower, upper) -> float:
    """Share of subjects whose age lies inside [lower, upper] (nan when none; an infinite bound,
    too few calibration subjects, covers)."""
    age, lower, upper = (np.asarray(a, dtype=np.float64) for a in (age, lower, upper))
    keep = np.isfinite(age) & ~np.isnan(lower) & ~np.isnan(upper)
    return float(np.mean((age[keep] >= lower[keep]) & (age[keep] <= upper[keep]))) if keep.any() else math.nan
