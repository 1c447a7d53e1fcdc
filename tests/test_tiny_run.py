"""What the whole tiny pipeline made (tests/conftest.py ``tiny_run``), read and recomputed here:
splits and predictions per subject, every table from the predictions, the figures' plotted
points, the QC montage and table, the report, and the subject whose scan was spoiled so that it
fails QC (``QC_FAILURE``) ending in ``excluded.tsv`` and nowhere downstream."""

from __future__ import annotations

import base64
import math
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from scipy import stats as sps

import readme
from conftest import QC_FAILURE, base_bin, run_line

pytestmark = pytest.mark.slow

SVG = "{http://www.w3.org/2000/svg}"
SEVERITY = {"AD": "adas_cog11", "PD": "updrs3"}
#: every table and figure the tiny configuration's `rule all` makes (no batch-size sweep: no Figure 3)
TABLES = ("table1", "table2", "table3", "table4", "study_comparison")
FIGURES = ("fig1_age_distribution", "fig4_gradram_e2e", "fig5_gradram_rnc", "fig6_bag_violin", "fig7_gradram_disease",
           "fig_pred_vs_age", "fig_training_curves", "fig_qc_montage")


def _tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype={"participant_id": str})


@pytest.fixture(scope="module")
def run(tiny_run) -> dict:
    results = tiny_run / "results"
    config = yaml.safe_load((tiny_run / "config" / "config.yaml").read_text())
    return {
        "work": tiny_run,
        "results": results,
        "models": list(config["models"]),
        "participants": _tsv(results / "cohort" / "participants.tsv"),
        "splits": _tsv(results / "splits.tsv"),
        "predictions": {m: _tsv(results / "predictions" / f"{m}.tsv") for m in config["models"]},
    }


def _group(pred: pd.DataFrame, name: str) -> pd.DataFrame:
    """HC: the healthy test split; AD, PD: the cohort (independent of brainage.report.stats)."""
    return pred[pred["split"] == "test"] if name == "HC" else pred[pred["cohort"] == name]


# --------------------------------------------------------------------------------------------
# QC failure, splits, predictions


def test_qc_failure_is_excluded_and_in_no_split_cache_or_prediction(run):
    results = run["results"]
    excluded = _tsv(results / "qc" / "excluded.tsv")
    assert list(excluded["participant_id"]) == [QC_FAILURE]
    # the header made the head 1.6x larger (~5000 ml); the reasons are listed in QC's check order
    reasons = excluded["reason"].iloc[0].split("; ")
    assert any(r.startswith("brain volume") and "outside [800, 2200]" in r for r in reasons), reasons
    qc = _tsv(results / "qc" / "qc.tsv").set_index("participant_id")
    assert set(qc.index) == set(run["participants"]["participant_id"])
    assert list(qc.index[~qc["passed"].astype(bool)]) == [QC_FAILURE]
    assert QC_FAILURE not in set(run["splits"]["participant_id"])
    assert QC_FAILURE not in set(_tsv(results / "cache" / "res-4" / "index.tsv")["participant_id"])
    for pred in run["predictions"].values():
        assert QC_FAILURE not in set(pred["participant_id"])


def test_splits_hold_every_passing_subject_once(run):
    parts = run["participants"].set_index("participant_id")
    splits = run["splits"].set_index("participant_id")
    assert set(splits.index) == set(parts.index) - {QC_FAILURE} and splits.index.is_unique
    hc = splits["cohort"] == "HC"
    assert set(splits.loc[hc, "split"]) == {"train", "val", "test"}
    assert (splits.loc[~hc, "split"] == splits.loc[~hc, "cohort"]).all()
    assert (splits["age"] == parts.loc[splits.index, "age"]).all()


@pytest.mark.parametrize("split", ["train", "val"])
def test_predictions_never_hold_training_or_validation_subjects(run, split):
    used = set(run["splits"].loc[run["splits"]["split"] == split, "participant_id"])
    for pred in run["predictions"].values():
        assert not used & set(pred["participant_id"])


