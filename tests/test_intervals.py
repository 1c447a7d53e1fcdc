"""Per-subject prediction intervals (split conformal, brainage.core.intervals) and where they are
reported: the fixed split's predictions (calibrated on validation), the cross-validation's
out-of-fold table (each fold calibrated on the other folds only), Table 2 and the figure.

Expectations are independent of the code: the Gaussian quantile for a known noise, the textbook
rank ceil((n + 1) * level), residuals sorted by hand."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from brainage.apply.infer import predictions_table
from brainage.core.intervals import (
    LOWER,
    UPPER,
    Calibration,
    add_bounds,
    calibrate,
    calibrate_by_group,
    conformal_quantile,
    coverage,
    min_subjects,
)
from brainage.data.cv import merge_folds
from brainage.report.tables import table2_accuracy

Z90 = 1.6448536269514722  # the standard normal's 0.95 quantile: |N(0, s)| <= Z90 s with probability 0.9


def _textbook(residuals, level):
    """The ceil((n + 1) level)-th smallest |residual| (inf past n), computed by hand."""
    r = sorted(abs(float(x)) for x in residuals)
    rank = math.ceil((len(r) + 1) * level)
    return r[rank - 1] if rank <= len(r) else math.inf


# --------------------------------------------------------------------------- the conformal rule
def test_conformal_quantile_is_the_textbook_rank():
    residuals = [5, -1, 9, 3, -7, 2, 8, 4, 6]  # |r| = 1..9, shuffled, signs that must not matter
    assert conformal_quantile(residuals, 0.8) == 8  # ceil(10 * 0.8) = 8th smallest
    assert conformal_quantile(residuals, 0.9) == 9  # ceil(10 * 0.9) = 9th
    assert conformal_quantile(residuals, 0.5) == 5  # ceil(10 * 0.5) = 5th
    assert conformal_quantile(residuals, 0.95) == math.inf  # rank 10 > 9 subjects
    assert conformal_quantile([], 0.9) == math.inf
    assert conformal_quantile(range(1, 9), 0.9) == math.inf  # 8 subjects: ceil(9 * 0.9) = 9 > 8
    with pytest.raises(ValueError, match="between 0 and 1"):
        conformal_quantile(residuals, 1.0)


@pytest.mark.parametrize("level", [0.5, 0.8, 0.9, 0.95])
def test_min_subjects_is_the_first_finite_half_width(level):
    n = min_subjects(level)
    assert conformal_quantile(np.arange(1, n + 1), level) < math.inf
    assert conformal_quantile(np.arange(1, n), level) == math.inf


def test_coverage_and_half_width_on_gaussian_noise():
    """predicted = age + N(0, sigma): the 90 % interval covers 90 % of fresh subjects and its
    half-width is the Gaussian 1.645 sigma. Coverage is a promise over calibration draws, so it is
    averaged over 10 independent calibrations of 500 subjects (each checked loosely too)."""
    rng = np.random.default_rng(20240901)
    sigma = 5.0
    covered, halves = [], []
    for _ in range(10):
        age = rng.uniform(20, 80, 500)
        cal = calibrate(age + rng.normal(0, sigma, age.size), age, level=0.9)
        fresh = rng.uniform(20, 80, 20000)
        pred = fresh + rng.normal(0, sigma, fresh.size)
        covered.append(coverage(fresh, *cal.bounds(pred)))
        halves.append(cal.halfwidth)
        assert 0.86 <= covered[-1] <= 0.94 and abs(cal.halfwidth / (Z90 * sigma) - 1) < 0.15
    print(f"gaussian: coverage {np.mean(covered):.4f} (each {min(covered):.3f}-{max(covered):.3f}), "
          f"half-width / 1.645 sigma {np.median(halves) / (Z90 * sigma):.3f}")
    assert 0.88 <= np.mean(covered) <= 0.92
    assert abs(np.median(halves) / (Z90 * sigma) - 1) < 0.10


def test_predicted_age_bins_cover_the_old_where_one_width_does_not():
    """Noise that grows with age (sigma 1 y at 20 to 10 y at 80): one global width under-covers the
    oldest predicted-age bin; ``conditional: predicted_age`` covers every bin (mean over 10
    calibrations of 500, each checked on 20000 fresh subjects)."""
    rng = np.random.default_rng(7)

    def draw(n):
        age = rng.uniform(20, 80, n)
        return age, age + rng.normal(0, 1 + 0.15 * (age - 20))

    per_bin, global_top = [], []
    for _ in range(10):
        age, pred = draw(500)
        one, binned = calibrate(pred, age, 0.9), calibrate(pred, age, 0.9, conditional="predicted_age")
        assert len(binned.halfwidths) >= 2 and binned.halfwidths[-1] > binned.halfwidths[0]
        fresh, fresh_pred = draw(20000)
        which = np.searchsorted(binned.edges, fresh_pred, side="right")
        per_bin.append([coverage(fresh[which == b], *binned.bounds(fresh_pred[which == b])) for b in range(len(binned.halfwidths))])
        top = which == len(binned.halfwidths) - 1
        global_top.append(coverage(fresh[top], *one.bounds(fresh_pred[top])))
    per_bin = np.mean(per_bin, axis=0)
    print(f"heteroscedastic: per-bin coverage {np.round(per_bin, 3)}, global rule in the oldest bin {np.mean(global_top):.3f}")
    assert (per_bin >= 0.85).all()
    assert np.mean(global_top) < 0.85


def test_calibration_round_trips_through_meta_and_inf_is_kept():
    cal = calibrate(np.arange(100.0), np.arange(100.0) + np.tile([1.0, -2.0, 3.0, -4.0], 25), 0.9, "predicted_age")
    again = Calibration.from_meta(cal.to_meta())
    assert again == cal and Calibration.from_meta(None) is None
    tiny = calibrate([50.0, 60.0], [51.0, 58.0], 0.9)
    assert tiny.halfwidth == math.inf and not tiny.finite and tiny.n == 2
    lower, upper = tiny.bounds([40.0])
    assert lower[0] == -math.inf and upper[0] == math.inf
    assert coverage([40.0], lower, upper) == 1.0  # an unbounded interval covers


def test_calibrate_by_group_leaves_each_group_out():
    pred = np.arange(30.0)
    age = pred + np.r_[np.full(10, 1.0), np.full(10, 5.0), np.full(10, 9.0)]
    groups = np.repeat(["a", "b", "c"], 10)
    by = calibrate_by_group(pred, age, groups, level=0.4)  # rank ceil(21 * 0.4) = 9 of the 20 others
    assert by["a"].halfwidth == _textbook(np.r_[np.full(10, 5.0), np.full(10, 9.0)], 0.4) == 5.0
    assert by["c"].halfwidth == _textbook(np.r_[np.full(10, 1.0), np.full(10, 5.0)], 0.4) == 1.0
    assert by["a"].n == by["b"].n == by["c"].n == 20


def test_add_bounds_puts_the_columns_after_the_prediction():
    table = pd.DataFrame({"participant_id": ["x"], "predicted_age": [50.0], "bag": [1.0]})
    out = add_bounds(table, [45.0], [55.0])
    assert list(out.columns) == ["participant_id", "predicted_age", LOWER, UPPER, "bag"]
    again = add_bounds(out, [40.0], [60.0])  # replaced, not doubled
    assert list(again.columns) == list(out.columns) and again[LOWER].iloc[0] == 40.0


# --------------------------------------------------------------------------- fixed split
class MeanIntensityAge(nn.Module):
    """age = 100 x the mean voxel value: predictions known by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, D, H, W) -> (B,)
        return 100.0 * x.mean(dim=(1, 2, 3, 4))


