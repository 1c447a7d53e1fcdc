"""Figures written at print resolution from fixture data, and the stats rules run by Snakemake
(named targets without wildcards, only their own inputs, and the HTML report)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from brainage.report import figures, figures_gap, figures_saliency

from brainage.report import stats

from brainage.report import tables, tables_disease
from brainage.core.io import read_participants
from brainage.data.atlases import build_resources, resource_paths
from brainage.core.paths import saliency_file

import _stats_fixtures as fx
from conftest import base_env

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("figdata")
    paths = fx.write_all(root / "results")
    res = root / "resources" / "atlases"
    build_resources(res, [4])
    groups = {}
    for model in fx.MODELS:
        d = root / "results" / "saliency" / model / "groups"
        d.mkdir(parents=True)
        for group, path in fx.write_saliency(root / "maps", resource_paths(res, 4)["template"]).items():
            shutil.copy(path, d / saliency_file("4", group=group))
        groups[model] = d
    return {"root": root, "paths": paths, "resources": res, "groups": groups,
            "predictions": tables.load_predictions(paths["predictions"].values())}


def check_png(path: Path, min_px: tuple[int, int]) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size[0] >= min_px[0] and img.size[1] >= min_px[1], img.size
        assert round(img.info["dpi"][0]) == figures.DPI


def check_vector(path: Path) -> None:
    head = path.read_bytes()[:200]
    assert (b"<svg" in head or b"<?xml" in head) if path.suffix == ".svg" else head.startswith(b"%PDF")


def test_model_colours_are_stable_when_models_are_added():
    few = figures.model_colours(["a", "b", "c"])
    more = figures.model_colours(["a", "b", "c", "d"])
    assert all(few[k] == more[k] for k in few) and len(set(more.values())) == 4


@pytest.fixture
def drawn(monkeypatch) -> list:
    """Every Matplotlib figure the figures modules save, kept open for the test to read its data."""
    kept = []

    def keep(fig, paths):
        kept.append(fig)
        for path in paths:
            figures.save_figure(fig, path, dpi=figures.DPI)

    for module in (figures, figures_gap):  # Figure 6 is drawn by figures_gap with the shared save
        monkeypatch.setattr(module, "save", keep)
    yield kept
    import matplotlib.pyplot as plt

    for fig in kept:
        plt.close(fig)


def _points(ax) -> np.ndarray:
    """(N, 2) data coordinates of every scatter point drawn in ``ax``."""
    from matplotlib.collections import PathCollection

    offsets = [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]
    return np.vstack(offsets) if offsets else np.empty((0, 2))


def _same_points(a: np.ndarray, b: np.ndarray) -> bool:
    key = lambda x: x[np.lexsort(x.T[::-1])]  # noqa: E731
    return a.shape == b.shape and np.allclose(key(a), key(b))


def test_fig1_fig3_fig6_pred_curves(data, tmp_path, drawn):
    """Print resolution, and the plotted data read back from each figure: histogram bars are the
    per-group age percentages, scatter points are the subjects' (age, predicted age) and BAG,
    the sweep line is each model's test MAE."""
    parts = read_participants(data["paths"]["participants"])
    preds = data["predictions"]
    colours = figures.model_colours(list(fx.MODELS))
    figures.fig1_age_distribution(parts, [tmp_path / "f1.png", tmp_path / "f1.svg"])
    sweep = figures.fig3_batch_size(preds, fx.MODELS, [tmp_path / "f3.png", tmp_path / "f3.pdf"], n_resamples=100)
    assert set(sweep["model"]) == set(stats.model_roles(fx.MODELS).sweep_models)
    chosen, _ = tables_disease.headline_models(fx.MODELS, stats.validation_maes(data["paths"]["train_logs"].values()))
    figures_gap.fig6_bag_violin(preds, chosen, colours, [tmp_path / "f6.png", tmp_path / "f6.svg"])
    figures.fig_pred_vs_age(preds, colours, [tmp_path / "pa.png"])
    figures.fig_training_curves(data["paths"]["train_logs"], colours, [tmp_path / "tc.png"])
    for name, size in (("f1", (900, 1200)), ("f3", (1000, 700)), ("f6", (1500, 700)), ("pa", (2000, 1000)), ("tc", (2000, 700))):
        check_png(tmp_path / f"{name}.png", size)
    for name in ("f1.svg", "f3.pdf", "f6.svg"):
        check_vector(tmp_path / name)
    f1, f3, f6, pa, _ = drawn

    # Figure 1: one panel per dataset and cohort; bar heights = % of the group per 5-year bin
    groups = parts.groupby(["dataset", "cohort"])
    assert len(f1.axes) == groups.ngroups
    for ax in f1.axes:
        dataset, cohort = ax.texts[0].get_text().split(" (N = ")[0].rsplit(" ", 1)
        ages = groups.get_group((dataset, cohort))["age"].to_numpy(float)
        bars = [(b.get_x(), b.get_x() + b.get_width(), b.get_height()) for b in ax.patches]
        assert sum(h for *_, h in bars) == pytest.approx(100.0)
        for lo, hi, height in bars:
            share = 100.0 * ((ages >= lo) & ((ages < hi) | ((hi == bars[-1][1]) & (ages == hi)))).mean()
            assert height == pytest.approx(share), (dataset, cohort, lo)

    # Figure 3: the line drawn is the sweep's test MAE of each model, recomputed here
    drawn_mae = sorted((x, y) for ln in f3.axes[0].lines if ln.get_marker() == "o"
                       for x, y in zip(ln.get_xdata(), ln.get_ydata()))
    expected_mae = sorted((fx.MODELS[n]["batch_size"], np.abs(t["predicted_age"] - t["age"]).mean())
                          for n in sweep["model"] for t in [stats.healthy_test(preds[n])])
    assert np.allclose(drawn_mae, expected_mae)

    # Figure 6: the points of each violin are the BAG of the HC test split, AD and PD of the shown models
    names = list(dict.fromkeys(chosen.values()))
    bag = _points(f6.axes[0])[:, 1]
    expected = np.concatenate([
        (stats.healthy_test(preds[n]) if c == "HC" else stats.disease_group(preds[n], c))["bag"].to_numpy(float)
        for n in names for c in ("HC", "AD", "PD")])
    assert np.allclose(np.sort(bag), np.sort(expected))

    # predicted vs age: per model panel, every HC test, AD and PD subject at (age, predicted age)
    for ax, name in zip(pa.axes, preds):
        assert ax.get_title() == name
        subjects = pd.concat([stats.healthy_test(preds[name]), stats.disease_group(preds[name], "AD"),
                              stats.disease_group(preds[name], "PD")])
        assert _same_points(_points(ax), subjects[["age", "predicted_age"]].to_numpy(float)), name


