"""What thread-independent preprocessing costs: seconds per scan of the native chain with ITK
(N4, registration, resampling) on one thread, as the pipeline runs it, against ITK on the job's
threads (the earlier behaviour, whose affine changed with the thread count), at each
``--threads``; and whether the outputs at every thread count equal those at one thread.

    python benchmarks/bench_preprocess_threads.py --t1w tests/data/ixi/IXI012-HH-1211-T1_ds.nii.gz \\
        [--threads 1 2 4] [--repeats 2] [--grids 2]

Each run is a fresh process (ITK reads its thread count once per process); the two modes
alternate run by run, so a busy machine slows both alike. Compare the ratio, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_preprocess_batch import _same_outputs  # the outputs compared but for their timings

CODE = """
import sys
from brainage.preprocess import settings
from brainage.preprocess.cli import main
settings.ITK_THREADS = None if sys.argv[1] == "job" else 1
sys.exit(main(sys.argv[2:]))
"""
MODES = {"itk 1 thread (pipeline)": "one", "itk on job's threads": "job"}


def run(mode: str, t1w: str, out: Path, threads: int, grids: str) -> float:
    cmd = [sys.executable, "-c", CODE, mode, "--t1w", t1w, "--out-dir", str(out), "--grids", grids,
           "--participant-id", "sub-bench", "--threads", str(threads)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return float(json.loads((out / "sub-bench_desc-qc.json").read_text())["runtime_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--t1w", required=True)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--grids", default="2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pp-threads-") as tmp:
        tmp = Path(tmp)
        seconds = {(m, t): [] for m in MODES.values() for t in args.threads}
        for t in args.threads:
            for r in range(args.repeats):
                for mode in MODES.values():
                    seconds[mode, t].append(run(mode, args.t1w, tmp / f"{mode}-{t}-{r}", t, args.grids))
        print(f"native preprocessing of {Path(args.t1w).name}, median of {args.repeats} run(s) per cell:")
        for t in args.threads:
            base = statistics.median(seconds["job", t])
            for label, mode in MODES.items():
                s = statistics.median(seconds[mode, t])
                identical = not _same_outputs(tmp / f"{mode}-{t}-0", tmp / f"{mode}-{args.threads[0]}-0")
                print(f"  --threads {t}  {label:<24} {s:6.1f} s per scan   ratio to ITK on job's threads "
                      f"{s / base:4.2f}   outputs equal to --threads {args.threads[0]}'s: {identical}")


if __name__ == "__main__":
    main()
