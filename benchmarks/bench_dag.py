"""DAG scale: `snakemake -n` of the pipeline on 1,618 / 10,000 / 40,000 subjects.

Each size gets a participants manifest of placeholder subjects (``cohort.source: manifest``;
the raw T1w paths are empty files, which a dry-run accepts because it never opens them) and
two dry-runs in this one invocation:

- the pipeline: ``snakemake -s Snakefile -n`` with that manifest;
- the baseline: ``benchmarks/dag_baseline.smk``, a plain design with four per-subject rules
  (input lambdas over a pandas table, an ``expand`` target) on the same manifest.

For each it prints the wall time, the CPU time (user + system) and the peak resident memory
of the Snakemake process (``ru_*`` of that child, from ``os.wait4``) and the number of jobs
(Snakemake's own "Job stats" total), then the ratios and the issue's targets: 40,000 subjects
in <= 60 s and <= 1 GB, 1,618 in <= 5 s. CPU time is printed because the wall time on a
shared machine depends on its load.

Once per invocation it also measures the start-up floor, the dry-run of a one-rule workflow:
Snakemake's imports plus, on a machine where SLURM's client tools are installed, the SLURM
executor plugin's ``scontrol show config`` probe, which runs at every start (when no
controller answers it waits for its 10 s timeout; on a cluster it answers at once). Each size
then also prints the cost per subject above that floor, the part a workflow design controls.

    python benchmarks/bench_dag.py                      # 1618, 10000, 40000
    python benchmarks/bench_dag.py --sizes 1618 --no-baseline
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "benchmarks" / "dag_baseline.smk"
SIZES = (1618, 10_000, 40_000)
#: subjects -> (max seconds, max MB) from the issue; None where no target is set
TARGETS: dict[int, tuple[float | None, float | None]] = {1618: (5.0, None), 40_000: (60.0, 1024.0)}


@dataclass
class DryRun:
    seconds: float
    cpu_seconds: float  # user + system of the snakemake process
    peak_mb: float
    jobs: int | None
    ok: bool
    tail: str  # last lines of Snakemake's output, shown when it failed


def make_manifest(root: Path, n: int, seed: int = 0) -> Path:
    """A valid manifest of ``n`` placeholder subjects (HC 80 %, AD 10 %, PD 10 %) under ``root``.

    Every t1w is an empty file: the dry-run stats it like a real scan and never reads it.
    """
    rng = np.random.default_rng(seed)
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    ids = [f"sub-ph{i:06d}" for i in range(1, n + 1)]
    t1w = [str(raw / f"{pid}_T1w.nii.gz") for pid in ids]
    for path in t1w:
        open(path, "wb").close()
    cohort = rng.choice(["HC", "AD", "PD"], size=n, p=[0.8, 0.1, 0.1])
    frame = pd.DataFrame(
        {
            "participant_id": ids,
            "dataset": "placeholder",
            "cohort": cohort,
            "age": np.round(rng.uniform(20, 90, n), 1),
            "sex": rng.choice(["F", "M"], size=n),
            "t1w": t1w,
            "adas_cog11": np.where(cohort == "AD", np.round(rng.uniform(5, 40, n), 1), np.nan),
            "updrs3": np.where(cohort == "PD", np.round(rng.uniform(5, 60, n), 1), np.nan),
            "hoehn_yahr": np.where(cohort == "PD", rng.integers(1, 4, n).astype(float), np.nan),
            "session": "n/a",
        }
    )
    path = root / "participants.tsv"
    frame.to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path


def dry_run(cmd: list[str], cwd: Path) -> DryRun:
    """Run ``cmd`` (a ``snakemake -n --quiet rules``) and measure that one child process."""
    out_path = cwd / f"dryrun-{time.monotonic_ns()}.out"
    with open(out_path, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        # wait4 gives the rusage of this child alone (RUSAGE_CHILDREN would be the max so far)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = out_path.read_text()
    match = re.search(r"^total\s+(\d+)\s*$", text, flags=re.M)
    return DryRun(
        seconds=seconds,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_mb=usage.ru_maxrss / 1024,  # Linux reports KiB
        jobs=int(match.group(1)) if match else (0 if "Nothing to be done" in text else None),
        ok=proc.returncode == 0,
        tail="\n".join(text.strip().splitlines()[-15:]),
    )


def pipeline_workdir(root: Path, manifest: Path) -> tuple[Path, Path]:
    """A working directory as a user has it: config/config.yaml, plus the manifest config."""
    work = root / "pipeline"
    (work / "config").mkdir(parents=True)
    shutil.copy(REPO / "config" / "config.yaml", work / "config" / "config.yaml")
    bench_config = work / "bench.yaml"
    bench_config.write_text(yaml.safe_dump({"cohort": {"source": "manifest", "manifest": str(manifest)}}))
    return work, bench_config


def fmt(run: DryRun) -> str:
    jobs = "?" if run.jobs is None else f"{run.jobs:,}"
    return f"{run.seconds:6.1f} s (cpu {run.cpu_seconds:5.1f} s) {run.peak_mb:7.0f} MB {jobs:>8} jobs"


def startup_floor(snakemake: list[str]) -> DryRun:
    """The dry-run of a one-rule workflow: what every ``snakemake -n`` costs before any DAG."""
    root = Path(tempfile.mkdtemp(prefix="bench_dag_floor_"))
    try:
        (root / "Snakefile").write_text('rule a:\n    output:\n        "a.txt",\n    shell:\n        "touch {output}"\n')
        return dry_run(snakemake + ["-n", "--quiet", "rules", "--cores", "1"], root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def scontrol_probe_seconds() -> float | None:
    """Wall time of the SLURM plugin's start-up probe (``scontrol show config``, 10 s timeout)."""
    if shutil.which("scontrol") is None:
        return None
    start = time.perf_counter()
    try:
        subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        pass
    return time.perf_counter() - start


