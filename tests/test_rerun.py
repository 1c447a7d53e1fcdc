"""Rerun only what changed: dry-run job lists after a change to a completed tiny run.

Each test takes a private copy of the completed tiny run (tests/conftest.py `tiny_copy`:
results, Snakemake's metadata and a copy of the workflow and library code), makes one change
a user makes — a model's training parameter, one more subject, a figure script, the loss
module — and asks Snakemake which jobs it would run (`snakemake -n`, parsed into (rule,
wildcards) pairs). The expectation is the dependency structure of the study, written here
independently of the rule files: a stage's rules are read from its rule file only to know
which stage a rule belongs to.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import planned_jobs, snakemake_cmd

pytestmark = pytest.mark.slow


def stage_rules(work: Path) -> dict[str, set[str]]:
    """Rule names per stage, from workflow/rules/<stage>.smk of the working copy."""
    return {
        smk.stem: set(re.findall(r"^\s*(?:rule|checkpoint) (\w+):", smk.read_text(), flags=re.M))
        for smk in (work / "workflow" / "rules").glob("*.smk")
    }


def is_aggregate(rule: str) -> bool:
    """Target-only rules (`all`, `<stage>_all`): they run nothing."""
    return rule == "all" or rule.endswith("_all")


def real_jobs(work: Path, *args: str) -> list[tuple[str, dict[str, str]]]:
    return [(rule, wc) for rule, wc in planned_jobs(work, *args) if not is_aggregate(rule)]


def edit_config(work: Path, change) -> dict:
    path = work / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def touch_code(path: Path) -> None:
    """An edit that changes the file's bytes (and so its hash and mtime), not its behaviour."""
    path.write_text(path.read_text() + "\n# edited by tests/test_rerun.py\n")


def test_completed_run_is_up_to_date(tiny_copy):
    assert real_jobs(tiny_copy) == []


def test_training_parameter_reruns_that_model_and_downstream_only(tiny_copy):
    models = yaml.safe_load((tiny_copy / "config" / "config.yaml").read_text())["models"]
    assert len(models) >= 2, "the tiny config needs two models to tell them apart"
    changed = next(name for name, spec in models.items() if spec.get("loss") == "rnc")
    edit_config(tiny_copy, lambda c: c["models"][changed].update(epochs=int(c["models"][changed]["epochs"]) + 1))

    jobs = real_jobs(tiny_copy)
    stages = stage_rules(tiny_copy)
    rules = {rule for rule, _ in jobs}
    assert ("train", {"model": changed}) in jobs
    # every job tied to a model is tied to the changed one
    other = [(r, wc) for r, wc in jobs if "model" in wc and wc["model"] != changed]
    assert not other, f"jobs of unchanged models rerun: {other}"
    # nothing upstream of training reruns: no cohort, preprocessing, splits or cache job
    upstream = rules & (stages.get("cohort", set()) | stages.get("preprocess", set()) | {"splits", "cache", "resources"})
    assert not upstream, f"upstream jobs rerun: {sorted(upstream)}"
    # the changed model's predictions are redone
    assert any(r in stages.get("infer", set()) and wc.get("model") == changed for r, wc in jobs)


def test_new_subject_runs_its_own_preprocessing_only(tiny_copy):
    before = {p.name for p in (tiny_copy / "results" / "preprocess").glob("sub-*")}
    config = edit_config(tiny_copy, lambda c: c["cohort"]["simulate"].update(n_ad=c["cohort"]["simulate"]["n_ad"] + 1))
    new = f"sub-ad{config['cohort']['simulate']['n_ad']:04d}"
    assert new not in before

    jobs = real_jobs(tiny_copy)
    stages = stage_rules(tiny_copy)
    per_subject = [(r, wc["subject"]) for r, wc in jobs if "subject" in wc]
    assert {s for _, s in per_subject} == {new}, f"per-subject jobs of other subjects: {per_subject}"
    preprocess = {r for r, _ in per_subject} & stages.get("preprocess", set())
    assert preprocess, f"the new subject is not preprocessed: {jobs}"
    # cohort-level jobs (no subject wildcard) follow: the manifest and what reads it
    assert any("subject" not in wc for _, wc in jobs)


def test_figure_script_edit_reruns_that_figure_only(tiny_copy):
    touch_code(tiny_copy / "workflow" / "scripts" / "fig6_bag_violin.py")
    assert [rule for rule, _ in real_jobs(tiny_copy)] == ["fig6_bag_violin"]


def test_loss_module_edit_reruns_rnc_training_not_preprocessing(tiny_copy):
    models = yaml.safe_load((tiny_copy / "config" / "config.yaml").read_text())["models"]
    rnc = {name for name, spec in models.items() if spec.get("loss") == "rnc"}
    touch_code(tiny_copy / "src" / "brainage" / "train" / "losses.py")

    jobs = real_jobs(tiny_copy)
    stages = stage_rules(tiny_copy)
    trained = {wc["model"] for r, wc in jobs if r == "train"}
    assert rnc <= trained, f"RNC models not retrained: {rnc - trained}"
    rules = {r for r, _ in jobs}
    upstream = rules & (stages.get("cohort", set()) | stages.get("preprocess", set()) | {"splits", "cache", "resources"})
    assert not upstream, f"editing losses.py reruns {sorted(upstream)}"


def test_killed_training_job_resumes_when_snakemake_is_rerun(tiny_copy):
    """SIGTERM to Snakemake and its training job mid-run (Ctrl-C, SLURM preemption), then the
    same command again: the job continues from its last epoch checkpoint, not from epoch 1."""
    name = "resnet18_e2e"
    epochs = 40
    edit_config(tiny_copy, lambda c: c["models"][name].update(epochs=epochs, patience=None))
    model_dir = tiny_copy / "results" / "models" / name
    target = f"results/models/{name}/model.pt"
    log_path = tiny_copy / "logs" / "train" / f"{name}.log"
    log_path.unlink(missing_ok=True)

    first = subprocess.Popen(snakemake_cmd(tiny_copy, "--cores", "2", target), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = 0
    deadline = time.time() + 600
    while seen < 3 and first.poll() is None and time.time() < deadline:
        done = re.findall(rf"{name} epoch (\d+)/{epochs}", log_path.read_text() if log_path.exists() else "")
        seen = max(map(int, done), default=0)
        time.sleep(0.05)
    assert first.poll() is None, f"training finished before it could be killed:\n{first.stdout.read()[-3000:]}"
    assert seen >= 3, "no epoch logged within 10 minutes"
    os.killpg(first.pid, signal.SIGTERM)  # Snakemake and the job, as SLURM preemption does
    first.communicate(timeout=300)
    assert first.returncode != 0
    assert not (tiny_copy / target).exists()

    second = subprocess.run(snakemake_cmd(tiny_copy, "--cores", "2", target), capture_output=True, text=True,
                            timeout=1200)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    resumed = re.search(rf"{name}: resumed from .* at phase main epoch (\d+)", log_path.read_text())
    assert resumed, f"the rerun started over:\n{log_path.read_text()[-3000:]}"
    assert int(resumed.group(1)) >= seen  # every epoch logged before the kill was kept
    # one row per epoch across both runs: none lost, none trained twice
    log = pd.read_csv(model_dir / "train_log.tsv", sep="\t")
    assert log.loc[log["phase"] == "e2e", "epoch"].tolist() == list(range(1, epochs + 1))
    assert not (model_dir / "checkpoint.pt").exists()
