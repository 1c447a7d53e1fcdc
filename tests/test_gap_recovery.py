"""Gap recovery on simulated cohorts: the predicted brain-age gap against the simulator's truth.

Checked against independent computations (numpy least squares and correlation, scipy's t
quantile) on data with a known relation between predicted and true gap."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from brainage.report import stats

from brainage.report import tables_recovery
from brainage.apply.infer import add_true_gap
from brainage.core.io import InputError


def _predictions(seed: int = 0) -> pd.DataFrame:
    """HC test/val, AD and PD rows whose predicted BAG = 0.6 true BAG + 1 + noise (AD, HC) or noise (PD)."""
    rng = np.random.default_rng(seed)
    rows = []
    for cohort, split, n, shift in (("HC", "test", 40, 0.0), ("HC", "val", 10, 0.0), ("AD", "AD", 30, 5.0), ("PD", "PD", 20, 2.0)):
        true = rng.normal(shift, 3.0, n)
        pred = (0.6 * true + 1.0 + rng.normal(0, 1.0, n)) if cohort != "PD" else rng.normal(0, 3.0, n)
        age = rng.uniform(40, 80, n)
        for k in range(n):
            rows.append({"participant_id": f"sub-{cohort.lower()}{split}{k:03d}", "cohort": cohort, "split": split,
                         "age": age[k], "predicted_age": age[k] + pred[k], "bag": pred[k], "true_bag": true[k]})
    return pd.DataFrame(rows)


def test_gap_recovery_against_numpy_and_scipy():
    frame = _predictions()
    ad = frame[frame["cohort"] == "AD"]
    g = stats.gap_recovery(ad["true_bag"], ad["bag"])
    x, y = ad["true_bag"].to_numpy(), ad["bag"].to_numpy()
    slope, _ = np.polyfit(x, y, 1)
    half = sps.t.ppf(0.975, len(y) - 1) * y.std(ddof=1) / math.sqrt(len(y))
    assert g.n == 30
    assert g.r == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert g.slope == pytest.approx(slope, abs=1e-12)
    assert (g.ci_low, g.ci_high) == pytest.approx((y.mean() - half, y.mean() + half), abs=1e-12)
    assert g.true_mean == pytest.approx(x.mean()) and g.predicted_mean == pytest.approx(y.mean())
    assert 0.4 < g.slope < 0.8 and g.p < 1e-6  # the relation built into the data is found


def test_gap_recovery_drops_missing_pairs_and_needs_three():
    g = stats.gap_recovery([1.0, np.nan, 3.0, 4.0], [2.0, 5.0, np.nan, 1.0])
    assert g.n == 2 and math.isnan(g.r) and math.isnan(g.slope)
    assert g.predicted_mean == pytest.approx(1.5) and g.true_mean == pytest.approx(2.5)
    assert stats.gap_recovery([], []).n == 0


def test_table_rows_per_model_and_group_recomputed():
    frame = _predictions()
    table = tables_recovery.table_gap_recovery({"m1": frame}, {"m1": {"backbone": "resnet18", "loss": "l1"}})
    data = table.data.set_index("group")
    assert list(data.index) == ["HC test", "AD", "PD"]  # validation subjects are not test subjects
    for group, rows in (("HC test", frame[frame["split"] == "test"]), ("AD", frame[frame["cohort"] == "AD"])):
        assert data.loc[group, "n"] == len(rows)
        assert data.loc[group, "r"] == pytest.approx(np.corrcoef(rows["true_bag"], rows["bag"])[0, 1])
        assert data.loc[group, "bag_mean"] == pytest.approx(rows["bag"].mean())
    assert data.loc["PD", "p_r"] > 0.01  # no relation was built into PD
    assert "Gap recovery" in table.markdown() and "True BAG" in table.markdown()


def test_table_needs_the_truth():
    frame = _predictions().drop(columns="true_bag")
    with pytest.raises(InputError, match="true_bag"):
        tables_recovery.table_gap_recovery({"m1": frame}, {})


def test_add_true_gap_from_the_simulators_subjects_table(tmp_path):
    truth = pd.DataFrame({"participant_id": ["sub-a", "sub-b", "sub-c"], "age": [60.0, 70.0, 50.0],
                          "biological_age": [66.5, 69.0, 50.0]})
    truth.to_csv(tmp_path / "subjects.tsv", sep="\t", index=False)
    table = pd.DataFrame({"participant_id": ["sub-b", "sub-a"], "age": [70.0, 60.0], "predicted_age": [71.0, 64.0],
                          "bag": [1.0, 4.0], "adas_cog11": [np.nan, 20.0]})
    out = add_true_gap(table, str(tmp_path / "subjects.tsv"))
    assert out["true_bag"].tolist() == [-1.0, 6.5]
    assert list(out.columns) == ["participant_id", "age", "predicted_age", "bag", "true_bag", "adas_cog11"]
    with pytest.raises(ValueError, match="sub-z"):
        add_true_gap(pd.DataFrame({"participant_id": ["sub-z"], "age": [1.0], "bag": [0.0]}), str(tmp_path / "subjects.tsv"))


def test_figure_draws_each_groups_points(tmp_path):
    from brainage.report.figures_gap import fig_gap_recovery

    frame = _predictions()
    drawn = fig_gap_recovery({"m1": frame, "m2": frame}, {"m1": "C0", "m2": "C1"}, [tmp_path / "g.png", tmp_path / "g.svg"])
    assert (tmp_path / "g.png").stat().st_size > 10_000
    points = drawn["m1"]
    assert sorted(points["group"].unique()) == ["AD", "HC test", "PD"]
    hc = points[points["group"] == "HC test"]
    expected = frame[frame["split"] == "test"]
    assert sorted(hc["true_bag"]) == pytest.approx(sorted(expected["true_bag"]))
    assert len(points) == len(frame) - 10  # all but the validation subjects
    assert "bag_corrected" not in points


def test_figure_draws_the_corrected_gap_below_the_raw_one(tmp_path):
    """With infer.bias_correction the predictions hold bag_corrected: a second block of panels
    draws it against the same true BAG; a model predicted without it keeps its raw panel."""
    from brainage.report.figures_gap import fig_gap_recovery

    frame = _predictions()
    corrected = frame.assign(bag_corrected=frame["bag"] - (0.2 * frame["age"] - 12.0))
    drawn = fig_gap_recovery({"m1": corrected, "m2": frame}, {"m1": "C0", "m2": "C1"}, [tmp_path / "g.png"])
    ad = drawn["m1"][drawn["m1"]["group"] == "AD"]
    expected = corrected[corrected["cohort"] == "AD"]
    assert sorted(ad["bag_corrected"]) == pytest.approx(sorted(expected["bag_corrected"]))
    assert sorted(ad["bag"]) == pytest.approx(sorted(expected["bag"]))
    assert "bag_corrected" not in drawn["m2"]
    from PIL import Image

    raw_only = fig_gap_recovery({"m1": frame, "m2": frame}, {"m1": "C0", "m2": "C1"}, [tmp_path / "raw.png"])
    assert set(raw_only) == {"m1", "m2"}
    # two blocks of panels: the figure is about twice as tall
    assert Image.open(tmp_path / "g.png").height > 1.8 * Image.open(tmp_path / "raw.png").height


@pytest.mark.slow
def test_tiny_run_carries_the_truth_into_predictions_table_and_report(tiny_run):
    """The whole pipeline: each prediction's true BAG is the simulator's biological - chronological
    age, and the gap-recovery table has one raw row per model and group with its n."""
    truth = pd.read_csv(tiny_run / "results" / "cohort" / "truth" / "subjects.tsv", sep="\t").set_index("participant_id")
    table = pd.read_csv(tiny_run / "results" / "tables" / "table_gap_recovery.tsv", sep="\t")
    predictions = sorted((tiny_run / "results" / "predictions").glob("*.tsv"))
    assert predictions
    for path in predictions:
        pred = pd.read_csv(path, sep="\t")
        expected = truth.loc[pred["participant_id"], "biological_age"].to_numpy() - truth.loc[pred["participant_id"], "age"].to_numpy()
        np.testing.assert_allclose(pred["true_bag"], expected, atol=1e-9)
        rows = table[(table["model"] == path.stem) & (table["bag"] == "raw")].set_index("group")
        assert rows.loc["HC test", "n"] == int((pred["split"] == "test").sum())
        assert rows.loc["AD", "n"] == int((pred["split"] == "AD").sum())
        assert rows.loc["AD", "true_bag_mean"] == pytest.approx(pred.loc[pred["split"] == "AD", "true_bag"].mean())
    assert (tiny_run / "results" / "figures" / "fig_gap_recovery.png").stat().st_size > 10_000