def per_subject(run: DryRun, floor: DryRun, n: int) -> str:
    """Milliseconds per subject above the start-up floor (wall, cpu)."""
    return (f"{1000 * (run.seconds - floor.seconds) / n:.2f} ms"
            f" (cpu {1000 * (run.cpu_seconds - floor.cpu_seconds) / n:.2f} ms)")


def minus_floor(run: DryRun, floor: DryRun) -> DryRun:
    """``run`` without the start-up floor's time (memory is not additive, kept as measured)."""
    return DryRun(run.seconds - floor.seconds, run.cpu_seconds - floor.cpu_seconds,
                  run.peak_mb, run.jobs, run.ok, run.tail)


def verdict(n: int, run: DryRun) -> str:
    if not run.ok:
        return "dry-run FAILED (see below)"
    max_s, max_mb = TARGETS.get(n, (None, None))
    parts = []
    if max_s is not None:
        parts.append(f"time <= {max_s:g} s {'met' if run.seconds <= max_s else f'MISSED by {run.seconds - max_s:.1f} s'}")
    if max_mb is not None:
        parts.append(f"memory <= {max_mb:g} MB {'met' if run.peak_mb <= max_mb else f'MISSED by {run.peak_mb - max_mb:.0f} MB'}")
    return "; ".join(parts) if parts else "no target"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=list(SIZES),
                        help="comma-separated subject counts (default: 1618,10000,40000)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline dry-runs")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = parser.parse_args(argv)

    snakemake = [sys.executable, "-m", "snakemake"]
    failed = False
    print(f"bench_dag: snakemake -n on placeholder manifests; baseline = {BASELINE.relative_to(REPO)} "
          "(4 per-subject rules); peak memory = ru_maxrss of the snakemake process")
    floor = startup_floor(snakemake)
    probe = scontrol_probe_seconds()
    print(f"bench_dag: start-up floor (1-rule workflow) {fmt(floor)}; SLURM plugin probe "
          + ("not run (no scontrol on PATH)" if probe is None else f"`scontrol show config` {probe:.1f} s of it"),
          flush=True)
    for n in args.sizes:
        root = Path(tempfile.mkdtemp(prefix=f"bench_dag_{n}_"))
        try:
            manifest = make_manifest(root, n)
            work, bench_config = pipeline_workdir(root, manifest)
            pipe = dry_run(snakemake + ["-s", str(REPO / "Snakefile"), "--configfile",
                                        str(work / "config" / "config.yaml"), str(bench_config),
                                        "-n", "--quiet", "rules", "--cores", "1"], work)
            line = f"bench_dag: {n:>6,} subjects  pipeline {fmt(pipe)} = floor + {per_subject(pipe, floor, n)}/subject"
            if not args.no_baseline:
                base_dir = root / "baseline"
                base_dir.mkdir()
                base = dry_run(snakemake + ["-s", str(BASELINE), "--config", f"manifest={manifest}",
                                            "-n", "--quiet", "rules", "--cores", "1"], base_dir)
                line += (f" | baseline {fmt(base)} = floor + {per_subject(base, floor, n)}/subject"
                         f" | pipeline/baseline time {pipe.seconds / base.seconds:.2f}x"
                         f" cpu {pipe.cpu_seconds / base.cpu_seconds:.2f}x memory {pipe.peak_mb / base.peak_mb:.2f}x")
                if not base.ok:
                    print(f"bench_dag: baseline dry-run failed:\n{base.tail}", file=sys.stderr)
            print(f"{line} | {verdict(n, pipe)}; above the floor: {verdict(n, minus_floor(pipe, floor))}", flush=True)
            if not pipe.ok:
                failed = True
                print(f"bench_dag: pipeline dry-run failed:\n{pipe.tail}", file=sys.stderr)
        finally:
            if args.keep:
                print(f"bench_dag: kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
