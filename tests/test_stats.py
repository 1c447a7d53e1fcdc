"""brainage.report.stats against independent computations: hand formulas, scipy/statsmodels/sklearn on
rearranged inputs, textbook identities."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from brainage.report import stats
from brainage.core.io import InputError

from _stats_fixtures import MODELS


def frame(ids, age, pred):
    return pd.DataFrame({"participant_id": ids, "age": age, "predicted_age": pred})


def test_mae_and_sd_by_hand():
    mae, sd = stats.mean_absolute_error([20, 30, 40], [22, 27, 40])
    # errors 2, 3, 0: mean 5/3; sample SD sqrt(((1/3)^2 + (4/3)^2 + (5/3)^2) / 2)
    assert mae == pytest.approx(5 / 3)
    assert sd == pytest.approx(math.sqrt((1 + 16 + 25) / 9 / 2))


def test_r_squared_matches_sklearn_and_limits():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    age = rng.uniform(20, 90, 50)
    pred = age + rng.normal(3, 6, 50)
    assert stats.r_squared(age, pred) == pytest.approx(sklearn.r2_score(age, pred), rel=1e-12)
    assert stats.r_squared(age, np.full(50, age.mean())) == pytest.approx(0.0, abs=1e-12)
    assert stats.r_squared(age, age) == 1.0
    assert stats.r_squared(age, age.mean() - (age - age.mean())) < 0  # anti-correlated: negative


def test_paired_test_pairs_by_participant_and_matches_one_sample_on_differences():
    rng = np.random.default_rng(1)
    ids = [f"sub-{i:03d}" for i in range(30)]
    age = rng.uniform(20, 80, 30)
    a = frame(ids, age, age + rng.normal(0, 5, 30))
    b = frame(ids, age, age + rng.normal(0, 3, 30))
    res = stats.paired_error_test(a, b.sample(frac=1.0, random_state=3))  # shuffled rows
    diff = np.abs(a["predicted_age"] - age) - np.abs(b["predicted_age"] - age)
    ref = sps.ttest_1samp(diff, 0.0)  # a paired t-test is a one-sample test of the differences
    assert res.statistic == pytest.approx(ref.statistic) and res.pvalue == pytest.approx(ref.pvalue)
    assert res.n == 30 and res.df == 29
    partial = stats.paired_error_test(a, b.iloc[:20])
    assert partial.n == 20


def test_bag_vs_zero_matches_statsmodels():
    from statsmodels.stats.weightstats import DescrStatsW

    bag = np.array([2.1, -0.5, 4.0, 3.3, 1.2, 0.8, 5.1, -1.0])
    res = stats.bag_vs_zero(bag)
    tstat, p, df = DescrStatsW(bag).ttest_mean(0.0)
    assert res.statistic == pytest.approx(tstat) and res.pvalue == pytest.approx(p) and res.df == df
    assert math.isnan(stats.bag_vs_zero([1.0]).pvalue)


def test_pearson_drops_missing_scores_and_matches_t_distribution():
    rng = np.random.default_rng(2)
    bag = rng.normal(2, 4, 40)
    score = 20 + 2 * bag + rng.normal(0, 8, 40)
    score[[3, 7]] = np.nan
    res = stats.severity_correlation(bag, score)
    keep = np.isfinite(score)
    r = np.corrcoef(bag[keep], score[keep])[0, 1]
    n = keep.sum()
    t = r * math.sqrt((n - 2) / (1 - r**2))
    assert res.n == 38
    assert res.r == pytest.approx(r)
    assert res.pvalue == pytest.approx(2 * sps.t.sf(abs(t), n - 2))


def test_cohens_d_equals_pooled_t_times_group_factor():
    rng = np.random.default_rng(3)
    ad, hc = rng.normal(3, 4, 25), rng.normal(0, 5, 40)
    t = sps.ttest_ind(ad, hc, equal_var=True).statistic
    assert stats.cohens_d(ad, hc) == pytest.approx(t * math.sqrt(1 / 25 + 1 / 40))
    # textbook: two groups one pooled SD apart
    assert stats.cohens_d([1, 2, 3], [0, 1, 2]) == pytest.approx(1.0)


def test_bootstrap_ci_is_seeded_and_close_to_t_interval():
    rng = np.random.default_rng(4)
    x = rng.normal(2.0, 4.0, 200)
    lo, hi = stats.bootstrap_ci(lambda a, axis: a.mean(axis=axis), x, n_resamples=2000, seed=7)
    assert (lo, hi) == stats.bootstrap_ci(lambda a, axis: a.mean(axis=axis), x, n_resamples=2000, seed=7)
    t_lo, t_hi = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert lo < x.mean() < hi
    assert (hi - lo) == pytest.approx(t_hi - t_lo, rel=0.15)
    assert lo == pytest.approx(t_lo, abs=0.15 * (t_hi - t_lo))
    assert all(math.isnan(v) for v in stats.bootstrap_ci(lambda a, axis: a.mean(axis=axis), [1.0, 2.0]))


def test_accuracy_summary_cis_bracket_the_estimates():
    rng = np.random.default_rng(5)
    age = rng.uniform(20, 90, 60)
    test = frame([f"s{i}" for i in range(60)], age, age + rng.normal(1.0, 4.0, 60))
    acc = stats.accuracy(test, n_resamples=500, seed=0)
    err = np.abs(test["predicted_age"] - age)
    assert acc.mae == pytest.approx(err.mean()) and acc.n == 60
    assert acc.mae_ci[0] < acc.mae < acc.mae_ci[1]
    assert acc.r2_ci[0] < acc.r2 < acc.r2_ci[1]
    assert acc.bag_ci[0] < acc.bag_mean < acc.bag_ci[1]
    lo, hi = stats.correlation_ci(test["predicted_age"] - age, age, n_resamples=500, seed=0)
    assert -1 <= lo < hi <= 1


def test_model_roles_from_config():
    roles = stats.model_roles(MODELS)
    assert roles.e2e == ("resnet18_e2e", "resnet50_e2e")
    assert roles.sfcn == ("sfcn",)
    assert set(roles.rnc) == {"rnc_b16", "rnc_b32", "rnc_g2_b8", "rnc_g2_b24"}
    assert roles.sweeps == (("rnc_g2_b8", "rnc_g2_b24", "rnc_b16", "rnc_b32"),)
    # an RNC model with another backbone is no part of the sweep
    roles = stats.model_roles({**MODELS, "rnc_r50": {"backbone": "resnet50", "grid": 4, "loss": "rnc", "batch_size": 48}})
    assert "rnc_r50" in roles.rnc and "rnc_r50" not in roles.sweep_models
    assert stats.model_roles({"a": {"backbone": "resnet18", "loss": "rnc", "batch_size": 8}}).sweeps == ()



def test_sweep_of_three_batch_sizes_as_in_the_demo_config():
    """The demo's RNC sweep (16, 8 and a third model at 32, in that config order) is one sweep
    sorted by batch size, even when the models' nested ``rnc: {chunk_size}`` differ (a memory
    knob); a change of a nested loss setting (temperature) does split it."""
    rnc = {"backbone": "resnet18", "grid": 4, "loss": "rnc", "epochs": 6, "augment": True, "width": 0.25,
           "conv1_stride": 2, "head": {"epochs": 100}}
    models = {
        "resnet18_e2e": {"backbone": "resnet18", "grid": 4, "loss": "l1", "batch_size": 8},
        "rnc_resnet18": {**rnc, "batch_size": 16, "rnc": {"temperature": 2.0, "chunk_size": 16}},
        "rnc_resnet18_b8": {**rnc, "batch_size": 8, "rnc": {"temperature": 2.0, "chunk_size": 16}},
        "rnc_resnet18_b32": {**rnc, "batch_size": 32, "rnc": {"temperature": 2.0, "chunk_size": 8}},
    }
    roles = stats.model_roles(models)
    assert roles.sweeps == (("rnc_resnet18_b8", "rnc_resnet18", "rnc_resnet18_b32"),)
    models["rnc_resnet18_b32"]["rnc"] = {"temperature": 1.0, "chunk_size": 16}
    assert stats.model_roles(models).sweeps == (("rnc_resnet18_b8", "rnc_resnet18"),)

def test_validation_mae_and_selection(tmp_path):
    d = tmp_path / "m1"
    d.mkdir()
    pd.DataFrame({"phase": ["encoder", "encoder", "head", "head"], "epoch": [1, 2, 1, 2], "train_loss": [3, 2, 9, 5],
                  "val_mae": [np.nan, np.nan, 7.5, 6.25]}).to_csv(d / "train_log.tsv", sep="\t", index=False, na_rep="n/a")
    assert stats.validation_mae(d / "train_log.tsv") == 6.25
    (d / "model_card.json").write_text(json.dumps({"metrics": {"best_val_mae": 6.0, "test_mae": 1.0}}))
    assert stats.validation_maes([d / "train_log.tsv"]) == {"m1": 6.0}
    assert stats.select_best(["a", "b", "c"], {"a": 5.0, "b": 4.0, "c": math.nan}) == ("b", "lowest validation MAE")
    assert stats.select_best(["a", "b"], {})[0] == "a"


def test_read_predictions_names_the_problem(tmp_path):
    path = tmp_path / "m.tsv"
    pd.DataFrame({"participant_id": ["sub-1"], "age": [50.0]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(InputError, match=r"m\.tsv: predictions table lacks column\(s\) cohort"):
        stats.read_predictions(path)
    pd.DataFrame({"participant_id": ["sub-1"], "cohort": ["HC"], "dataset": ["x"], "sex": ["F"], "age": [50.0],
                  "predicted_age": [np.nan], "split": ["test"]}).to_csv(path, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(InputError, match="sub-1 has no finite predicted_age"):
        stats.read_predictions(path)