def test_predictions_are_the_test_split_and_patients_with_their_gap(run):
    splits = run["splits"].set_index("participant_id")
    parts = run["participants"].set_index("participant_id")
    expected = set(splits.index[splits["split"].isin(["test", "AD", "PD"])])
    for model, pred in run["predictions"].items():
        assert set(pred["participant_id"]) == expected and pred["participant_id"].is_unique, model
        rows = pred.set_index("participant_id")
        assert (rows["split"] == splits.loc[rows.index, "split"]).all()
        assert (rows["cohort"] == splits.loc[rows.index, "cohort"]).all()
        assert np.allclose(rows["age"], parts.loc[rows.index, "age"])
        assert np.isfinite(rows["predicted_age"]).all() and (rows["model"] == model).all()
        np.testing.assert_allclose(rows["bag"], rows["predicted_age"] - rows["age"], atol=1e-9)
        # every prediction carries its split-conformal interval, right after it (inf: too few
        # validation subjects for the level, as the tiny run's one)
        cols = list(pred.columns)
        assert cols[cols.index("predicted_age") + 1:cols.index("predicted_age") + 3] == ["predicted_age_lower", "predicted_age_upper"]
        assert (rows["predicted_age_lower"] <= rows["predicted_age"]).all() and (rows["predicted_age"] <= rows["predicted_age_upper"]).all()
        ad = rows[rows["cohort"] == "AD"]
        np.testing.assert_allclose(ad["adas_cog11"], parts.loc[ad.index, "adas_cog11"])


@pytest.mark.parametrize("cohort", ["HC", "AD"])
def test_brainage_predict_agrees_with_the_pipeline_on_the_same_scan(run, cohort):
    """The command a user runs on one raw scan, with a model the pipeline trained, gives the
    pipeline's prediction for that subject (to 0.05 y: the training cache holds float16)."""
    import re
    import subprocess

    model = run["models"][0]
    pred = run["predictions"][model]
    subject = _group(pred, cohort)["participant_id"].iloc[0]
    t1w = run["work"] / run["participants"].set_index("participant_id").loc[subject, "t1w"]
    # With 2 threads (the preprocess rule runs on 1): registration runs ITK on one thread whatever
    # the job's threads (it once gave 67.5 y with 1 and 67.4 with 2). In a fresh process, from
    # the base install: in-process, the call would also change torch's threads for later tests.
    out = subprocess.run([str(base_bin() / "brainage"), "predict", "--model",
                          str(run["results"] / "models" / model / "model.pt"), "--t1w", str(t1w), "--threads", "2"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    predicted = float(re.search(r"predicted brain age: ([-\d.]+) years", out.stdout).group(1))
    expected = pred.set_index("participant_id").loc[subject, "predicted_age"]
    assert predicted == pytest.approx(expected, abs=0.05), subject


# --------------------------------------------------------------------------------------------
# tables against a recomputation from the predictions


def test_table1_counts_the_manifest(run):
    table = _tsv(run["results"] / "tables" / "table1.tsv").set_index(["dataset", "cohort"])
    parts = run["participants"]
    for (dataset, cohort), sub in parts.groupby(["dataset", "cohort"]):
        assert table.loc[(dataset, cohort), "n"] == len(sub)
        assert table.loc[(dataset, cohort), "age_mean"] == pytest.approx(sub["age"].mean())
        assert table.loc[(dataset, cohort), "n_female"] == (sub["sex"] == "F").sum()
    # Table 1 describes the manifest as recruited: the QC failure is counted there
    assert table.loc[("Total", "all"), "n"] == len(parts)


def test_tables_2_and_3_recomputed_from_the_predictions(run):
    t2 = _tsv(run["results"] / "tables" / "table2.tsv").set_index("model")
    t3 = _tsv(run["results"] / "tables" / "table3.tsv").set_index("model")
    n_train = (run["splits"]["split"] == "train").sum()
    assert set(t2.index) == set(run["models"]) and set(t3.index) <= set(run["models"])
    for model, pred in run["predictions"].items():
        test = _group(pred, "HC")
        err = (test["predicted_age"] - test["age"]).abs()
        for table in (t2, t3):
            if model not in table.index:
                continue
            row = table.loc[model]
            assert row["n_test"] == len(test) >= 1
            assert row["mae"] == pytest.approx(err.mean())
            assert row["bag_mean"] == pytest.approx(test["bag"].mean())
            assert math.isnan(row["mae_sd"]) if len(test) < 2 else row["mae_sd"] == pytest.approx(err.std(ddof=1))
            if table is t2:
                inside = (test["age"] >= test["predicted_age_lower"]) & (test["age"] <= test["predicted_age_upper"])
                assert row["interval_coverage"] == pytest.approx(inside.mean())
        if model in t3.index:
            assert t3.loc[model, "n_train"] == n_train


def test_table4_recomputed_from_the_predictions(run):
    t4 = _tsv(run["results"] / "tables" / "table4.tsv").set_index(["model", "cohort"])
    assert set(t4.index) == {(m, c) for m in run["models"] for c in ("AD", "PD")}
    for model, pred in run["predictions"].items():
        hc_bag = _group(pred, "HC")["bag"].mean()
        for cohort, score in SEVERITY.items():
            row, sub = t4.loc[(model, cohort)], _group(pred, cohort)
            assert row["n"] == len(sub) == 3
            assert row["age_mean"] == pytest.approx(sub["age"].mean())
            assert row["mae"] == pytest.approx(sub["bag"].abs().mean())
            assert row["bag_mean"] == pytest.approx(sub["bag"].mean())
            assert row["bag_sd"] == pytest.approx(sub["bag"].std(ddof=1))
            assert row["p_bag_vs_0"] == pytest.approx(sps.ttest_1samp(sub["bag"], 0.0).pvalue)
            assert row["hc_bag_mean"] == pytest.approx(hc_bag)
            assert row["severity"] == score and row["n_severity"] == 3
            ref = sps.pearsonr(sub["bag"], sub[score].astype(float))
            assert (row["r"], row["p_r"]) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue))


