"""Cross-validation for small cohorts (training.splits.scheme: kfold): the fold tables, the
out-of-fold predictions table and Table 2's per-fold figures, checked against what k-fold
cross-validation means (each subject tested once per repeat, never by a model that saw it)
and against scikit-learn's metrics computed independently."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_absolute_error, r2_score

from brainage.data.cv import fold_accuracy, merge_folds
from brainage.core.io import InputError
from brainage.data.splits import fold_names, make_cv_splits, splits_from_config
from brainage.report.tables import table2_accuracy


def _cohort(n_hc=57, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"sub-{i:03d}" for i in range(n_hc)]
    return pd.DataFrame({
        "participant_id": ids + ["sub-AD01", "sub-AD02", "sub-PD01"],
        "dataset": ["A" if i % 3 else "B" for i in range(n_hc)] + ["A", "B", "A"],
        "cohort": ["HC"] * n_hc + ["AD", "AD", "PD"],
        "age": np.r_[rng.uniform(20, 85, n_hc), [71.0, 75.0, 68.0]],
        "sex": rng.choice(["F", "M"], n_hc + 3),
    })


def test_every_healthy_subject_is_tested_once_per_repeat_and_never_trained_on_there():
    people = _cohort()
    assignment, tables = make_cv_splits(people, seed=3, excluded={"sub-007"}, folds=5, repeats=2)
    assert list(tables) == fold_names(5, 2) == ["r0f0", "r0f1", "r0f2", "r0f3", "r0f4",
                                                "r1f0", "r1f1", "r1f2", "r1f3", "r1f4"]
    hc = set(people.loc[people["cohort"] == "HC", "participant_id"]) - {"sub-007"}
    for r in range(2):
        tested = [pid for f, t in tables.items() if f.startswith(f"r{r}") for pid in t.loc[t["split"] == "test", "participant_id"]]
        assert sorted(tested) == sorted(hc)          # each once: a partition of the controls
    for fold, table in tables.items():
        assert "sub-007" not in set(table["participant_id"])
        split = table.set_index("participant_id")["split"]
        assert set(split[split.index.str.startswith("sub-AD")]) == {"AD"}
        assert split["sub-PD01"] == "PD"
        n_val, n_train = (split == "val").sum(), (split == "train").sum()
        assert 0.05 < n_val / (n_val + n_train) < 0.16    # val_fraction 0.1 of the training folds
        assert (split == "test").sum() in (11, 12)        # 56 controls / 5 folds
    # the two repeats deal the folds differently
    assert not assignment["fold_r0"].equals(assignment["fold_r1"])
    # same seed, same folds; another seed, other folds
    again, _ = make_cv_splits(people, seed=3, excluded={"sub-007"}, folds=5, repeats=2)
    pd.testing.assert_frame_equal(assignment, again)
    other, _ = make_cv_splits(people, seed=4, excluded={"sub-007"}, folds=5, repeats=2)
    assert not other["fold_r0"].equals(assignment["fold_r0"])


def test_folds_are_stratified_by_dataset_and_age_bin():
    people = _cohort(n_hc=120, seed=1)
    assignment, _ = make_cv_splits(people, seed=0, folds=4, age_bin_years=10)
    hc = assignment[assignment["cohort"] == "HC"].copy()
    hc["bin"] = np.floor(hc["age"] / 10)
    counts = hc.groupby(["dataset", "bin", "fold_r0"]).size().unstack(fill_value=0)
    # within every dataset x age-bin stratum the folds differ by at most one subject
    assert ((counts.max(axis=1) - counts.min(axis=1)) <= 1).all()


def test_kfold_config_gives_fold_tables_and_the_fixed_split_none():
    people = _cohort()
    cfg = {"fractions": [0.8, 0.1, 0.1], "age_bin_years": 10}
    fixed, folds = splits_from_config(people, 1, set(), cfg)
    assert folds == {} and set(fixed["split"]) == {"train", "val", "test", "AD", "PD"}
    table, folds = splits_from_config(people, 1, set(), {**cfg, "scheme": "kfold", "folds": 3})
    assert list(folds) == ["r0f0", "r0f1", "r0f2"]
    pd.testing.assert_series_equal(table["split"], folds["r0f0"]["split"])
    with pytest.raises(InputError, match="healthy controls for 30 folds"):
        make_cv_splits(people, 1, folds=30)


def _fold_predictions(tables, noise, seed=0):
    """What each fold's model predicts: its test fold and the patients (age + known error)."""
    rng = np.random.default_rng(seed)
    out = {}
    for fold, table in tables.items():
        rows = table[table["split"].isin(["test", "AD", "PD"])].copy()
        rows["predicted_age"] = rows["age"] + rng.normal(0, noise, len(rows))
        rows["bag"] = rows["predicted_age"] - rows["age"]
        rows["model"] = "m"
        out[fold] = rows.reset_index(drop=True)
    return out


