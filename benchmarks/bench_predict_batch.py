"""Seconds per scan of ``brainage predict``: one batch process for every scan vs one process per scan.

    nice python benchmarks/bench_predict_batch.py --model results/models/<name>/model.pt --t1w DIR_OR_FILES [--t1w ...]

Both sides are the real command line in a child process (``python -m brainage.cli predict``), run
in the same invocation, one after the other, so both see the same machine: the baseline runs
today's single form once per scan (start-up, model loading and preprocessing's caches paid per
scan), the batch one process with every scan and ``--out`` (brainage.apply.batch). The ages must
agree: the single form prints them to 0.1 y, and the batch's full-precision age, printed the same
way, must give the same text for every scan. Exit status 1 when they do not, or when a scan fails.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRINTED_AGE = re.compile(r"predicted brain age: ([-\d.]+) years")


def _predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "brainage.cli", "predict", *args], capture_output=True, text=True,
                          timeout=3600)


def one_process_per_scan(model: str, scans: list[Path], threads: int) -> tuple[float, dict[str, str]]:
    """(seconds, {scan: printed age}) of the single form run once per scan."""
    ages = {}
    started = time.perf_counter()
    for scan in scans:
        proc = _predict("--model", model, "--t1w", str(scan), "--threads", str(threads))
        found = PRINTED_AGE.search(proc.stdout)
        if proc.returncode != 0 or not found:
            sys.exit(f"{scan}: the single form failed: {proc.stderr.strip()[-500:]}")
        ages[str(scan)] = found.group(1)
    return time.perf_counter() - started, ages


def one_batch(model: str, scans: list[Path], threads: int) -> tuple[float, dict[str, float]]:
    """(seconds, {scan: predicted age}) of one batch process over every scan."""
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="bench-predict-batch-") as tmp:
        out = Path(tmp) / "preds.tsv"
        args = ["--model", model, "--out", str(out), "--threads", str(threads)]
        for scan in scans:
            args += ["--t1w", str(scan)]
        started = time.perf_counter()
        proc = _predict(*args)
        seconds = time.perf_counter() - started
        if proc.returncode != 0 or not out.exists():
            sys.exit(f"the batch failed: {proc.stderr.strip()[-500:]}")
        table = pd.read_csv(out, sep="\t", na_values=["n/a"], keep_default_na=False)
    failed = table[table["predicted_age"].isna()]
    if len(failed):
        sys.exit(f"the batch could not predict {len(failed)} scan(s): {failed['error'].tolist()}")
    return seconds, dict(zip(table["file"], table["predicted_age"]))


def _stem(path: str) -> str:
    return Path(path).name.removesuffix(".gz").removesuffix(".nii")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model.pt")
    parser.add_argument("--t1w", required=True, action="append", help="scans, or folders of scans (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="--threads of both sides (default 1)")
    args = parser.parse_args()
    from brainage.apply.predict import scan_files

    scans = scan_files(args.t1w)
    n = len(scans)
    single_s, printed = one_process_per_scan(args.model, scans, args.threads)
    batch_s, batch = one_batch(args.model, scans, args.threads)
    same = [s for s in printed if f"{batch[s]:.1f}" == printed[s]]
    print(f"one process per scan: {n} scans in {single_s:.1f} s, {single_s / n:.2f} s per scan")
    print(f"one batch process:    {n} scans in {batch_s:.1f} s, {batch_s / n:.2f} s per scan")
    print(f"ratio (per scan / batch): {single_s / batch_s:.2f}x")
    print(f"predictions equal: {len(same)} of {n} scans "
          f"({', '.join(f'{_stem(s)} {batch[s]:.3f}' for s in printed)})")
    return 0 if len(same) == n else 1


if __name__ == "__main__":
    sys.exit(main())