# --------------------------------------------------------------------------------------------
# figures, QC montage, report


def _markers(collection: ET.Element) -> int:
    """Points of one Matplotlib scatter in an SVG: a <use> each, or a <path> each when unfilled."""
    uses = list(collection.iter(SVG + "use"))
    return len(uses) if uses else sum(1 for child in collection if child.tag == SVG + "path")


def _scatter_counts(svg: Path) -> list[list[int]]:
    """Per axes of the figure, the point count of each scatter (legend handles included)."""
    axes = [g for g in ET.parse(svg).iter(SVG + "g") if g.get("id", "").startswith("axes_")]
    return [[_markers(c) for c in ax.iter(SVG + "g") if c.get("id", "").startswith("PathCollection_")] for ax in axes]


def test_prediction_figures_plot_every_predicted_subject(run):
    figures = run["results"] / "figures"
    sizes = {name: {c: len(_group(pred, c)) for c in ("HC", "AD", "PD")} for name, pred in run["predictions"].items()}
    # predicted vs age: one panel per model, HC test, AD and PD scatters in that order
    panels = _scatter_counts(figures / "fig_pred_vs_age.svg")
    assert len(panels) == len(run["models"])
    for counts, model in zip(panels, run["models"]):
        assert counts[:3] == [sizes[model]["HC"], sizes[model]["AD"], sizes[model]["PD"]], (model, counts)
    # Figure 6: the BAG points of each (model, cohort) of the models it shows
    (points,) = _scatter_counts(figures / "fig6_bag_violin.svg")
    assert sorted(points) == sorted(sizes[m][c] for m in run["models"] for c in ("HC", "AD", "PD"))


