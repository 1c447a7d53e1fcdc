"""Batches of subjects per job (config cohort.subjects_per_job, preprocess.subjects_per_job):
the demo simulates and preprocesses its subjects several to a job, so that torch, ANTs and
deepbet are imported once per batch. The reference is the tiny run (tests/conftest.py
`tiny_run`), made with one job per subject: the same cohort run in batches must write the same
files with the same values (a subject processed after others in one process must not inherit
anything from them), keep every subject's log, exclude the same bad scan without stopping its
batch, and run one job per batch.
"""

from __future__ import annotations

import json
import re
import subprocess

import nibabel as nib
import numpy as np
import pytest
from conftest import (QC_FAILURE, QC_FAILURE_SCALE, QC_FAILURE_T1W, assert_same_preprocessing, make_workdir,
                      snakemake_cmd, spoil_header_voxel_size, tiny_run_config)

pytestmark = pytest.mark.slow

SIM_PER_JOB, PP_PER_JOB = 4, 6

@pytest.fixture(scope="module")
def batched_run(tmp_path_factory):
    config = tiny_run_config()
    config["cohort"]["subjects_per_job"] = SIM_PER_JOB
    config["preprocess"]["subjects_per_job"] = PP_PER_JOB
    work = make_workdir(tmp_path_factory.mktemp("batched") / "work", config)
    log = ""
    for step in ([QC_FAILURE_T1W], ["preprocess_all"]):  # as the tiny run: simulate, spoil, go on
        out = subprocess.run(snakemake_cmd(work, "--cores", "2", *step), capture_output=True, text=True,
                             timeout=1800)
        log += out.stdout + out.stderr
        assert out.returncode == 0, f"batched run failed in {work}:\n{log[-6000:]}"
        if step == [QC_FAILURE_T1W]:
            spoil_header_voxel_size(work / QC_FAILURE_T1W, QC_FAILURE_SCALE)
    return work, log


def _subjects(work):
    return sorted(p.name for p in (work / "results" / "preprocess").glob("sub-*"))


def test_one_job_per_batch(batched_run, tiny_run):
    work, log = batched_run
    n = len(_subjects(tiny_run))
    ran = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", log)
    assert sorted(r for r in ran if r.startswith("preprocess_b")) == [f"preprocess_b{i:03d}"
                                                                      for i in range(-(-n // PP_PER_JOB))]
    assert len([r for r in ran if r.startswith("simulate_b")]) == -(-n // SIM_PER_JOB)
    assert not {"preprocess", "simulate_subject"} & set(ran)
    for subject in _subjects(tiny_run):  # every subject keeps its own log
        assert (work / "logs" / "simulate_subject" / f"{subject}.log").exists()
        assert (work / "logs" / "preprocess" / f"{subject}.log").stat().st_size > 0


def test_batched_outputs_equal_one_job_per_subject(batched_run, tiny_run):
    work, _ = batched_run
    assert _subjects(work) == _subjects(tiny_run)
    for subject in _subjects(tiny_run):
        raw = f"results/cohort/bids/{subject}/anat/{subject}_T1w.nii.gz"
        a, b = nib.load(work / raw), nib.load(tiny_run / raw)
        np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj), err_msg=raw)
        np.testing.assert_array_equal(a.affine, b.affine, err_msg=raw)
        anat = f"results/preprocess/{subject}/anat"
        assert_same_preprocessing(work / anat, tiny_run / anat)


def test_bad_scan_in_a_batch_is_excluded_and_its_batch_goes_on(batched_run):
    work, _ = batched_run
    qc = json.loads((work / f"results/preprocess/{QC_FAILURE}/anat/{QC_FAILURE}_desc-qc.json").read_text())
    assert qc["passed"] is False and qc["reasons"]
    excluded = (work / "results" / "qc" / "excluded.tsv").read_text()
    assert QC_FAILURE in excluded
    others = [s for s in _subjects(work) if s != QC_FAILURE]
    verdicts = [json.loads((work / f"results/preprocess/{s}/anat/{s}_desc-qc.json").read_text())["passed"]
                for s in others]
    assert all(verdicts), "a bad scan stopped or spoiled the other subjects of its batch"