def test_saliency_figures_and_missing_groups(data, tmp_path):
    val = stats.validation_maes(data["paths"]["train_logs"].values())
    models4 = {k: v for k, v in fx.MODELS.items() if v["grid"] == 4}
    chosen = figures_saliency.fig_gradram(models4, val, data["groups"], [resource_paths(data["resources"], 4)["template"]], [tmp_path / "f7.png", tmp_path / "f7.svg"],
                                          ["rnc", "e2e"], figures_saliency.DISEASE_ROWS, "Grad-RAM in AD and PD")
    assert set(chosen) == {"rnc", "e2e"}
    check_png(tmp_path / "f7.png", (1500, 1800))
    check_vector(tmp_path / "f7.svg")
    template = resource_paths(data["resources"], 4)["template"]
    maps = [("HC 20-40 y", data["groups"]["sfcn"] / saliency_file("4", group="HC_20-40")), ("empty", tmp_path / "absent.nii.gz")]
    figures_saliency.fig_saliency(maps, template, [tmp_path / "f4.png"], "two rows, one without subjects")
    check_png(tmp_path / "f4.png", (1500, 800))
    with pytest.raises(ValueError, match="differs from the template"):
        figures_saliency.fig_saliency(maps[:1], _other_grid_template(tmp_path), [tmp_path / "x.png"], "x")



