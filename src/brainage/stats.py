"""Statistics of brain-age predictions: accuracy, brain-age gap (BAG), tests, effect sizes, CIs.

The study reports, per model on the healthy (HC) test split, the mean absolute error (MAE +- SD
of the absolute errors) and R2; between models a two-sided paired t-test on the absolute errors
of the same subjects; in AD and PD the mean BAG (BAG = predicted - chronological age) with a
one-sample t-test against 0 and the Pearson correlation of BAG with disease severity
(ADAS-Cog-11 in AD, MDS-UPDRS-III in PD); and the same accuracy in the HC subgroup older than
60 years (Section 3.1.2), the age range of the disease cohorts. Beyond the study: seeded
bootstrap 95 % confidence intervals (scipy's BCa bootstrap) and Cohen's d of BAG between HC and
each disease group.

Every p-value and interval comes from scipy.stats; only the point estimates (means, R2, d) are
written out here. This module also says which configured models play which part in the study
(:func:`model_roles`), so no rule or table hard-codes model names.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from brainage.io import InputError
from brainage.spec import is_classical


def _sps():
    """scipy.stats, imported on first use: the workflow imports this module at parse time
    (model_roles) and scipy.stats alone costs ~1 s of every `snakemake` start."""
    from scipy import stats

    return stats


#: columns every predictions table must hold (the inference stage writes more)
PREDICTION_COLUMNS = ("participant_id", "cohort", "dataset", "sex", "age", "predicted_age", "split")
#: the severity score correlated with BAG in each disease cohort
SEVERITY = {"AD": "adas_cog11", "PD": "updrs3"}
SEVERITY_LABEL = {"adas_cog11": "ADAS-Cog-11", "updrs3": "MDS-UPDRS-III"}


# --------------------------------------------------------------------------- point estimates
def absolute_errors(age: Sequence[float], predicted: Sequence[float]) -> np.ndarray:
    """|predicted - age| per subject: (N,)."""
    age, predicted = _paired_arrays(age, predicted)
    return np.abs(predicted - age)


def mean_absolute_error(age: Sequence[float], predicted: Sequence[float]) -> tuple[float, float]:
    """(MAE, SD of the absolute errors with ddof=1), in years, as the study's "MAE +- SD"."""
    err = absolute_errors(age, predicted)
    return float(err.mean()), _sd(err)


def r_squared(age: Sequence[float], predicted: Sequence[float]) -> float:
    """Coefficient of determination of the predictions, 1 - SS_res / SS_tot.

    This is the R2 of the predictions against the identity line (scikit-learn's ``r2_score``),
    not the squared Pearson r: a biased model is penalised, and R2 can be negative.
    """
    age, predicted = _paired_arrays(age, predicted)
    ss_tot = float(((age - age.mean()) ** 2).sum())
    if len(age) < 2 or ss_tot == 0.0:
        return math.nan
    return 1.0 - float(((age - predicted) ** 2).sum()) / ss_tot


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


# --------------------------------------------------------------------------- subject groups
def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions table (results/predictions/<model>.tsv) with its columns checked.

    ``bag`` is recomputed from predicted_age - age when absent, so a user-supplied table of an
    external model needs only the columns of :data:`PREDICTION_COLUMNS` (``split`` may be absent
    there: every HC row is then taken as test).
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, sep="\t", na_values=["n/a", "NA", ""], dtype={"participant_id": str})
    except (OSError, pd.errors.ParserError) as err:
        raise InputError(f"{path}: cannot read predictions table ({err})") from None
    if "split" not in frame.columns:
        frame["split"] = np.where(frame.get("cohort", "HC") == "HC", "test", frame.get("cohort", "HC"))
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: predictions table lacks column(s) {', '.join(missing)}")
    bad = frame.loc[~np.isfinite(frame["predicted_age"].astype(float)), "participant_id"]
    if len(bad):
        raise InputError(f"{path}: subject {bad.iloc[0]} has no finite predicted_age")
    frame["bag"] = frame["predicted_age"].astype(float) - frame["age"].astype(float)
    return frame


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
    classical: classical baselines (brainage.classical, no network: no saliency), never e2e.
    """

    e2e: tuple[str, ...]
    rnc: tuple[str, ...]
    sfcn: tuple[str, ...]
    sweeps: tuple[tuple[str, ...], ...]
    classical: tuple[str, ...] = ()

    @property
    def sweep_models(self) -> tuple[str, ...]:
        return tuple(name for group in self.sweeps for name in group)


def model_roles(models: Mapping[str, Mapping[str, Any]]) -> ModelRoles:
    """Sort the config ``models:`` entries (name -> backbone, grid, loss, batch_size, ...) by role."""
    models = normalise_models(models)
    e2e, rnc, sfcn, classical = [], [], [], []
    for name, spec in models.items():
        backbone = str(spec.get("backbone", "")).lower()
        loss = str(spec.get("loss", "l1")).lower()
        if is_classical(spec):
            classical.append(name)
        elif backbone == "sfcn":
            sfcn.append(name)
        elif loss == "rnc":
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
    return ModelRoles(tuple(e2e), tuple(rnc), tuple(sfcn), tuple(sweeps), tuple(classical))


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


# --------------------------------------------------------------------------- helpers
def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (familywise error over the finite ones; NaN stays NaN):
    sorted ascending, p_(i) * (m - i + 1), made monotone, capped at 1."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok):
        order = ok[np.argsort(p[ok], kind="stable")]
        m = len(order)
        adjusted = np.maximum.accumulate(p[order] * (m - np.arange(m)))
        out[order] = np.minimum(adjusted, 1.0)
    return out


def _paired_arrays(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {b.shape}")
    return a, b


def _sd(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if len(x) >= 2 else math.nan


def _abs_error_frame(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame[["participant_id"]].copy()
    out["abs_error"] = np.abs(frame["predicted_age"].astype(float) - frame["age"].astype(float))
    return out


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
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
