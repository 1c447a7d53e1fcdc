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
from conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SLURMCTLD_LOG = Path("/var/log/slurm/slurmctld.log")
#: subjects bundled per SLURM job in the test (the real profile bundles 100)
SUBJECTS_PER_JOB = 4
#: the whole tiny pipeline must finish within this (CI budget for this test: 5 min)
TIMEOUT_S = 600

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


@pytest.fixture(scope="module")
def tiny_slurm_run(slurm_cluster, tmp_path_factory):
    """The tiny pipeline, run once through `snakemake --profile slurm` in a fresh working dir."""
    work = tmp_path_factory.mktemp("slurm_run")
    (work / "config").mkdir()
    tiny = tiny_config()
    # One model asks SLURM for a GPU (the node has one stand-in GPU; the job finds no CUDA and
    # trains on CPU), so that a rule's GPU request reaches sbatch as on a GPU cluster.
    gpu_model = next(iter(tiny.get("models") or {}), None)
    if gpu_model:
        tiny["models"][gpu_model]["gpus"] = 1
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    cpus, mem_mb = _node_size()
    profile = write_test_profile(work, cpus, mem_mb)

    cmd = [sys.executable, "-m", "snakemake", "--profile", "slurm", "-s", str(REPO / "Snakefile"),
           "--cores", str(cpus)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    seconds = time.monotonic() - start
    log = proc.stdout + proc.stderr
    (work / "snakemake.log").write_text(log)
    assert proc.returncode == 0, f"snakemake --profile slurm failed ({work}):\n{log[-6000:]}"
    return {"work": work, "log": log, "profile": profile, "tiny": tiny, "seconds": seconds,
            "gpu_model": gpu_model}


def test_every_job_ran_through_sbatch(tiny_slurm_run, capsys):
    log = tiny_slurm_run["log"]
    jobids = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    assert jobids, "no job was submitted to SLURM"
    assert len(set(jobids)) == len(jobids)
    with capsys.disabled():
        print(f"\nSLURM job ids submitted by `snakemake --profile slurm` "
              f"({tiny_slurm_run['seconds']:.0f} s): {' '.join(jobids)}")

    # Each job is known to SLURM, completed, and named by the plugin's run id.
    records = {j: _slurm_record(j) for j in jobids}
    unknown = [j for j, r in records.items() if not r]
    assert not unknown, f"SLURM has no record of jobs {unknown}"
    assert all(r["JobState"] == "COMPLETED" for r in records.values()), records

    # Every rule that Snakemake ran was submitted (as itself or inside a group job): the
    # plugin names the rule or group in the job's comment.
    comments = [r.get("Comment", "") for r in records.values() if "Comment" in r]
    ran = set(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", log))
    assert ran, "Snakemake reported no finished job"
    groups = tiny_slurm_run["profile"].get("groups", {})
    submitted_rules = {m.group(1) for c in comments for m in [re.match(r"rule_(\w+?)(?:_wildcards_.*)?$", c)] if m}
    not_submitted = {r for r in ran if r not in submitted_rules and r not in groups}
    if comments:  # scontrol still holds the jobs (MinJobAge): check every rule by name
        assert not not_submitted, f"rules run outside SLURM: {sorted(not_submitted)}"
    # Runs on the login node would print "Execute N jobs" from the local executor instead.
    assert "localrule" not in log or all(r.endswith("_all") or r == "all" for r in
                                         re.findall(r"localrule (\w+):", log))


def test_subject_jobs_are_bundled(tiny_slurm_run):
    log = tiny_slurm_run["log"]
    group_jobs = re.findall(r"has been submitted with SLURM jobid \d+ \(log: \S*/group_subject\S*", log)
    grouped_rules = [r for r, g in tiny_slurm_run["profile"]["groups"].items() if g == "subject"]
    finished = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", log)
    per_subject_jobs = sum(finished.count(r) for r in grouped_rules)
    if per_subject_jobs == 0:
        pytest.skip("the tiny pipeline has no per-subject rule in the 'subject' group yet")
    n_subjects = len(list((tiny_slurm_run["work"] / "results" / "preprocess").glob("sub-*")))
    assert n_subjects > SUBJECTS_PER_JOB, "the tiny cohort should span several group jobs"
    # one SLURM job per SUBJECTS_PER_JOB subjects, each running all their per-subject jobs
    assert len(group_jobs) == math.ceil(n_subjects / SUBJECTS_PER_JOB), group_jobs
    assert per_subject_jobs >= n_subjects


def test_gpu_request_reaches_slurm(tiny_slurm_run):
    log = tiny_slurm_run["log"]
    gpu_rules = {r for r, res in tiny_slurm_run["profile"]["set-resources"].items() if res.get("gpu")}
    if tiny_slurm_run["gpu_model"]:
        gpu_rules.add("train")
    # the plugin's log path names the rule: logs/slurm/rule_<rule>/<wildcards>/<jobid>.log
    pairs = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", log)
    gpu_jobs = [j for j, rule in pairs if rule in gpu_rules]
    if not gpu_jobs:
        pytest.skip("no GPU-requesting rule ran in the tiny pipeline")
    for jobid in gpu_jobs:
        record = _slurm_record(jobid)
        if "TRES" in record:  # scontrol still holds the job
            assert "gres/gpu=1" in record["TRES"], (jobid, record.get("TRES"))


def test_outputs(tiny_slurm_run):
    work = tiny_slurm_run["work"]
    assert (work / "results" / "cohort" / "participants.tsv").is_file()
    assert list((work / "resources" / "atlases").glob("*_T1w.nii.gz"))
    # the logs of the rules and SLURM's own logs are where the README says
    assert list((work / "logs").glob("*/*.log"))
    assert list((work / "logs" / "slurm").rglob("*.log"))
    # and a second invocation finds nothing to do
    out = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "slurm", "-s", str(REPO / "Snakefile"),
                          "--cores", "2", "-n"],
                         cwd=work, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Nothing to be done" in out.stdout + out.stderr, (out.stdout + out.stderr)[-3000:]