def test_qc_montage_shows_every_subject_and_marks_the_failure(run):
    montage = run["results"] / "qc" / "qc_montage.png"
    assert (run["results"] / "figures" / "fig_qc_montage.png").read_bytes() == montage.read_bytes()
    n = len(run["participants"])
    cols = math.ceil(math.sqrt(n * 1.5))
    with Image.open(montage) as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)
    # a pixel row through a tile row crosses each slice's black background (> 35 px per slice on
    # this montage); a title row only glyphs (< 15 px per title)
    dark_rows = (rgb.max(axis=2) < 40).sum(axis=1) > 25 * cols
    # a tile row is a tall run of such rows (a slice is > 100 px high); a line of text (the
    # figure's title) is a few px high, even when its glyphs are dense enough
    edges = np.flatnonzero(np.diff(np.r_[0, dark_rows.astype(int), 0]))
    runs = [(a, b) for a, b in zip(edges[::2], edges[1::2]) if b - a >= 30]
    tile_rows = np.zeros(len(dark_rows), bool)
    for a, b in runs:
        tile_rows[a:b] = True
    red = (rgb[..., 0] > 180) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100) & ~tile_rows[:, None]
    tiles_y = np.array([a for a, _ in runs])  # where each tile row starts
    assert len(tiles_y) == math.ceil(n / cols), "one row of slices per montage row"
    ys, xs = np.nonzero(red)
    assert len(ys), "no red title: the QC failure is not marked"
    row = int(np.searchsorted(tiles_y, ys.mean()))
    col = int(xs.mean() // (rgb.shape[1] / cols))
    assert (row, col) == divmod(_montage_index(run, QC_FAILURE), cols)
    assert np.ptp(ys) < 20 and np.ptp(xs) < rgb.shape[1] / cols, "red titles on more than one tile"


def _montage_index(run, subject: str) -> int:
    """Place of ``subject`` in the montage: the pipeline's subject order (the manifest's)."""
    return list(run["participants"]["participant_id"]).index(subject)


@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("report") / "work"
    shutil.copytree(tiny_run, work, symlinks=True)
    # the README's line as written, from the base install (it once lacked pygments)
    line = next(c for c in readme.inline_snakemake() if c.startswith("snakemake --report "))
    out = run_line(line, work, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return (work / "results" / "report.html").read_text()


def test_report_embeds_every_table_and_figure(run, report):
    results = run["results"]
    made = {p.stem for p in (results / "figures").glob("*.png")}
    assert set(FIGURES) <= made
    for path in [results / "tables" / f"{t}.html" for t in TABLES] + sorted((results / "figures").glob("*.png")):
        named, embedded = str(path.relative_to(run["work"])) in report, base64.b64encode(path.read_bytes()).decode() in report
        assert named and embedded, f"{path.name}: not in the report"


def test_provenance_records_what_the_run_came_from(run, report):
    """results/provenance.json against independent sources: the config the run was given, the
    installed packages' own metadata, each script's code hash as the rules compute it, and the
    rules' threads; its page is in the report."""
    import json
    from importlib import metadata

    from brainage.core.provenance import script_code_hash

    record = json.loads((run["results"] / "provenance.json").read_text())
    given = yaml.safe_load((run["work"] / "config" / "config.yaml").read_text())
    assert record["config"]["models"] == given["models"] and record["seed"] == given["seed"] == 7
    assert record["config"]["cohort"]["simulate"]["n_hc"] == given["cohort"]["simulate"]["n_hc"]
    assert record["packages"]["torch"] == metadata.version("torch")
    assert record["packages"]["snakemake"] == metadata.version("snakemake")
    scripts = sorted((run["work"] / "workflow" / "scripts").glob("*.py"))
    assert record["code"] == {s.name: script_code_hash(s) for s in scripts}
    assert record["preprocess_engine"] == "native" and record["itk_threads_in_preprocessing"] == 1
    # as the rules declare them (tiny: one subject per preprocessing job)
    assert record["threads"]["train"] == 2 and record["threads"]["preprocess"] == 1
    assert "results/tables/provenance.html" in report
