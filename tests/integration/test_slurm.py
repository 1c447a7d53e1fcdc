"""The tiny pipeline through a real single-node SLURM cluster with `snakemake --profile slurm`.

The cluster is the one tests/integration/start_slurm.sh starts on this machine (CI runs it
from .ci/run; as root the fixture below starts it too when the packages are installed). The
profile is the repository's slurm/config.yaml with only its sizes fitted to this one small
node (memory, runtime, first status check, subjects per group job); executor, status
command, requeue, groups and per-rule GPU requests are the real ones. Every job goes through
sbatch; the test checks the outputs and that SLURM ran and completed each job it was given.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import QC_FAILURE, planned_jobs, snakemake_cmd

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SLURMCTLD_LOG = Path("/var/log/slurm/slurmctld.log")
#: subjects bundled per SLURM job in the test (the real profile bundles 100)
SUBJECTS_PER_JOB = 2
#: subjects whose per-subject jobs rerun through SLURM
FORCED_SUBJECTS = 3
#: the whole tiny pipeline must finish within this. 34 sbatch jobs, each importing torch and
#: ANTs afresh: a CI run on a slow 2-core machine was cut off at 600 s while still working
#: (2026-12-03), so the bound is generous; a hang still fails, with the jobs that finished.
TIMEOUT_S = 1500

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _ping() -> bool:
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "UP" in out


def _node_state() -> str:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=20).stdout
    return out.split()[0] if out.split() else ""


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running single-node SLURM; skipped (with the reason) only where SLURM is not installed."""
    missing = [exe for exe in ("sbatch", "squeue", "scontrol", "slurmctld", "slurmd") if shutil.which(exe) is None]
    if missing:
        pytest.skip(f"SLURM is not installed here ({', '.join(missing)} not found); "
                    "run `bash tests/integration/start_slurm.sh` as root (CI does)")
    started = False
    if not _ping():
        if os.geteuid() != 0:
            pytest.skip("slurmctld is not running and starting it needs root: "
                        "run `sudo bash tests/integration/start_slurm.sh`")
        subprocess.run(["bash", str(HERE / "start_slurm.sh"), "--no-install"], check=True, timeout=180)
        started = True
    assert _ping(), "slurmctld does not answer `scontrol ping`"
    for _ in range(60):
        if _node_state() in ("idle", "mix", "alloc"):
            break
        time.sleep(1)
    assert _node_state() in ("idle", "mix", "alloc"), f"node state {_node_state()!r}"
    yield
    if started:
        subprocess.run(["bash", str(HERE / "stop_slurm.sh")], timeout=60)