def test_fig3_three_sweep_points_sorted_by_batch_size(data, tmp_path):
    """A synthetic third point (batch 8, listed last in config) joins the 4 mm line, which is drawn
    in batch-size order; the numbers are each model's own test MAE."""
    import numpy as np
    import pandas as pd

    models = dict(fx.MODELS, rnc_b8={"backbone": "resnet18", "grid": 4, "loss": "rnc", "batch_size": 8})
    preds = dict(data["predictions"])
    extra = preds["rnc_b16"].copy()
    extra["predicted_age"] = extra["predicted_age"] + np.where(np.arange(len(extra)) % 2, 3.0, -3.0)
    preds["rnc_b8"] = extra
    sweep = figures.fig3_batch_size(preds, models, [tmp_path / "f3.png", tmp_path / "f3.svg"], n_resamples=0)
    line = sweep[sweep["grid"] == 4]
    assert list(line["model"]) == ["rnc_b8", "rnc_b16", "rnc_b32"] and list(line["batch_size"]) == [8, 16, 32]
    for _, row in sweep.iterrows():
        test = preds[row["model"]]
        test = test[(test["cohort"] == "HC") & (test["split"] == "test")]
        assert row["mae"] == pytest.approx(np.abs(test["predicted_age"] - test["age"]).mean())
    assert list(sweep[sweep["grid"] == 2]["batch_size"]) == [8, 24]
    check_png(tmp_path / "f3.png", (1000, 700))
    check_vector(tmp_path / "f3.svg")
    # the TSV the rule writes keeps the same order
    from brainage.core.io import write_tsv

    write_tsv(tmp_path / "f3.tsv", sweep)
    assert list(pd.read_csv(tmp_path / "f3.tsv", sep="\t")["model"]) == list(sweep["model"])


def test_fig6_second_panel_for_corrected_gap(data, tmp_path):
    preds = data["predictions"]
    chosen, _ = tables_disease.headline_models(fx.MODELS, stats.validation_maes(data["paths"]["train_logs"].values()))
    colours = figures.model_colours(list(fx.MODELS))
    assert figures_gap.fig6_bag_violin(preds, chosen, colours, [tmp_path / "raw.png"]) == ["bag"]
    corrected = {n: p.assign(bag_corrected=p["bag"] - (-0.12 * p["age"] + 6.6)) for n, p in preds.items()}
    assert figures_gap.fig6_bag_violin(corrected, chosen, colours, [tmp_path / "both.png", tmp_path / "both.svg"]) == ["bag", "bag_corrected"]
    with Image.open(tmp_path / "raw.png") as one, Image.open(tmp_path / "both.png") as two:
        assert two.size[0] == one.size[0] and two.size[1] > 1.6 * one.size[1]  # a second panel below the raw one
    assert "age-bias corrected" in (tmp_path / "both.svg").read_text()


def test_fig7_difference_maps_beside_group_means(data, tmp_path):
    """Figure 7 draws each disease group's mean and, beside it, patients minus age-matched HC
    (signed, diverging colours); a model without a difference map gets a row saying so."""
    import nibabel as nib
    import numpy as np

    models4 = {k: v for k, v in fx.MODELS.items() if v["grid"] == 4}
    val = stats.validation_maes(data["paths"]["train_logs"].values())
    groups = {}
    for name, d in data["groups"].items():
        groups[name] = tmp_path / name
        shutil.copytree(d, groups[name])
        mean = nib.load(str(d / saliency_file("4", group="AD")))
        hc = np.asarray(nib.load(str(d / saliency_file("4", group="HC_60-80"))).dataobj)
        for c in ("AD", "PD"):
            diff = np.asarray(nib.load(str(d / saliency_file("4", group=c))).dataobj) - hc  # signed: +/- both occur
            nib.save(nib.Nifti1Image(diff.astype(np.float32), mean.affine), str(groups[name] / saliency_file("4", group=f"{c}-minus-HC")))
    chosen = figures_saliency.fig_gradram(models4, val, groups, [resource_paths(data["resources"], 4)["template"]], [tmp_path / "f7.png", tmp_path / "f7.svg"],
                                          ["rnc", "e2e"], figures_saliency.DISEASE_ROWS, "Grad-RAM in AD and PD",
                                          differences=figures_saliency.DISEASE_DIFFERENCES)
    assert set(chosen) == {"rnc", "e2e"}
    check_png(tmp_path / "f7.png", (3000, 1800))
    svg = (tmp_path / "f7.svg").read_text()
    assert "Minus age-matched HC" in svg and "Group mean" in svg
    (groups[chosen["rnc"]] / saliency_file("4", group="PD-minus-HC")).unlink()
    figures_saliency.fig_gradram(models4, val, groups, [resource_paths(data["resources"], 4)["template"]], [tmp_path / "g7.svg"], ["rnc", "e2e"], figures_saliency.DISEASE_ROWS,
                                 "x", differences=figures_saliency.DISEASE_DIFFERENCES)
    assert "no difference map" in (tmp_path / "g7.svg").read_text()
    with pytest.raises(ValueError, match="difference maps for"):
        figures_saliency.fig_saliency([("a", None)], resource_paths(data["resources"], 4)["template"], [tmp_path / "x.png"], "x",
                                      differences=[None, None])


