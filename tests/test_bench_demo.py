"""benchmarks/bench_demo.py: stage wall times from a Snakemake log, rules mapped to stages by
their rules file, and the heavy rules writing benchmark files."""

from __future__ import annotations

import importlib.util
import re

from conftest import REPO

LOG = """Building DAG of jobs...
[Tue Dec  1 03:49:02 2026]
localrule simulate_subject:
    output: results/cohort/bids/sub-hc0001/anat/sub-hc0001_T1w.nii.gz
    jobid: 4
    wildcards: subject=sub-hc0001

[Tue Dec  1 03:49:03 2026]
rule preprocess:
    input: results/cohort/bids/sub-hc0002/anat/sub-hc0002_T1w.nii.gz
    log: logs/preprocess/sub-hc0002.log
    jobid: 7
    reason: Missing output files
    threads: 1
[Tue Dec  1 03:49:12 2026]
Finished jobid: 4 (Rule: simulate_subject)
1 of 3 steps (33%) done
[Tue Dec  1 03:49:20 2026]
localrule preprocess:
    jobid: 8
[Tue Dec  1 03:49:33 2026]
Finished jobid: 7 (Rule: preprocess)
[Tue Dec  1 03:50:03 2026]
Finished jobid: 8 (Rule: preprocess)
"""


def _bench_demo():
    spec = importlib.util.spec_from_file_location("bench_demo", REPO / "benchmarks" / "bench_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_job_intervals_and_stage_walls(tmp_path):
    bench = _bench_demo()
    log = tmp_path / "run.snakemake.log"
    log.write_text(LOG)
    jobs = bench.job_intervals(log)
    assert [(rule, end - start) for rule, start, end in jobs] == [
        ("simulate_subject", 10.0), ("preprocess", 30.0), ("preprocess", 43.0)]
    # the two preprocessing jobs overlap from 03:49:20 to 03:49:33: the stage ran 03:49:03-03:50:03
    assert bench.union_seconds([(s, e) for r, s, e in jobs if r == "preprocess"]) == 60.0
    assert bench.union_seconds([(0, 1), (2, 3), (2.5, 4)]) == 3.0


def test_rules_map_to_their_stage():
    stages = _bench_demo().rule_stages(REPO)
    assert stages["simulate_subject"] == "simulate" and stages["preprocess"] == "preprocess"
    assert stages["train"] == stages["cache"] == "train" and stages["saliency"] == "infer/saliency"
    assert stages["table2"] == stages["fig5_gradram_rnc"] == "stats/report"


def test_heavy_rules_write_benchmark_files():
    """Per-job seconds of every rule that runs per subject or per model (bench_demo reads them)."""
    text = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    for rule in ("simulate_subject", "preprocess", "cache", "train", "predict_cohort", "saliency"):
        block = re.search(rf"^\s*rule {rule}:\n(.*?)(?=^\s*(?:rule \w+:|use rule|def )|\Z)", text, re.S | re.M)
        assert block and f'"logs/{rule}/' in block.group(1) and ".benchmark.tsv" in block.group(1), rule
