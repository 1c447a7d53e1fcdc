"""Tables 1-4 and the comparison sheet from fixture predictions that resemble the pipeline's."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from brainage.report import stats

from brainage.report import comparison, tables, tables_disease
from brainage.core.io import read_participants

import _stats_fixtures as fx


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    paths = fx.write_all(root)
    return {
        "paths": paths,
        "participants": read_participants(paths["participants"]),
        "predictions": tables.load_predictions(paths["predictions"].values()),
        "val": stats.validation_maes(paths["train_logs"].values()),
    }


def test_table1_counts_and_ages(data, tmp_path):
    parts = data["participants"]
    t = tables.table1_cohort(parts)
    rows = t.data.set_index(["dataset", "cohort"])
    for (dataset, cohort), sub in parts.groupby(["dataset", "cohort"]):
        row = rows.loc[(dataset, cohort)]
        assert row["n"] == len(sub)
        assert row["age_mean"] == pytest.approx(np.mean(sub["age"]))
        assert row["n_female"] + row["n_male"] == len(sub)
    assert rows.loc[("Total", "all"), "n"] == len(parts)
    assert rows.loc[("Total AD", "AD"), "n"] == (parts["cohort"] == "AD").sum()
    t.write(tmp_path / "t1.tsv", tmp_path / "t1.md", tmp_path / "t1.html")
    back = pd.read_csv(tmp_path / "t1.tsv", sep="\t")
    assert list(back["n"]) == list(t.data["n"])
    md = (tmp_path / "t1.md").read_text().splitlines()
    table_lines = [line for line in md if line.startswith("|")]
    assert len({line.count("|") for line in table_lines}) == 1 and len(table_lines) == len(t.data) + 2
    assert "<table" in (tmp_path / "t1.html").read_text()


def test_table2_numbers_and_paired_marks(data):
    preds = data["predictions"]
    t = tables.table2_accuracy(preds, fx.MODELS, n_resamples=200, seed=0)
    by_model = t.data.set_index("model")
    maes = {}
    for name, pred in preds.items():
        test = pred[(pred["cohort"] == "HC") & (pred["split"] == "test")]
        err = np.abs(test["predicted_age"] - test["age"])
        maes[name] = err.mean()
        assert by_model.loc[name, "mae"] == pytest.approx(err.mean())
        assert by_model.loc[name, "mae_sd"] == pytest.approx(err.std(ddof=1))
        old = test[test["age"] > 60]
        assert by_model.loc[name, "n_over60"] == len(old)
        assert by_model.loc[name, "mae_over60"] == pytest.approx(np.abs(old["predicted_age"] - old["age"]).mean())
    best = min(maes, key=maes.get)
    assert (t.data["compared_with"] == best).all() and math.isnan(by_model.loc[best, "p_vs_best"])
    worst = max(maes, key=maes.get)
    a, b = preds[worst].set_index("participant_id"), preds[best].set_index("participant_id")
    ids = a.index[(a["split"] == "test")]
    ref = sps.ttest_rel(np.abs(a.loc[ids, "bag"]), np.abs(b.loc[ids, "bag"]))
    assert by_model.loc[worst, "p_vs_best"] == pytest.approx(ref.pvalue)
    finite = t.data["p_vs_best"].notna()
    assert finite.sum() >= 2  # a correction over more than one comparison
    np.testing.assert_allclose(t.data.loc[finite, "p_holm"], holm_by_hand(t.data.loc[finite, "p_vs_best"].to_numpy()))
    assert t.data.loc[~finite, "p_holm"].isna().all()
    marked = t.display.set_index("Model")["MAE (years)"]
    assert marked[worst].endswith("*") == (ref.pvalue < 0.05)


def holm_by_hand(p: np.ndarray) -> np.ndarray:
    """Holm (1979) step-down: the i-th smallest of m p-values times (m - i + 1), made monotone, capped at 1."""
    order = np.argsort(p)
    adjusted = np.empty(len(p))
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def test_holm_by_hand_on_a_worked_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    p = np.array([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(holm_by_hand(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm(np.array([0.01, np.nan, 0.04, 0.03, 0.005])),
                               [0.03, np.nan, 0.06, 0.06, 0.02])


def test_table3_roles_external_and_train_size(data):
    preds, val = data["predictions"], data["val"]
    n_train = tables.train_size(data["paths"]["splits"])
    assert n_train == (pd.read_csv(data["paths"]["splits"], sep="\t")["split"] == "train").sum()
    t = tables_disease.table3_baselines(preds, fx.MODELS, val, n_train, n_resamples=0)
    roles = dict(zip(t.data["role"], t.data["model"]))
    assert roles["best end-to-end"] == min(("resnet18_e2e", "resnet50_e2e"), key=val.get)
    assert roles["RNC"] == min(("rnc_b16", "rnc_b32", "rnc_g2_b8", "rnc_g2_b24"), key=val.get)
    assert roles["SFCN baseline"] == "sfcn"
    assert any("No external model" in n for n in t.notes)
    assert (t.data["n_train"] == n_train).all()
    ext = tables_disease.External("published-model", preds["resnet50_e2e"].drop(columns=["split", "bag"]), 2001)
    t = tables_disease.table3_baselines(preds, fx.MODELS, val, n_train, external=ext, n_resamples=0)
    row = t.data.set_index("role").loc["external"]
    assert row["model"] == "published-model" and row["n_train"] == 2001
    assert row["n_test"] == (preds["resnet50_e2e"]["split"] == "test").sum()  # HC rows taken as test
    assert not any("No external model" in n for n in t.notes)


def test_table4_disease_gap_and_correlation(data):
    preds = data["predictions"]
    t = tables_disease.table4_disease(preds, fx.MODELS, n_resamples=200, seed=0)
    rows = t.data.set_index(["model", "cohort"])
    for name, pred in preds.items():
        ad = pred[pred["cohort"] == "AD"]
        hc = pred[(pred["cohort"] == "HC") & (pred["split"] == "test")]
        row = rows.loc[(name, "AD")]
        assert row["bag_mean"] == pytest.approx(ad["bag"].mean())
        assert row["p_bag_vs_0"] == pytest.approx(sps.ttest_1samp(ad["bag"], 0).pvalue)
        r = sps.pearsonr(ad["bag"], ad["adas_cog11"])
        assert row["r"] == pytest.approx(r.statistic) and row["p_r"] == pytest.approx(r.pvalue)
        s = math.sqrt(((len(ad) - 1) * ad["bag"].var() + (len(hc) - 1) * hc["bag"].var()) / (len(ad) + len(hc) - 2))
        assert row["d_vs_hc"] == pytest.approx((ad["bag"].mean() - hc["bag"].mean()) / s)
        assert rows.loc[(name, "PD"), "severity"] == "updrs3"
    # the fixture is built like the simulation: AD looks older than HC
    assert (t.data[t.data["cohort"] == "AD"]["bag_mean"] > 0).all()


def test_study_comparison_is_labelled_as_different_data(data):
    preds = data["predictions"]
    sheet = comparison.study_comparison(preds, fx.MODELS, data["val"], "the simulated cohort")
    assert "**Different data.**" in sheet and "not a replication" in sheet
    assert "4.27 \u00b1 3.32" in sheet and "4.92 \u00b1 3.96" in sheet and "+2.12" in sheet and "0.37" in sheet
    # the computed column, recomputed here from the predictions of the models the sheet names
    this_run = [cells[3].strip() for cells in (line.split("|") for line in sheet.splitlines() if line.startswith("| "))
                if "mm):" in cells[3]]
    assert len(this_run) == 4, sheet
    chosen, _ = tables_disease.headline_models(fx.MODELS, data["val"])
    rnc, e2e = chosen["RNC"], chosen["best end-to-end"]
    numbers = [[float(x) for x in re.findall(r"(?<![\w.])[-+]?\d+\.\d+", row.split("mm):")[1])] for row in this_run]
    for row, name, (mae, sd, r2) in zip(this_run, (rnc, e2e), numbers[:2]):
        test = stats.healthy_test(preds[name])
        err = np.abs(test["predicted_age"] - test["age"])
        assert row.startswith(f"{name} (")
        assert (mae, sd) == (pytest.approx(err.mean(), abs=0.005), pytest.approx(err.std(ddof=1), abs=0.005))
        ss = ((test["age"] - test["predicted_age"]) ** 2).sum() / ((test["age"] - test["age"].mean()) ** 2).sum()
        assert r2 == pytest.approx(1 - ss, abs=0.005)
    ad = preds[rnc][preds[rnc]["cohort"] == "AD"]
    bag_mean, bag_sd, p_bag = numbers[2]
    assert (bag_mean, bag_sd) == (pytest.approx(ad["bag"].mean(), abs=0.005), pytest.approx(ad["bag"].std(ddof=1), abs=0.005))
    assert p_bag == pytest.approx(sps.ttest_1samp(ad["bag"], 0.0).pvalue, abs=0.0005)
    assert f"N = {len(ad)})" in this_run[2]
    r, p_r = numbers[3]
    ref = sps.pearsonr(ad["bag"], ad["adas_cog11"].astype(float))
    assert (r, p_r) == (pytest.approx(ref.statistic, abs=0.005), pytest.approx(ref.pvalue, abs=0.0005))
    page = comparison.markdown_to_html(sheet, "Study comparison")
    assert page.count("<tr>") == 5 and "Different data." in page


def _with_corrected_gap(pred: pd.DataFrame, slope: float = -0.12, intercept: float = 6.6) -> pd.DataFrame:
    """As the inference stage writes with infer.bias_correction: bag_corrected = bag - (slope*age + b)."""
    out = pred.copy()
    out["bag_corrected"] = out["bag"] - (slope * out["age"] + intercept)
    return out


def test_tables_3_and_4_report_corrected_gap_beside_raw(data, tmp_path):
    raw = data["predictions"]
    preds = {name: _with_corrected_gap(p) for name, p in raw.items()}
    # written and read back as the pipeline does: the column survives read_predictions
    path = tmp_path / "rnc_b16.tsv"
    preds["rnc_b16"].to_csv(path, sep="\t", index=False, na_rep="n/a")
    back = tables.load_predictions([path])["rnc_b16"]
    np.testing.assert_allclose(back["bag_corrected"], preds["rnc_b16"]["bag_corrected"])

    t4 = tables_disease.table4_disease(preds, fx.MODELS, n_resamples=0)
    rows = t4.data.set_index(["model", "cohort"])
    for name, pred in preds.items():
        ad = pred[pred["cohort"] == "AD"]
        row = rows.loc[(name, "AD")]
        assert row["bag_mean"] == pytest.approx(ad["bag"].mean())  # raw BAG unchanged
        assert row["bag_corrected_mean"] == pytest.approx(ad["bag_corrected"].mean())
        assert row["bag_corrected_sd"] == pytest.approx(ad["bag_corrected"].std(ddof=1))
        assert row["p_bag_corrected_vs_0"] == pytest.approx(sps.ttest_1samp(ad["bag_corrected"], 0).pvalue)
        r = sps.pearsonr(ad["bag_corrected"], ad["adas_cog11"])
        assert row["r_corrected"] == pytest.approx(r.statistic) and row["p_r_corrected"] == pytest.approx(r.pvalue)
    cols = list(t4.display.columns)
    # raw BAG first (the study's measure), the corrected one beside it, clearly labelled
    assert cols.index("BAG (years)") < cols.index("BAG, age-bias corrected (years)") and "r, age-bias corrected BAG" in cols
    assert any("age-bias corrected" in n and "primary" in n for n in t4.notes)

    t3 = tables_disease.table3_baselines(preds, fx.MODELS, data["val"], 100, n_resamples=0)
    for _, row in t3.data.iterrows():
        hc = preds[row["model"]]
        hc = hc[(hc["cohort"] == "HC") & (hc["split"] == "test")]
        assert row["bag_corrected_mean"] == pytest.approx(hc["bag_corrected"].mean())
        assert row["bag_mean"] == pytest.approx(hc["bag"].mean())
    cols = list(t3.display.columns)
    assert cols.index("Mean BAG (years)") + 1 == cols.index("Mean BAG, age-bias corrected (years)")
    assert "age-bias corrected" in t3.markdown() and "age-bias corrected" in t3.html()

    # without the column (bias correction off, as in the study): no corrected columns or note
    for t in (tables_disease.table4_disease(raw, fx.MODELS, n_resamples=0), tables_disease.table3_baselines(raw, fx.MODELS, data["val"], 100, n_resamples=0)):
        assert not any("corrected" in c for c in [*t.data.columns, *t.display.columns])
        assert not any("age-bias corrected" in n for n in t.notes)
