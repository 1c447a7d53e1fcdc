"""Seconds per subject of a preprocessing batch (config preprocess.subjects_per_job): the
template-side work made once per process vs once per subject.

    nice python benchmarks/bench_preprocess_batch.py [--subjects 6] [--voxel 2] [--threads 1]

What every subject of a batch shares: the 1 mm template and its coarser copies
(brainage.preprocess.finish.load_template), the registration's fixed side -- template and
mask as ANTs images, smoothed and resampled to the pyramid's finest level
(brainage.preprocess.native.registration_target) -- and deepbet's two networks. The baseline
is the same code with those caches emptied before every subject, which is the work each
subject did before they were shared; the two alternate subject by subject in one process, so
both see the same machine load. Subjects: simulated raw scans (brainage.data.simulate, the demo's
2 mm voxels by default), written to a temporary folder. Every output of the two runs must be
the same (volumes, masks, affines, QC json but its timings, QC figure bytes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _caches():
    from brainage.preprocess import finish, native

    return (finish._load_template, native.registration_target, native._deepbet)


def _same_outputs(a: Path, b: Path) -> list[str]:
    import nibabel as nib

    differing = []
    for f in sorted(p for p in a.rglob("*") if p.is_file()):
        g = b / f.relative_to(a)
        if f.suffix == ".json":
            x, y = (json.loads(p.read_text()) for p in (f, g))
            for d in (x, y):
                d.pop("runtime_s", None), d.pop("timings_s", None)
            same = x == y
        elif f.name.endswith(".nii.gz"):
            x, y = nib.load(f), nib.load(g)
            same = np.array_equal(x.dataobj, y.dataobj) and np.array_equal(x.affine, y.affine)
        else:
            same = f.read_bytes() == g.read_bytes()
        if not same:
            differing.append(str(f.relative_to(a)))
    return differing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--voxel", type=float, default=2.0, help="raw voxel size (mm) of the simulated scans")
    parser.add_argument("--threads", type=int, default=1, help="the demo's preprocessing jobs run on 1")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    from brainage.config import resolved_config
    from brainage.core.paths import simulated_subject_files
    from brainage.preprocess import preprocess_or_exclude
    from brainage.data.simulate import cached_anatomy, plan_cohort
    from brainage.data.simulate.cohort import write_subject
    from brainage.data.simulate.model import SimulationModel

    config = resolved_config()  # the demo: config/config.yaml over config/defaults.yaml
    pp = config["preprocess"]  # the engine reads its `native` and `qc` keys (settings_from_config)

    with tempfile.TemporaryDirectory(prefix="bench-pp-batch-") as tmp:
        tmp = Path(tmp)
        frame = plan_cohort(args.subjects + 1, 0, 0, args.voxel, args.seed, bids_root=tmp / "bids")
        anatomy, model = cached_anatomy(args.voxel), SimulationModel.from_params()
        scans = []
        for row in frame.to_dict("records"):
            files = simulated_subject_files(tmp / "bids", tmp / "truth", row["participant_id"])
            write_subject(row, anatomy, args.seed, model, files)
            scans.append((row["participant_id"], files["t1w"]))

        def run(mode: str, subject: str, t1w: Path) -> float:
            if mode == "baseline (per subject)":
                for cache in _caches():
                    cache.cache_clear()
            start = time.perf_counter()
            preprocess_or_exclude(t1w, tmp / mode.split()[0] / subject, subject, pp["grids"], engine="native",
                                  settings=pp, threads=args.threads)
            return time.perf_counter() - start

        modes = ["baseline (per subject)", "shared (per batch)"]
        run(modes[1], *scans[0])  # warm-up: imports, first loads (every batch pays them once)
        times: dict[str, list[float]] = {m: [] for m in modes}
        for k, (subject, t1w) in enumerate(scans[1:]):
            for mode in modes if k % 2 == 0 else modes[::-1]:
                times[mode].append(run(mode, subject, t1w))
        differing = _same_outputs(tmp / "baseline", tmp / "shared")

    base = statistics.median(times[modes[0]])
    print(f"native preprocessing of simulated {args.voxel:g} mm scans, {args.threads} thread(s), "
          f"median of {args.subjects} subjects:")
    for mode in modes:
        median = statistics.median(times[mode])
        print(f"  {mode:<24} {median:6.2f} s per subject   ratio to baseline {median / base:5.2f}")
    print(f"  outputs differing between the two: {len(differing)}" + (f" {differing}" if differing else ""))


if __name__ == "__main__":
    main()
