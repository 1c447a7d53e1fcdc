"""config/paper.yaml over config/defaults.yaml, the study's settings the README sends cluster users
to: its models are the study's (DESIGN.md, "The study's settings"), it passes the config schema,
and a dry run over the embedded cohort plans the jobs the study implies (nothing runs)."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_workdir, planned_jobs, snakemake_cmd

from brainage.config import resolved_config
from brainage.models.spec import resolve_spec

PAPER = REPO / "config" / "paper.yaml"

#: (loss, backbone, grid mm, batch size, augment) of every model of the study: end-to-end
#: ResNet18/50/101 at 1 mm, batch 4, with and without augmentation; RNC-highRez (ResNet18, 1 mm,
#: batch 24) with its sweep 8/16; RNC-lowRez (ResNet50, 2 mm, batch 48) with its sweep 16/24/32;
#: the SFCN baseline
STUDY_MODELS = (
    {("l1", backbone, 1, 4, augment) for backbone in ("resnet18", "resnet50", "resnet101") for augment in (True, False)}
    | {("rnc", "resnet18", 1, batch, True) for batch in (8, 16, 24)}
    | {("rnc", "resnet50", 2, batch, True) for batch in (16, 24, 32, 48)}
    | {("l1", "sfcn", 1, 8, True)}
)
#: rules that run once per model, per subject, per grid
PER_MODEL = ("train", "predict_cohort", "saliency")
PER_SUBJECT = ("simulate_subject", "preprocess")
#: rules that run once: every table and figure (Figure 3 too: the paper config holds the
#: batch-size sweeps), and the cohort-wide steps
ONCE = ("table1", "table2", "table3", "table4", "study_comparison", "fig1_age_distribution", "fig3_batch_size",
        "fig4_gradram_e2e", "fig5_gradram_rnc", "fig6_bag_violin", "fig7_gradram_disease", "fig_pred_vs_age",
        "fig_training_curves", "fig_qc_montage", "resources", "simulate_anatomy", "simulate_cohort", "qc_table",
        "splits", "all", "provenance",
        # the simulated cohort's known gaps against the predicted ones (the demo cohort is simulated)
        "table_gap_recovery", "fig_gap_recovery")


def _paper() -> dict:
    return yaml.safe_load(PAPER.read_text())


def test_paper_models_are_the_studys():
    specs = {name: resolve_spec(entry) for name, entry in _paper()["models"].items()}
    found = {(s["loss"], s["backbone"], s["grid"], s["batch_size"], s["augment"]) for s in specs.values()}
    assert found == STUDY_MODELS and len(specs) == len(STUDY_MODELS)
    for name, s in specs.items():
        assert s["width"] == 1.0 and s["conv1_stride"] == 1, name
        if s["loss"] == "l1":  # Adam lr 1e-3, 300 epochs with early stopping
            assert (s["optimiser"]["name"], s["optimiser"]["lr"], s["epochs"]) == ("adam", 1e-3, 300), name
            assert s["patience"], name
        else:  # SGD lr 0.5, momentum 0.9, decay 0.1, 1000 epochs, temperature 2; head SGD 0.05/0.9/0.2, 100 epochs
            opt, head = s["optimiser"], s["head"]
            assert (opt["name"], opt["lr"], opt["momentum"], opt["gamma"], s["epochs"]) == ("sgd", 0.5, 0.9, 0.1, 1000), name
            assert s["rnc"]["temperature"] == 2.0, name
            # through the gradient cache: unchunked, 2 x batch full-size views are one graph of
            # 100-240 GiB (benchmarks/bench_study_models.py), more than any GPU holds
            assert 1 <= s["rnc"]["chunk_size"] <= 16 and s["rnc"]["chunk_size"] < 2 * s["batch_size"], name
            assert (head["lr"], head["momentum"], head["gamma"], head["epochs"]) == (0.05, 0.9, 0.2, 100), name


def test_paper_training_settings_are_the_studys():
    """As `--configfile config/paper.yaml` resolves them: the defaults with paper.yaml on top."""
    paper = resolved_config([PAPER], REPO)
    assert paper["preprocess"]["grids"] == [1, 2]
    assert paper["training"]["splits"]["fractions"] == [0.8, 0.1, 0.1]
    assert paper["training"]["augment"] == {"p": 0.5, "translate_vox": 10, "rotate_rad": [0.1, 0.5], "noise_sd": 0.025,
                                            "crop_min_scale": 0.7}
    assert paper["infer"]["bias_correction"] is False  # the study reports the raw gap (the demo: corrected too)


def _paper_workdir(tmp_path: Path, paper: dict | None = None) -> tuple[Path, Path]:
    """A working copy with the demo config, and the paper config given as a --configfile (which
    layers it over config/defaults.yaml, the demo left out)."""
    work = make_workdir(tmp_path / "work", yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    path = work / "config" / "paper.yaml"
    if paper is None:
        shutil.copy(PAPER, path)
    else:
        path.write_text(yaml.safe_dump(paper, sort_keys=False))
    return work, path


@pytest.mark.slow  # ~15 s: the DAG of 240 subjects and 14 models
def test_paper_config_dry_run_plans_the_studys_jobs(tmp_path):
    work, paper = _paper_workdir(tmp_path)
    jobs = planned_jobs(work, "--configfile", str(paper))
    counts = Counter(rule for rule, _ in jobs)
    cohort = resolved_config([PAPER], REPO)["cohort"]["simulate"]  # the embedded cohort's sizes
    n_subjects = cohort["n_hc"] + cohort["n_ad"] + cohort["n_pd"]
    for rule in PER_MODEL:
        assert sorted(w["model"] for r, w in jobs if r == rule) == sorted(_paper()["models"]), rule
    for rule in PER_SUBJECT:
        assert counts[rule] == n_subjects, rule
    assert sorted(w["res"] for r, w in jobs if r == "cache") == ["1", "2"]  # one training cache per study grid
    assert {rule for rule, n in counts.items() if n == 1} == set(ONCE)
    assert sum(counts.values()) == len(PER_MODEL) * len(STUDY_MODELS) + len(PER_SUBJECT) * n_subjects + 2 + len(ONCE)


def test_paper_config_is_checked_against_the_schema(tmp_path):
    """The same dry run refuses a paper config whose batch size is not an integer."""
    paper = _paper()
    paper["models"]["rnc_highrez"]["batch_size"] = "twenty-four"
    work, path = _paper_workdir(tmp_path, paper)
    out = subprocess.run(snakemake_cmd(work, "-n", "--cores", "1", "--configfile", str(path)), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode != 0
    assert "batch_size" in out.stdout + out.stderr and "twenty-four" in out.stdout + out.stderr
