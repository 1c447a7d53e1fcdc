"""Parse-time cost of the participants manifest: read_manifest vs a bare pandas read.

The Snakefile reads (and validates, without opening files) the manifest at every start, so
a 40,000-row manifest must cost a fraction of a second. Baseline, measured in the same run:
``pandas.read_csv(..., dtype=str)`` of the same file, which validates nothing. Also printed:
the per-scan cost of the file check (NIfTI header read) that the ``participants`` rule does once.

    python benchmarks/bench_manifest.py [n_rows]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainage.data.manifest import COHORTS, SEXES, read_manifest, validate


def best_of(repeats: int, func) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def main(n: int = 40_000) -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scan = tmp / "t1.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((96, 114, 96), np.int16), np.eye(4)), str(scan))
        frame = pd.DataFrame({
            "participant_id": [f"sub-{i:06d}" for i in range(n)],
            "dataset": "bench",
            "cohort": rng.choice(list(COHORTS), n),
            "age": rng.uniform(18, 95, n).round(2),
            "sex": rng.choice(list(SEXES), n),
            "t1w": str(scan),
            "adas_cog11": np.nan, "updrs3": np.nan, "hoehn_yahr": np.nan, "session": np.nan,
        })
        path = tmp / "participants.tsv"
        frame.to_csv(path, sep="\t", index=False, na_rep="n/a")

        baseline = best_of(5, lambda: pd.read_csv(path, sep="\t", dtype=str))
        ours = best_of(5, lambda: read_manifest(path))
        few = frame.head(500)
        files = best_of(3, lambda: validate(few, check_files=True)) / len(few)
    print(f"read_manifest, {n} rows, no file checks: {ours * 1e3:.0f} ms "
          f"(baseline pandas.read_csv {baseline * 1e3:.0f} ms; ratio {ours / baseline:.1f}x)")
    print(f"file check (exists + NIfTI header, 3D): {files * 1e3:.2f} ms per scan "
          f"-> {files * n:.1f} s for {n} scans, once, in the participants rule")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40_000)
