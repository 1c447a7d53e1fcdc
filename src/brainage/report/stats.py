"""Statistics of brain-age predictions: accuracy, brain-age gap (BAG), tests, effect sizes, CIs.

The study reports, per model on the healthy (HC) test split, the mean absolute error (MAE +- SD
of the absolute errors) and R2; between models a two-sided paired t-test on the absolute errors
of the same subjects; in AD and PD the mean BAG (BAG = predicted - chronological age) with a
one-sample t-test against 0 and the Pearson correlation of BAG with disease severity
(ADAS-Cog-11 in AD, MDS-UPDRS-III in PD); and the same accuracy in the HC subgroup older than
60 years (Section 3.1.2), the age range of the disease cohorts. Beyond the study: seeded
bootstrap 95 % confidence intervals (scipy's BCa bootstrap), Cohen's d of BAG between HC and
each disease group, the coverage and width of the per-subject prediction intervals
(brainage.core.intervals) and the mean BAG at the two ends of the age range (edge bias).

Every p-value and interval comes from scipy.stats; only the point estimates (means, R2, d) are
written out here. This module also says which configured models play which part in the study
(:func:`model_roles`), so no rule or table hard-codes model names.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from brainage.core.metrics import (  # noqa: F401  (re-exported: the report's statistics)
    PREDICTION_COLUMNS,
    _paired_arrays,
    _sd,
    absolute_errors,
    holm,
    mean_absolute_error,
    r_squared,
    read_predictions,
)
from brainage.core.intervals import LOWER, UPPER
from brainage.core.intervals import coverage as interval_coverage
from brainage.report.roles import (  # noqa: F401  (re-exported)
    ModelRoles,
    model_roles,
    normalise_models,
    select_best,
    validation_mae,
    validation_maes,
)


def _sps():
    """scipy.stats, imported on first use: the workflow imports this module at parse time
    (model_roles) and scipy.stats alone costs ~1 s of every `snakemake` start."""
    from scipy import stats

    return stats


#: the severity score correlated with BAG in each disease cohort
SEVERITY = {"AD": "adas_cog11", "PD": "updrs3"}
SEVERITY_LABEL = {"adas_cog11": "ADAS-Cog-11", "updrs3": "MDS-UPDRS-III"}


# --------------------------------------------------------------------------- point estimates
def gap_summary(bag: Sequence[float]) -> tuple[float, float]:
    """(mean BAG, SD of BAG with ddof=1), in years."""
    bag = np.asarray(bag, dtype=float)
    return float(bag.mean()) if len(bag) else math.nan, _sd(bag)


def cohens_d(group: Sequence[float], reference: Sequence[float]) -> float:
    """Cohen's d of ``group`` against ``reference`` with the pooled SD (Cohen 1988).

    d = (mean(group) - mean(reference)) / s_pooled,
    s_pooled^2 = ((n1 - 1) s1^2 + (n2 - 1) s2^2) / (n1 + n2 - 2). Positive when the group's BAG is
    larger (an "older-looking" brain than the reference).
    """
    a, b = np.asarray(group, dtype=float), np.asarray(reference, dtype=float)
    n1, n2 = len(a), len(b)
    if n1 < 2 or n2 < 2:
        return math.nan
    pooled = ((n1 - 1) * a.var(ddof=1) + (n2 - 1) * b.var(ddof=1)) / (n1 + n2 - 2)
    if pooled == 0:
        return math.nan
    return float((a.mean() - b.mean()) / math.sqrt(pooled))


# --------------------------------------------------------------------------- tests
@dataclass(frozen=True)
class TestResult:
    """A t-test: statistic, two-sided p-value, degrees of freedom, number of subjects."""

    statistic: float
    pvalue: float
    df: float
    n: int


@dataclass(frozen=True)
class Correlation:
    """Pearson correlation: r, two-sided p-value, number of complete pairs."""

    r: float
    pvalue: float
    n: int


_NAN_TEST = TestResult(math.nan, math.nan, math.nan, 0)


def paired_error_test(a: pd.DataFrame, b: pd.DataFrame) -> TestResult:
    """Two-sided paired t-test on the absolute errors of two models on the same subjects.

    ``a`` and ``b`` are prediction tables (participant_id, age, predicted_age); they are paired
    on participant_id (subjects present in only one table are left out).
    """
    merged = _abs_error_frame(a).merge(_abs_error_frame(b), on="participant_id", suffixes=("_a", "_b"))
    if len(merged) < 2:
        return _NAN_TEST
    if np.allclose(merged["abs_error_a"], merged["abs_error_b"]):
        return TestResult(0.0, 1.0, len(merged) - 1, len(merged))  # identical errors: no difference
    res = _sps().ttest_rel(merged["abs_error_a"], merged["abs_error_b"])
    return TestResult(float(res.statistic), float(res.pvalue), float(res.df), len(merged))


def bag_vs_zero(bag: Sequence[float]) -> TestResult:
    """Two-sided one-sample t-test of the mean BAG against 0."""
    bag = np.asarray(bag, dtype=float)
    bag = bag[np.isfinite(bag)]
    if len(bag) < 2 or np.ptp(bag) == 0:
        return TestResult(math.nan, math.nan, math.nan, len(bag))
    res = _sps().ttest_1samp(bag, popmean=0.0)
    return TestResult(float(res.statistic), float(res.pvalue), float(res.df), len(bag))


def severity_correlation(bag: Sequence[float], score: Sequence[float]) -> Correlation:
    """Pearson r and two-sided p of BAG with a severity score; subjects without a score are left out."""
    bag, score = np.asarray(bag, dtype=float), np.asarray(score, dtype=float)
    keep = np.isfinite(bag) & np.isfinite(score)
    bag, score = bag[keep], score[keep]
    if len(bag) < 3 or np.ptp(bag) == 0 or np.ptp(score) == 0:
        return Correlation(math.nan, math.nan, int(keep.sum()))
    res = _sps().pearsonr(bag, score)
    return Correlation(float(res.statistic), float(res.pvalue), len(bag))


# --------------------------------------------------------------------------- bootstrap
def bootstrap_ci(
    statistic: Callable[..., np.ndarray],
    *samples: Sequence[float],
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Seeded BCa bootstrap interval of ``statistic`` over subjects (scipy.stats.bootstrap).

    ``samples`` are paired per subject (resampled together); ``statistic(*samples, axis)`` must
    be vectorised over ``axis``. Returns (nan, nan) when the interval is undefined (fewer than 3
    subjects, or a degenerate resampling distribution).
    """
    arrays = [np.asarray(s, dtype=float) for s in samples]
    if n_resamples <= 0 or len(arrays[0]) < 3:
        return math.nan, math.nan
    with warnings.catch_warnings():
        # degenerate resamples (e.g. constant scores) make BCa warn and return nan: reported as nan
        warnings.simplefilter("ignore")
        try:
            res = _sps().bootstrap(
                tuple(arrays),
                statistic,
                n_resamples=n_resamples,
                paired=True,
                vectorized=True,
                confidence_level=confidence,
                method="BCa",
                rng=np.random.default_rng(seed),
            )
        except (ValueError, FloatingPointError):
            return math.nan, math.nan
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mae_stat(age: np.ndarray, pred: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.abs(pred - age).mean(axis=axis)


def _r2_stat(age: np.ndarray, pred: np.ndarray, axis: int = -1) -> np.ndarray:
    ss_res = ((age - pred) ** 2).sum(axis=axis)
    ss_tot = ((age - age.mean(axis=axis, keepdims=True)) ** 2).sum(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - ss_res / ss_tot


def _mean_stat(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x.mean(axis=axis)


def _pearson_stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    xc = x - x.mean(axis=axis, keepdims=True)
    yc = y - y.mean(axis=axis, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (xc * yc).sum(axis=axis) / np.sqrt((xc**2).sum(axis=axis) * (yc**2).sum(axis=axis))


# --------------------------------------------------------------------------- summaries
@dataclass
class Accuracy:
    """Accuracy of one model on one group of subjects (ages in years)."""

    n: int
    mae: float
    mae_sd: float
    mae_ci: tuple[float, float]
    r2: float
    r2_ci: tuple[float, float]
    bag_mean: float
    bag_sd: float
    bag_ci: tuple[float, float]
    bag_test: TestResult = field(default=_NAN_TEST)


def accuracy(frame: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> Accuracy:
    """MAE +- SD, R2, mean BAG +- SD (each with a bootstrap 95 % CI) and the BAG one-sample test."""
    age = frame["age"].to_numpy(dtype=float)
    pred = frame["predicted_age"].to_numpy(dtype=float)
    bag = pred - age
    mae, mae_sd = mean_absolute_error(age, pred) if len(age) else (math.nan, math.nan)
    bag_mean, bag_sd = gap_summary(bag)
    return Accuracy(
        n=len(age),
        mae=mae,
        mae_sd=mae_sd,
        mae_ci=bootstrap_ci(_mae_stat, age, pred, n_resamples=n_resamples, seed=seed),
        r2=r_squared(age, pred) if len(age) else math.nan,
        r2_ci=bootstrap_ci(_r2_stat, age, pred, n_resamples=n_resamples, seed=seed),
        bag_mean=bag_mean,
        bag_sd=bag_sd,
        bag_ci=bootstrap_ci(_mean_stat, bag, n_resamples=n_resamples, seed=seed),
        bag_test=bag_vs_zero(bag),
    )


def correlation_ci(
    bag: Sequence[float], score: Sequence[float], n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap 95 % CI of Pearson r between BAG and a severity score (complete pairs only)."""
    bag, score = np.asarray(bag, dtype=float), np.asarray(score, dtype=float)
    keep = np.isfinite(bag) & np.isfinite(score)
    return bootstrap_ci(_pearson_stat, bag[keep], score[keep], n_resamples=n_resamples, seed=seed)


# --------------------------------------------------------------------------- intervals and edges
@dataclass(frozen=True)
class IntervalSummary:
    """How the per-subject prediction intervals of a group did: the share whose age lies inside
    [lower, upper] and the median full width (upper - lower), in years; nan without intervals."""

    n: int
    coverage: float
    width_median: float


def interval_summary(frame: pd.DataFrame) -> IntervalSummary:
    """:class:`IntervalSummary` of ``frame`` (nan when it has no interval columns: an older table)."""
    if not {LOWER, UPPER} <= set(frame.columns) or not len(frame):
        return IntervalSummary(len(frame), math.nan, math.nan)
    lower = pd.to_numeric(frame[LOWER], errors="coerce").to_numpy(float)
    upper = pd.to_numeric(frame[UPPER], errors="coerce").to_numpy(float)
    width = upper - lower
    width = width[~np.isnan(width)]
    return IntervalSummary(len(frame), interval_coverage(frame["age"], lower, upper),
                           float(np.median(width)) if width.size else math.nan)


def edge_bias(frame: pd.DataFrame, share: float = 0.1) -> tuple[float, float, int]:
    """(mean BAG of the youngest ``share``, of the oldest ``share``, subjects in each) by
    chronological age, at least one subject each: the regression-to-the-mean signature of a
    brain-age model (the young predicted older, the old younger)."""
    age = frame["age"].to_numpy(dtype=float)
    bag = frame["predicted_age"].to_numpy(dtype=float) - age
    keep = np.isfinite(bag)
    age, bag = age[keep], bag[keep]
    if not age.size:
        return math.nan, math.nan, 0
    k = max(1, int(round(share * age.size)))
    order = np.argsort(age, kind="stable")
    return float(bag[order[:k]].mean()), float(bag[order[-k:]].mean()), k


# --------------------------------------------------------------------------- subject groups
def healthy_test(frame: pd.DataFrame, older_than: float | None = None) -> pd.DataFrame:
    """HC subjects of the test split; with ``older_than``, only those strictly older.

    A table without a ``split`` column (an external model's) counts every HC row as test.
    """
    in_test = frame["split"] == "test" if "split" in frame else True
    sub = frame[(frame["cohort"] == "HC") & in_test]
    if older_than is not None:
        sub = sub[sub["age"] > older_than]
    return sub


#: the age-bias-corrected BAG column the inference stage adds with ``infer.bias_correction``
CORRECTED_BAG = "bag_corrected"


def has_corrected_gap(frame: pd.DataFrame) -> bool:
    """Whether a predictions table holds an age-bias-corrected BAG (:data:`CORRECTED_BAG`) with
    at least one finite value; raw BAG stays the primary measure, as in the study."""
    return CORRECTED_BAG in frame and bool(np.isfinite(pd.to_numeric(frame[CORRECTED_BAG], errors="coerce")).any())


def disease_group(frame: pd.DataFrame, cohort: str) -> pd.DataFrame:
    """All subjects of a disease cohort (AD or PD): never trained on, so all are held out."""
    return frame[frame["cohort"] == cohort]


def absent_cohorts(frames: Sequence[pd.DataFrame]) -> list[str]:
    """The disease cohorts (AD, PD) with no subject in any of ``frames``: a healthy-only study."""
    return [c for c in SEVERITY if not any((f["cohort"] == c).any() for f in frames)]


def absent_line(absent: Sequence[str]) -> str:
    """One line naming what a cohort lacks, for tables, figures and the report (empty when nothing is absent)."""
    return f"No {' or '.join(absent)} subjects in this cohort" if absent else ""


# --------------------------------------------------------------------------- model roles
# --------------------------------------------------------------------------- helpers
def _abs_error_frame(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame[["participant_id"]].copy()
    out["abs_error"] = np.abs(frame["predicted_age"].astype(float) - frame["age"].astype(float))
    return out


# ---------------------------------------------------------------------------------------------
# Gap recovery (simulated cohorts): does the predicted brain-age gap recover the true one?

#: the subject sets compared with the simulator's truth: HC test split, AD, PD
GAP_GROUPS = (("HC test", "HC"), ("AD", "AD"), ("PD", "PD"))


@dataclass(frozen=True)
class GapRecovery:
    """Predicted against true BAG of one subject set: Pearson r (two-sided p), the least-squares
    slope of predicted on true BAG, and the mean predicted BAG with its 95 % t-interval next to
    the mean true BAG."""

    n: int
    true_mean: float
    predicted_mean: float
    ci_low: float
    ci_high: float
    r: float
    p: float
    slope: float


def gap_recovery(true_bag: Sequence[float], predicted_bag: Sequence[float]) -> GapRecovery:
    """:class:`GapRecovery` of paired BAGs (missing pairs dropped; r and slope need 3 subjects
    and some spread of the true BAG, else NaN)."""
    sps = _sps()
    true, pred = _paired_arrays(true_bag, predicted_bag)
    keep = np.isfinite(true) & np.isfinite(pred)
    true, pred = true[keep], pred[keep]
    n = len(true)
    if n == 0:
        return GapRecovery(0, *([math.nan] * 7))
    mean = float(pred.mean())
    if n > 1:
        half = float(sps.t.ppf(0.975, n - 1) * pred.std(ddof=1) / math.sqrt(n))
        low, high = mean - half, mean + half
    else:
        low = high = math.nan
    r = p = slope = math.nan
    if n >= 3 and np.ptp(true) > 0 and np.ptp(pred) > 0:
        fit = sps.linregress(true, pred)
        r, p, slope = float(fit.rvalue), float(fit.pvalue), float(fit.slope)
    return GapRecovery(n, float(true.mean()), mean, low, high, r, p, slope)


def gap_groups(frame: pd.DataFrame):
    """``(label, rows)`` of the HC test split, AD and PD of a predictions table with ``true_bag``."""
    for label, cohort in GAP_GROUPS:
        rows = healthy_test(frame) if cohort == "HC" else disease_group(frame, cohort)
        yield label, rows
