"""Seconds per simulated subject at 2 mm and 1 mm, and the projected demo-cohort time on 2 cores.

Times are CPU seconds of this process (the simulator is single-threaded, so they equal wall
seconds on an idle core; on a shared machine wall time would measure the neighbours).

Baseline, measured in the same run: one plain affine resampling of the template-space head
onto the same raw grid (``scipy.ndimage.affine_transform``, linear), the floor of any
simulator that resamples the template once. The simulator composes pose, individual warp and
ageing/disease fields into one such resampling, plus labels, contrast, bias and noise.

    python benchmarks/bench_simulate.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from brainage.data.simulate import SITES, SimulationModel, build_anatomy, plan_subject
from brainage.data.simulate.anatomy import HEAD_AFFINE, Anatomy
from brainage.core.paths import simulated_subject_files
from brainage.data.simulate.cohort import write_subject
from brainage.data.simulate.scan import native_to_mni, raw_grid

DEMO = {"n_subjects": 120, "cores": 2}


def _best(fn, repeats: int) -> float:
    """Least CPU seconds of ``repeats`` calls: on a shared machine wall time measures the neighbours."""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = SimulationModel()
    tmp = Path(tempfile.mkdtemp(prefix="bench_simulate_"))
    results = {}
    for voxel_mm in (2.0, 1.0):
        t0 = time.process_time()
        anatomy = build_anatomy(voxel_mm)
        build_s = time.process_time() - t0
        anatomy.save(tmp / f"anatomy_{voxel_mm:g}.npz")
        t0 = time.process_time()
        anatomy = Anatomy.load(tmp / f"anatomy_{voxel_mm:g}.npz")
        load_s = time.process_time() - t0
        row = plan_subject("sub-hc0001", "HC", SITES["IXI-like"], 42, model, age=70.0)
        row["voxel_mm"] = voxel_mm
        paths = simulated_subject_files(tmp / "bids", tmp / "truth", "sub-hc0001")
        sim_s = _best(lambda: write_subject(row, anatomy, 42, model, paths), args.repeats)
        shape, affine = raw_grid(row["dataset"], voxel_mm)
        vox2head = np.linalg.inv(HEAD_AFFINE) @ native_to_mni(row) @ affine
        base_s = _best(lambda: ndimage.affine_transform(anatomy.head, vox2head[:3, :3], offset=vox2head[:3, 3],
                                                        output_shape=shape, order=1), args.repeats)
        results[voxel_mm] = (build_s, load_s, sim_s, base_s, int(np.prod(shape)))
        print(f"voxel {voxel_mm:g} mm: raw grid {shape} ({np.prod(shape) / 1e6:.1f} M voxels); "
              f"simulate+write {sim_s:.2f} s/subject; baseline one affine resampling {base_s:.2f} s "
              f"(ratio {sim_s / base_s:.1f}x); anatomy build {build_s:.1f} s, load {load_s:.2f} s")
    # a Snakemake job is a fresh Python process: start-up and imports count per subject
    code = "import time; t = time.process_time(); import brainage.data.simulate.cohort, brainage.core.logs; print(time.process_time() - t)"
    imports_s = float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    startup_s = imports_s + 0.05  # interpreter start-up
    build_s, load_s, sim_s, _, _ = results[2.0]
    per_job = startup_s + load_s + sim_s
    demo_s = build_s + DEMO["n_subjects"] * per_job / DEMO["cores"] + 10.0  # + the cohort step
    print(f"per-subject job at 2 mm: {per_job:.2f} s (python start-up + imports {startup_s:.2f} s, "
          f"anatomy load {load_s:.2f} s, simulate+write {sim_s:.2f} s)")
    print(f"projected demo cohort ({DEMO['n_subjects']} subjects, 2 mm, {DEMO['cores']} cores): "
          f"{demo_s:.0f} s = {demo_s / 60:.1f} min (target < 3 min; ratio {demo_s / 180:.2f} of target)")


if __name__ == "__main__":
    main()