def _fixed_split(n_val: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    split = ["train"] * 10 + ["val"] * n_val + ["test"] * 15 + ["AD"] * 4 + ["PD"] * 4
    n = len(split)
    ids = [f"sub-{k:03d}" for k in range(n)]
    age = rng.uniform(25, 85, n).round(1)
    participants = pd.DataFrame({"participant_id": ids, "dataset": "sim", "age": age, "sex": rng.choice(["F", "M"], n),
                                 "cohort": [s if s in ("AD", "PD") else "HC" for s in split]})
    predicted = age + rng.normal(0, 4, n)
    volumes = {pid: np.full((4, 5, 4), p / 100.0, dtype=np.float32) for pid, p in zip(ids, predicted)}
    return participants, pd.DataFrame({"participant_id": ids, "split": split}), volumes, dict(zip(ids, predicted))


def test_fixed_split_interval_is_calibrated_on_validation_only():
    participants, splits, volumes, predicted = _fixed_split(n_val=30)
    table, info = predictions_table(MeanIntensityAge(), participants, splits, volumes.__getitem__, level=0.9)
    assert list(table.columns[table.columns.get_loc("predicted_age"):][:3]) == ["predicted_age", LOWER, UPPER]
    assert set(table["split"]) == {"test", "AD", "PD"}
    assert (table[LOWER] <= table["predicted_age"]).all() and (table["predicted_age"] <= table[UPPER]).all()
    age = participants.set_index("participant_id")["age"]
    val_ids = splits.loc[splits["split"] == "val", "participant_id"]
    expected = _textbook([predicted[p] - age[p] for p in val_ids], 0.9)
    np.testing.assert_allclose(table[UPPER] - table["predicted_age"], expected, atol=1e-4)
    np.testing.assert_allclose(table["predicted_age"] - table[LOWER], expected, atol=1e-4)
    assert info["interval"]["n"] == 30 and info["interval"]["level"] == 0.9
    assert info["interval"]["halfwidth"] == pytest.approx(expected, abs=1e-4)


def test_too_few_validation_subjects_give_an_unbounded_interval_and_one_warning(caplog):
    participants, splits, volumes, _ = _fixed_split(n_val=5)
    with caplog.at_level(logging.WARNING, logger="brainage.apply.infer"):
        table, info = predictions_table(MeanIntensityAge(), participants, splits, volumes.__getitem__)
    assert (table[LOWER] == -math.inf).all() and (table[UPPER] == math.inf).all()
    assert info["interval"]["halfwidth"] == math.inf
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "too few" in warnings[0].getMessage()


# --------------------------------------------------------------------------- cross-validation
def _folds(predicted, n_hc: int = 100, k: int = 5, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Fold tables of one repeat: fold f tests the controls i with i % k == f; every fold predicts
    the patients. ``predicted(fold, id, age)``: the predicted age."""
    rng = np.random.default_rng(seed)
    ages = dict(zip([f"sub-{i:03d}" for i in range(n_hc)] + ["sub-AD1", "sub-PD1"], rng.uniform(20, 85, n_hc + 2)))
    tables = {}
    for f in range(k):
        ids = [f"sub-{i:03d}" for i in range(n_hc) if i % k == f] + ["sub-AD1", "sub-PD1"]
        split = ["test"] * (len(ids) - 2) + ["AD", "PD"]
        t = pd.DataFrame({"participant_id": ids, "cohort": [s if s != "test" else "HC" for s in split], "dataset": "sim",
                          "sex": "F", "age": [ages[p] for p in ids], "split": split})
        t["predicted_age"] = [predicted(f"r0f{f}", p, ages[p]) for p in ids]
        t["bag"] = t["predicted_age"] - t["age"]
        tables[f"r0f{f}"] = t
    return tables


def _noisy(scale_in: dict):
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 5, 1000)

    def predicted(fold, pid, age):
        i = int(pid[4:]) if pid[4:].isdigit() else 999
        return age + noise[i] * scale_in.get(fold, 1.0)

    return predicted


def _half(merged: pd.DataFrame, fold: str) -> float:
    rows = merged[merged["fold_r0"] == fold]
    half = (rows[UPPER] - rows["predicted_age"]).to_numpy()
    np.testing.assert_allclose(half, half[0])
    return float(half[0])


def test_a_folds_own_residuals_never_calibrate_its_interval():
    before, info = merge_folds(_folds(_noisy({})), level=0.9)
    after, _ = merge_folds(_folds(_noisy({"r0f2": 4.0})), level=0.9)  # fold 2's errors four times larger
    assert _half(after, "r0f2") == pytest.approx(_half(before, "r0f2"))
    for fold in ("r0f0", "r0f1", "r0f3", "r0f4"):
        assert _half(after, fold) > _half(before, fold) + 0.1
    # each fold's half-width is the textbook rank of the other folds' out-of-fold residuals
    hc = before[before["split"] == "test"]
    for fold in ("r0f0", "r0f2"):
        others = hc[hc["fold_r0"] != fold]
        assert _half(before, fold) == pytest.approx(_textbook(others["predicted_age"] - others["age"], 0.9))
        assert info["interval"]["folds"][fold]["halfwidth"] == pytest.approx(_half(before, fold))
        assert info["interval"]["folds"][fold]["n"] == len(others)
    # patients (and the JSON's deployable rule) use every healthy subject
    every = _textbook(hc["predicted_age"] - hc["age"], 0.9)
    patients = before[before["split"] != "test"]
    np.testing.assert_allclose(patients[UPPER] - patients["predicted_age"], every)
    np.testing.assert_allclose(patients["predicted_age"] - patients[LOWER], every)
    assert info["interval"]["halfwidth"] == pytest.approx(every) and info["interval"]["n"] == 100
    cols = list(before.columns)
    assert cols[cols.index("predicted_age") + 1: cols.index("predicted_age") + 3] == [LOWER, UPPER]


def test_out_of_fold_intervals_replace_the_folds_own_and_cover():
    tables = _folds(_noisy({}))
    for t in tables.values():  # each fold's own (validation) interval, as predict_cohort writes it
        t.insert(t.columns.get_loc("predicted_age") + 1, LOWER, t["predicted_age"] - 1.0)
        t.insert(t.columns.get_loc(LOWER) + 1, UPPER, t["predicted_age"] + 1.0)
    merged, info = merge_folds(tables, level=0.8, conditional="predicted_age")
    assert list(merged.columns).count(LOWER) == 1
    assert (merged[UPPER] - merged["predicted_age"] > 1.0).all()
    hc = merged[merged["split"] == "test"]
    oof = coverage(hc["age"], hc[LOWER], hc[UPPER])
    print(f"cross-validation: out-of-fold coverage {oof:.3f} at level 0.8 (n=100)")
    assert 0.65 <= oof <= 0.95
    assert info["interval"]["level"] == 0.8


def test_merge_folds_without_enough_subjects_writes_inf(caplog):
    # 10 controls: 9 are enough for all (patients finite), the 8 outside a fold are not
    with caplog.at_level(logging.WARNING, logger="brainage.data.cv"):
        merged, info = merge_folds(_folds(_noisy({}), n_hc=10, k=5), level=0.9)
    hc = merged["split"] == "test"
    assert np.isinf(merged.loc[hc, UPPER]).all() and np.isfinite(merged.loc[~hc, UPPER]).all()
    assert info["interval"]["halfwidth"] < math.inf and info["interval"]["folds"]["r0f0"]["halfwidth"] == math.inf
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    merged, info = merge_folds(_folds(_noisy({}), n_hc=5, k=5), level=0.9)
    assert np.isinf(merged[UPPER]).all() and info["interval"]["halfwidth"] == math.inf


# --------------------------------------------------------------------------- Table 2
def _predictions(ages, predicted, half):
    n = len(ages)
    frame = pd.DataFrame({"participant_id": [f"s{i}" for i in range(n)], "cohort": "HC", "dataset": "sim", "sex": "F",
                          "age": ages, "predicted_age": predicted, "split": "test"})
    frame["bag"] = frame["predicted_age"] - frame["age"]
    return add_bounds(frame, frame["predicted_age"] - half, frame["predicted_age"] + half)


def test_table2_reports_coverage_width_and_edge_bias():
    ages = np.arange(20.0, 40.0)  # 20 subjects: the youngest and oldest 10 % are 2 each
    bag = np.r_[[4.0, 2.0], np.zeros(14), [1.0, 2.0], [-3.0, -5.0]]
    with_pi = _predictions(ages, ages + bag, half=np.r_[np.full(10, 3.0), np.full(10, 1.5)])
    with_pi.attrs["interval_level"] = 0.9
    old = with_pi.drop(columns=[LOWER, UPPER])
    table = table2_accuracy({"new": with_pi, "old": old}, {}, n_resamples=0)
    row = table.data.set_index("model").loc["new"]
    # covered: |bag| <= half -> young half: 4 > 3 misses; old half: 2 > 1.5, 3, 5 miss
    assert row["interval_coverage"] == pytest.approx(16 / 20)
    assert row["interval_width_median"] == pytest.approx(np.median(np.r_[np.full(10, 6.0), np.full(10, 3.0)]))
    assert row["bag_youngest"] == pytest.approx(3.0) and row["bag_oldest"] == pytest.approx(-4.0) and row["n_edge"] == 2
    display = table.display.set_index("Model")
    assert display.loc["new", "Coverage (90 % PI)"] == "0.80"
    assert display.loc["old", "Coverage (90 % PI)"] == "n/a" and display.loc["old", "PI width, median (years)"] == "n/a"
    assert display.loc["new", "BAG oldest 10 % (years)"] == "-4.00"
    # the old table's edge bias needs no interval; the headline MAE is unchanged by the new columns
    assert display.loc["old", "BAG youngest 10 % (years)"] == "+3.00"
    assert table.data.set_index("model").loc["old", "mae"] == pytest.approx(np.abs(bag).mean())
    assert "Coverage" in table.markdown() and any("split-conformal" in n for n in table.notes)


def test_table2_edge_bias_takes_at_least_one_subject():
    frame = _predictions(np.array([30.0, 50.0, 70.0]), np.array([35.0, 50.0, 66.0]), half=math.inf)
    row = table2_accuracy({"m": frame}, {}, n_resamples=0).data.iloc[0]
    assert row["n_edge"] == 1 and row["bag_youngest"] == 5.0 and row["bag_oldest"] == -4.0
    assert row["interval_coverage"] == 1.0 and row["interval_width_median"] == math.inf
    assert table2_accuracy({"m": frame}, {}, n_resamples=0).display["PI width, median (years)"].iloc[0] == "unbounded"


# --------------------------------------------------------------------------- figure
def test_pred_vs_age_draws_intervals_and_tables_without_them(tmp_path):
    from brainage.report.figures import fig_pred_vs_age

    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 80, 30)
    finite = _predictions(ages, ages + rng.normal(0, 4, 30), half=6.5)
    finite.attrs["interval_level"] = 0.9
    unbounded = _predictions(ages, ages + rng.normal(0, 4, 30), half=math.inf)
    old = finite.drop(columns=[LOWER, UPPER])
    out = [tmp_path / "f.png", tmp_path / "f.svg"]
    fig_pred_vs_age({"a": finite, "b": unbounded, "c": old}, {"a": "#1f77b4", "b": "#ff7f0e", "c": "#2ca02c"}, out)
    assert all(p.stat().st_size > 0 for p in out)
    svg = out[1].read_text()
    assert "90 % PI" in svg and "unbounded" in svg
