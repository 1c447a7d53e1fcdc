"""Batches of subjects per job (config cohort.subjects_per_job, preprocess.subjects_per_job):
the demo simulates and preprocesses its subjects several to a job, so that torch, ANTs and
deepbet are imported once per batch. The reference is the tiny run (tests/conftest.py
`tiny_run`), made with one job per subject: the same cohort run in batches must write the same
files with the same values (a subject processed after others in one process must not inherit
anything from them), keep every subject's log, fail the same bad scan's QC without stopping its
batch, and run one job per batch. Two preprocessing batches of three are run, the spoiled scan's
and the next (six of the fifteen subjects, eight simulated in two batches of four): the
pipeline's batching is the same for any number of them, and the whole cohort cost 100 s in CI.
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

SIM_PER_JOB, PP_PER_JOB = 4, 3
#: the preprocessing batches run: the spoiled scan's (the ninth subject: hc0007, hc0008, ad0001)
#: and the next; they need the simulation batches b001 and b002
PP_BATCHES, SIM_BATCHES = ("b002", "b003"), ("b001", "b002")


@pytest.fixture(scope="module")
def batched_run(tmp_path_factory):
    config = tiny_run_config()
    config["cohort"]["subjects_per_job"] = SIM_PER_JOB
    config["preprocess"]["subjects_per_job"] = PP_PER_JOB
    work = make_workdir(tmp_path_factory.mktemp("batched") / "work", config)
    log = ""
    targets = [f"preprocess_{batch}" for batch in PP_BATCHES]
    for step in ([QC_FAILURE_T1W], targets):  # as the tiny run: simulate, spoil, go on
        out = subprocess.run(snakemake_cmd(work, "--cores", "2", *step), capture_output=True, text=True,
                             timeout=1800)
        log += out.stdout + out.stderr
        assert out.returncode == 0, f"batched run failed in {work}:\n{log[-6000:]}"
        if step == [QC_FAILURE_T1W]:
            spoil_header_voxel_size(work / QC_FAILURE_T1W, QC_FAILURE_SCALE)
    return work, log


def _subjects(work):
    return sorted(p.name for p in (work / "results" / "preprocess").glob("sub-*"))


def _cohort(run):
    """The cohort's subjects in the order of its participants table (the order of the batches)."""
    lines = (run / "results" / "cohort" / "participants.tsv").read_text().splitlines()[1:]
    return [line.split("\t", 1)[0] for line in lines]


def _members(cohort, batches, per_job):
    """The subjects of ``batches`` (b000 holds the first ``per_job``, b001 the next, ...)."""
    return [s for b in batches for s in cohort[int(b[1:]) * per_job:(int(b[1:]) + 1) * per_job]]


def test_one_job_per_batch(batched_run, tiny_run):
    work, log = batched_run
    ran = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", log)
    assert sorted(r for r in ran if r.startswith("preprocess_b")) == [f"preprocess_{b}" for b in PP_BATCHES]
    assert sorted(r for r in ran if r.startswith("simulate_b")) == [f"simulate_{b}" for b in SIM_BATCHES]
    assert not {"preprocess", "simulate_subject"} & set(ran)
    cohort = _cohort(tiny_run)
    assert _subjects(work) == sorted(_members(cohort, PP_BATCHES, PP_PER_JOB))
    for subject in _members(cohort, SIM_BATCHES, SIM_PER_JOB):  # every subject keeps its own log
        assert (work / "logs" / "simulate_subject" / f"{subject}.log").exists()
    for subject in _subjects(work):
        assert (work / "logs" / "preprocess" / f"{subject}.log").stat().st_size > 0


def test_batched_outputs_equal_one_job_per_subject(batched_run, tiny_run):
    work, _ = batched_run
    cohort = _cohort(tiny_run)
    for subject in _members(cohort, SIM_BATCHES, SIM_PER_JOB):
        raw = f"results/cohort/bids/{subject}/anat/{subject}_T1w.nii.gz"
        a, b = nib.load(work / raw), nib.load(tiny_run / raw)
        np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj), err_msg=raw)
        np.testing.assert_array_equal(a.affine, b.affine, err_msg=raw)
    assert set(_subjects(work)) < set(_subjects(tiny_run))
    for subject in _subjects(work):
        anat = f"results/preprocess/{subject}/anat"
        assert_same_preprocessing(work / anat, tiny_run / anat)


def test_bad_scan_in_a_batch_fails_qc_and_its_batch_goes_on(batched_run, tiny_run):
    """The spoiled scan fails QC inside its batch (the cohort's QC table then excludes it, as
    the tiny run's tests check); its batch mates and the next batch are processed and pass."""
    work, _ = batched_run
    first = _members(_cohort(tiny_run), PP_BATCHES[:1], PP_PER_JOB)
    assert QC_FAILURE in first and len(first) == PP_PER_JOB
    qc = json.loads((work / f"results/preprocess/{QC_FAILURE}/anat/{QC_FAILURE}_desc-qc.json").read_text())
    assert qc["passed"] is False and qc["reasons"]
    others = [s for s in _subjects(work) if s != QC_FAILURE]
    assert len(others) == 2 * PP_PER_JOB - 1
    verdicts = [json.loads((work / f"results/preprocess/{s}/anat/{s}_desc-qc.json").read_text())["passed"]
                for s in others]
    assert all(verdicts), "a bad scan stopped or spoiled the other subjects of its batch"