def test_fig_saliency_tells_a_missing_group_from_an_all_zero_map(data, tmp_path):
    """A group without subjects has no map file ("no subjects"); a map file that is zero
    everywhere (Grad-RAM's ReLU removed every voxel of every subject) says so instead."""
    import nibabel as nib
    import numpy as np

    template = resource_paths(data["resources"], 4)["template"]
    img = nib.load(str(template))
    zero = tmp_path / "zero.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), str(zero))
    figures_saliency.fig_saliency([("absent", None), ("zero", zero)], template, [tmp_path / "z.svg"], "x")
    svg = (tmp_path / "z.svg").read_text()
    # matplotlib writes each text as an SVG comment before its glyphs: one per slice of the row
    assert svg.count("<!-- no subjects -->") == 3 and svg.count("<!-- Grad-RAM 0 in every subject -->") == 3

def _other_grid_template(tmp_path: Path) -> Path:
    import nibabel as nib
    import numpy as np

    path = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.float32), np.eye(4)), str(path))
    return path


@pytest.mark.slow
def test_stats_rules_named_targets_and_report(data, tmp_path):
    """The stats rules through Snakemake on fixture inputs: fig6 asks for nothing else, and the
    report holds the figures and tables under their categories."""
    wf = tmp_path / "wf"
    shutil.copytree(data["root"] / "results", wf / "results")
    shutil.copytree(data["resources"], wf / "resources" / "atlases")
    (wf / "results" / "qc").mkdir()
    shutil.copy(wf / "results" / "models" / "sfcn" / "train_log.tsv", wf / "results" / "qc" / "qc.tsv")
    config = yaml.safe_load((REPO / "config" / "defaults.yaml").read_text())
    stats_cfg = dict(config["stats"], bootstrap=100)
    models = {k: dict(v, grid=4) for k, v in fx.MODELS.items()}
    (wf / "config.yaml").write_text(yaml.safe_dump({"seed": 1, "cohort": {"source": "simulate"}, "models": models, "stats": stats_cfg}))
    (wf / "Snakefile").write_text(
        f'import sys\nsys.path.insert(0, "{REPO / "src"}")\n'
        "from brainage.data.atlases import resource_paths\nfrom brainage.core.provenance import script_code_hash\n"
        f'def script_code(script):\n    return script_code_hash("{REPO / "workflow" / "scripts"}/" + script)\n'
        "from brainage.core import paths\n"
        "from pathlib import Path\n"
        f'SCRIPTS = Path("{REPO / "workflow" / "scripts"}")\n'
        "def model_dir(model):\n    return paths.model_dir(model)\n"
        "\n"
        'configfile: "config.yaml"\nRESOURCES = "resources/atlases"\nSEED = config["seed"]\n'
        "TRAINED = list(config['models'])\n"
        f'include: "{REPO / "workflow" / "rules" / "stats.smk"}"\n'
    )

    def smk(*args):
        out = subprocess.run(["snakemake", "--cores", "2", *args], cwd=wf, capture_output=True, text=True, timeout=600,
                             env=base_env())  # the base install's snakemake
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout + out.stderr

    dry = smk("-n", "fig6_bag_violin")
    stats_block = dry.split("Job stats:")[1].split("total")[0].splitlines()[3:]
    jobs = {line.split()[0]: int(line.split()[1]) for line in stats_block if line.strip()}
    assert jobs == {"fig6_bag_violin": 1}
    smk("fig6_bag_violin", "table1", "fig4_gradram_e2e")
    for name in ("figures/fig6_bag_violin.png", "figures/fig4_gradram_e2e.png", "tables/table1.tsv", "tables/table1.html"):
        assert (wf / "results" / name).stat().st_size > 0
    smk("--report", "results/report.html", "fig6_bag_violin", "table1", "fig4_gradram_e2e")
    report = (wf / "results" / "report.html").read_text()
    for needle in ("1. Cohort and QC", "4. Saliency", "5. Disease", "Figure 6.", "Table 1."):
        assert needle in report