def _node_size() -> tuple[int, int]:
    """(CPUs, memory MB) of the test node as SLURM sees it."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%c %m"], capture_output=True, text=True, timeout=20).stdout
    cpus, mem = out.split()[:2]
    return int(cpus), int(mem)


def _fit(value, cap):
    """A memory/runtime value (int or expression like '8000 * attempt') capped for this node."""
    return min(int(value), cap) if isinstance(value, int) or str(value).isdigit() else cap


def write_test_profile(work: Path, cpus: int, mem_mb: int) -> dict:
    """work/slurm/config.yaml: the repository's profile, sizes fitted to the test node."""
    profile = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    job_mem = max(1000, min(4000, mem_mb // 4))
    profile["slurm-init-seconds-before-status-checks"] = 2  # MinJobAge 300 s >> 3 x 2 s
    # Snakemake's default polls SLURM every 10 s; this node's jobs take 8-84 s (a cluster keeps
    # 10 s). Measured in CI: 385 s for the run against 395 s at 10 s, the jobs dominate
    profile["seconds-between-status-checks"] = 2
    profile["jobs"] = 4
    profile["retries"] = 0
    profile["latency-wait"] = 5
    profile["default-resources"] = {**profile["default-resources"], "mem_mb": job_mem, "runtime": 30}
    for rule, res in profile.get("set-resources", {}).items():
        if "mem_mb" in res:
            res["mem_mb"] = _fit(res["mem_mb"], job_mem)
        if "runtime" in res:
            res["runtime"] = _fit(res["runtime"], 30)
    profile["set-threads"] = {rule: min(int(n), cpus) for rule, n in profile.get("set-threads", {}).items()}
    profile["resources"] = {**profile["resources"], "mem_mb": min(int(profile["resources"]["mem_mb"]), 2 * job_mem)}
    profile["group-components"] = {
        group: (SUBJECTS_PER_JOB if group == "subject" else n) for group, n in profile["group-components"].items()
    }
    (work / "slurm").mkdir(parents=True)
    (work / "slurm" / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return profile


def _slurm_record(jobid: str) -> dict[str, str]:
    """What SLURM knows of a job: `scontrol show job` while it is kept (MinJobAge), else the log."""
    out = subprocess.run(["scontrol", "show", "job", "-o", jobid], capture_output=True, text=True, timeout=20)
    if out.returncode == 0 and f"JobId={jobid} " in out.stdout:
        return dict(re.findall(r"(\w+)=(\S*)", out.stdout))
    if SLURMCTLD_LOG.is_file():
        text = SLURMCTLD_LOG.read_text(errors="replace")
        if re.search(rf"_job_complete: JobId={jobid} WEXITSTATUS 0", text):
            return {"JobId": jobid, "JobState": "COMPLETED", "source": "slurmctld.log"}
    return {}


def slurm_targets(run: Path) -> list[str]:
    """What the cluster run makes: every prediction and saliency map (rule infer_all) and every
    table of the local run (its .tsv: the statistics group job with the table rules). The
    figures are left out: the same scripts on the same tables as the local run, each its own
    Snakemake step in the group job (110 of the run's 377 s in CI, for fifteen figures)."""
    return ["infer_all", *(str(p.relative_to(run)) for p in sorted((run / "results" / "tables").glob("*.tsv")))]


@pytest.fixture(scope="module")
def tiny_slurm_run(slurm_cluster, tiny_run, tmp_path_factory):
    """The tiny pipeline through `snakemake --profile slurm`, every stage of it.

    Starting from scratch would spend the CI budget on preprocessing, so the run starts from
    a copy of the completed local tiny run (tests/conftest.py `tiny_run`) and makes every
    stage run again through SLURM, as a user resuming on a cluster would: the raw scans of
    three subjects are re-simulated (--forcerun), which reruns their simulation and
    preprocessing (bundled group jobs), the cohort table and QC, splits, cache, every model,
    predictions, saliency and the tables (:func:`slurm_targets`); and one model now asks for a GPU.
    """
    work = tmp_path_factory.mktemp("slurm_run") / "work"
    shutil.copytree(tiny_run, work, symlinks=True)
    config_path = work / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    # One model asks SLURM for a GPU (the node has one stand-in GPU; the job finds no CUDA and
    # trains on CPU), so that a rule's GPU request reaches sbatch as on a GPU cluster.
    gpu_model = next(iter(config.get("models") or {}), None)
    if gpu_model:
        config["models"][gpu_model]["gpus"] = 1
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    cpus, mem_mb = _node_size()
    profile = write_test_profile(work, cpus, mem_mb)
    # not the subject whose scan the local run spoiled (re-simulated, it would pass QC here)
    subjects = sorted(p.name for p in (work / "results" / "preprocess").glob("sub-*") if p.name != QC_FAILURE)
    subjects = subjects[:FORCED_SUBJECTS]
    raw = [f"results/cohort/bids/{s}/anat/{s}_T1w.nii.gz" for s in subjects]
    forced = ["--forcerun", *raw] if config["cohort"]["source"] == "simulate" else ["--forcerun", "preprocess"]
    targets = slurm_targets(tiny_run)  # before --forcerun, which takes every argument after it

    planned = planned_jobs(work, *targets, *forced)
    # from the test environment: in CI it was built by the README's slurm line (the executor plugin)
    cmd = snakemake_cmd(work, *targets, "--profile", "slurm", "--cores", str(cpus), *forced, python=sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as err:
        log = "".join(b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
                      for b in (err.stdout, err.stderr))
        (work / "snakemake-slurm.log").write_text(log)
        done = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", log)
        pytest.fail(f"snakemake --profile slurm did not finish in {TIMEOUT_S} s ({work}); "
                    f"{len(done)} jobs had finished: {' '.join(done)}\n{log[-3000:]}")
    seconds = time.monotonic() - start
    log = proc.stdout + proc.stderr
    (work / "snakemake-slurm.log").write_text(log)
    assert proc.returncode == 0, f"snakemake --profile slurm failed ({work}):\n{log[-6000:]}"
    return {"work": work, "log": log, "profile": profile, "seconds": seconds, "gpu_model": gpu_model,
            "planned": planned, "subjects": subjects}


def _is_aggregate(rule: str) -> bool:
    return rule == "all" or rule.endswith("_all")


def test_every_job_ran_through_sbatch(tiny_slurm_run, capsys):
    log = tiny_slurm_run["log"]
    jobids = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    assert jobids, "no job was submitted to SLURM"
    assert len(set(jobids)) == len(jobids)
    with capsys.disabled():
        print(f"\nSLURM job ids submitted by `snakemake --profile slurm` "
              f"({tiny_slurm_run['seconds']:.0f} s): {' '.join(jobids)}")

    # Snakemake ran exactly the jobs its dry-run planned, in every stage
    planned = sorted(r for r, _ in tiny_slurm_run["planned"] if not _is_aggregate(r))
    ran = sorted(r for r in re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", log) if not _is_aggregate(r))
    assert ran == planned
    for rule in ("simulate_subject", "preprocess", "qc_table", "splits", "cache", "train", "predict_cohort",
                 "saliency", "table2"):
        assert rule in ran, f"{rule} did not run through SLURM"

    # SLURM knows each job and completed it
    records = {j: _slurm_record(j) for j in jobids}
    unknown = [j for j, r in records.items() if not r]
    assert not unknown, f"SLURM has no record of jobs {unknown}"
    assert all(r["JobState"] == "COMPLETED" for r in records.values()), records

    # and each job that ran was one of them: the plugin logs each submission under the rule
    # or group name (logs/slurm/rule_<rule>/... or logs/slurm/group_<group>_<rules>/...)
    submitted = re.findall(r"has been submitted with SLURM jobid \d+ \(log: \S*/logs/slurm/(rule|group)_(\w+)", log)
    singles = {name for kind, name in submitted if kind == "rule"}
    groups = tiny_slurm_run["profile"]["groups"]
    group_jobs = {name.split("_", 1)[0] for kind, name in submitted if kind == "group"}  # group_<id>_<rules...>
    outside = {r for r in ran if r not in singles and groups.get(r) not in group_jobs}
    assert not outside, f"rules run outside SLURM: {sorted(outside)}"
    assert "localrule" not in log or all(_is_aggregate(r) for r in re.findall(r"^localrule (\w+):", log, re.M))


def test_subject_jobs_are_bundled(tiny_slurm_run):
    log = tiny_slurm_run["log"]
    group_jobs = re.findall(r"has been submitted with SLURM jobid \d+ \(log: \S*/logs/slurm/group_subject_", log)
    n = len(tiny_slurm_run["subjects"])
    # one SLURM job per SUBJECTS_PER_JOB subjects, each running all their per-subject jobs
    assert len(group_jobs) == math.ceil(n / SUBJECTS_PER_JOB), group_jobs
    grouped_rules = {r for r, g in tiny_slurm_run["profile"]["groups"].items() if g == "subject"}
    finished = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", log)
    assert sum(finished.count(r) for r in grouped_rules) >= n


def test_gpu_request_reaches_slurm(tiny_slurm_run):
    log = tiny_slurm_run["log"]
    gpu_rules = {r for r, res in tiny_slurm_run["profile"]["set-resources"].items() if res.get("gpu")}
    # the plugin's log path names rule and wildcards: logs/slurm/rule_<rule>/<wildcards>/<jobid>.log
    jobs = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: \S*/logs/slurm/rule_(\w+)/(?:([^/\s]+)/)?\d+\.log", log)
    gpu_jobs = [j for j, rule, wc in jobs
                if rule in gpu_rules or (rule == "train" and wc.endswith(str(tiny_slurm_run["gpu_model"])))]
    assert gpu_jobs, "no GPU-requesting job was submitted"
    cpu_jobs = [j for j, rule, wc in jobs if j not in gpu_jobs]
    checked = 0
    for jobid in gpu_jobs:
        record = _slurm_record(jobid)
        if "TresPerJob" in record:  # scontrol still holds the job (MinJobAge)
            assert "gpu:1" in record["TresPerJob"], (jobid, record)
            checked += 1
    assert checked, "SLURM no longer holds the GPU jobs' records"
    for jobid in cpu_jobs:  # and only those asked for one
        assert "gpu" not in _slurm_record(jobid).get("TresPerJob", ""), jobid


def test_outputs(tiny_slurm_run):
    work = tiny_slurm_run["work"]
    for subject in tiny_slurm_run["subjects"]:
        assert list((work / "results" / "preprocess" / subject / "anat").glob("*desc-preproc_T1w.nii.gz"))
    assert (work / "results" / "cohort" / "participants.tsv").is_file()
    assert list((work / "results" / "predictions").glob("*.tsv"))
    # SLURM's own logs are where the README says
    assert list((work / "logs" / "slurm").rglob("*.log"))
    # and a second invocation finds nothing to do
    out = subprocess.run(snakemake_cmd(work, *slurm_targets(work), "--profile", "slurm", "--cores", "2", "-n",
                                       python=sys.executable),
                         cwd=work, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Nothing to be done" in out.stdout + out.stderr, (out.stdout + out.stderr)[-3000:]


def test_predictions_and_tables_equal_the_local_run(tiny_slurm_run, tiny_run):
    """The cluster run remade every stage (simulation and preprocessing of three subjects, then
    all downstream) in SLURM jobs with the profile's threads; its predictions and tables equal the
    local run's value for value (preprocessing runs ITK on one thread whatever the job's)."""
    import nibabel as nib
    import numpy as np
    import pandas as pd

    cluster, local = tiny_slurm_run["work"] / "results", tiny_run / "results"
    for subject in tiny_slurm_run["subjects"]:  # the remade scans and their preprocessing
        anat = Path("preprocess") / subject / "anat"
        volumes = sorted((local / anat).glob("*.nii.gz"))
        assert volumes
        for path in volumes:
            mine, ref = nib.load(cluster / anat / path.name), nib.load(path)
            assert np.array_equal(mine.get_fdata(), ref.get_fdata()) and np.array_equal(mine.affine, ref.affine), path

    predictions = sorted((local / "predictions").glob("*.tsv"))
    assert predictions
    for path in predictions:
        pd.testing.assert_frame_equal(pd.read_csv(cluster / "predictions" / path.name, sep="\t"),
                                      pd.read_csv(path, sep="\t"), check_exact=True, obj=path.name)
    tables = sorted((local / "tables").glob("*.tsv"))
    assert tables
    for path in tables:
        assert (cluster / "tables" / path.name).read_text() == path.read_text(), path.name