def test_out_of_fold_table_and_per_fold_accuracy_match_sklearn():
    people = _cohort()
    _, tables = make_cv_splits(people, seed=5, folds=4, repeats=2)
    folds = _fold_predictions(tables, noise=4.0)
    merged, info = merge_folds(folds)
    hc = merged[merged["split"] == "test"].set_index("participant_id")
    assert len(hc) == 57 and hc.index.is_unique
    # a control's prediction is the mean of its two repeats' out-of-fold predictions
    for r in (0, 1):
        pred = pd.concat([t[t["split"] == "test"] for f, t in folds.items() if f.startswith(f"r{r}")]).set_index("participant_id")
        np.testing.assert_allclose(hc[f"predicted_age_r{r}"], pred.loc[hc.index, "predicted_age"])
    np.testing.assert_allclose(hc["predicted_age"], (hc["predicted_age_r0"] + hc["predicted_age_r1"]) / 2)
    np.testing.assert_allclose(hc["bag"], hc["predicted_age"] - hc["age"])
    # a patient's prediction is the mean of all eight folds' models
    ad = np.mean([t.set_index("participant_id").loc["sub-AD01", "predicted_age"] for t in folds.values()])
    assert merged.set_index("participant_id").loc["sub-AD01", "predicted_age"] == pytest.approx(ad)
    # each fold's MAE and R2, recomputed with scikit-learn from the fold's own table
    acc = fold_accuracy(merged).set_index("fold")
    assert len(acc) == info["n_folds"] == 8
    for fold, table in folds.items():
        test = table[table["split"] == "test"]
        assert acc.loc[fold, "mae"] == pytest.approx(mean_absolute_error(test["age"], test["predicted_age"]))
        assert acc.loc[fold, "r2"] == pytest.approx(r2_score(test["age"], test["predicted_age"]))
    assert info["mae_folds_sd"] == pytest.approx(np.std(acc["mae"], ddof=1))


def test_table2_reports_the_mean_and_sd_over_folds_beside_the_pooled_figures():
    people = _cohort()
    _, tables = make_cv_splits(people, seed=5, folds=5)
    merged, _ = merge_folds(_fold_predictions(tables, noise=6.0, seed=2))
    table = table2_accuracy({"m": merged}, {"m": {"backbone": "resnet18"}}, n_resamples=50)
    row = table.data.iloc[0]
    per_fold = [mean_absolute_error(t.loc[t["split"] == "test", "age"], t.loc[t["split"] == "test", "predicted_age"])
                for t in _fold_predictions(tables, noise=6.0, seed=2).values()]
    assert row["n_folds"] == 5
    assert row["mae_folds_mean"] == pytest.approx(np.mean(per_fold))
    assert row["mae_folds_sd"] == pytest.approx(np.std(per_fold, ddof=1))
    hc = merged[merged["split"] == "test"]
    assert row["mae"] == pytest.approx(mean_absolute_error(hc["age"], hc["predicted_age"]))
    assert "MAE folds (years)" in table.display.columns and "R2 folds" in table.display.columns
    assert any("5-fold cross-validation" in n for n in table.notes)


def test_a_subject_tested_twice_in_one_repeat_is_refused():
    people = _cohort()
    _, tables = make_cv_splits(people, seed=5, folds=3)
    folds = _fold_predictions(tables, noise=1.0)
    folds["r0f1"] = pd.concat([folds["r0f1"], folds["r0f0"][folds["r0f0"]["split"] == "test"].head(1)])
    with pytest.raises(InputError, match="tested by two folds of repeat 0"):
        merge_folds(folds)
