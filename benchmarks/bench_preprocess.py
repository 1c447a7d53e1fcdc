"""Preprocessing speed and accuracy: the native chain vs an ANTsPy-defaults baseline, one run.

Baseline (issue 4): the same deepbet mask, then ANTsPy ``n4_bias_field_correction`` with its
defaults (shrink factor 4, 4 x 50 iterations, inside the mask) and ``ants.registration(
type_of_transform="Affine")`` with its defaults (Mattes MI, 6x4x2x1 pyramid at 1 mm), then
B-spline resampling to 1 mm and the 2 mm copy. Ours: :func:`brainage.preprocess.preprocess_t1w`
(mask + N4 + affine + grids, files and QC included). Subjects: simulated scans with known
native-to-MNI affine, at 1 mm and at 2 mm raw voxels. Error: mean displacement over the
template brain between the estimated template-to-native affine and the best affine fit of the
simulator's full true map (pose + individual warp + ageing/disease fields; see
benchmarks/accuracy_preprocess.py); the error against the pose alone in brackets.

    nice python benchmarks/bench_preprocess.py [--subjects 1] [--voxels 1,2] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def _error_mm(estimate: np.ndarray, truth: np.ndarray, points: np.ndarray) -> float:
    return float(np.linalg.norm((estimate @ points - truth @ points)[:3], axis=0).mean())


def _errors(estimate: np.ndarray, best: np.ndarray, pose: np.ndarray, points: np.ndarray) -> str:
    """``best (pose)``: error (mm) against the best affine fit, and against the pose alone."""
    return f"{_error_mm(estimate, best, points):.2f} ({_error_mm(estimate, pose, points):.2f})"


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def baseline(t1w: Path, tpl_img, grids=(1.0, 2.0)) -> np.ndarray:
    """The ANTsPy-defaults chain; returns the template-to-native RAS affine."""
    import ants

    from brainage.core.grids import downsample_from_1mm
    from brainage.preprocess import load_t1w, native, transforms

    img = load_t1w(t1w, "bench")
    mask = native.brain_mask_deepbet(img)
    image = native.ants_image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    mask_img = native.ants_image(mask.astype(np.float32), img.affine)
    corrected = ants.n4_bias_field_correction(image, mask=mask_img, shrink_factor=4)
    reg = ants.registration(tpl_img, corrected * mask_img, type_of_transform="Affine")
    warped = ants.apply_transforms(tpl_img, corrected * mask_img, reg["fwdtransforms"], interpolator="bSpline")
    for r in grids:
        downsample_from_1mm(warped.numpy(), r)
    return transforms.read_ants_affine(reg["fwdtransforms"][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1)
    parser.add_argument("--voxels", default="1,2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    import json

    from brainage.data.atlases import load_template_1mm
    from brainage.core.grids import TEMPLATE_AFFINE_1MM
    from brainage.preprocess import native, preprocess_t1w
    from brainage.data.simulate.anatomy import build_anatomy
    from brainage.data.simulate.model import plan_cohort
    from brainage.data.simulate.scan import best_affine_template_to_native, simulate_scan

    native.set_threads(args.threads)
    tpl, tpl_mask = load_template_1mm()
    tpl_img = native.ants_image(tpl, TEMPLATE_AFFINE_1MM)
    ijk = np.argwhere(tpl_mask[::2, ::2, ::2]) * 2
    points = TEMPLATE_AFFINE_1MM @ np.c_[ijk, np.ones(len(ijk))].T

    print(f"{'raw':>5} {'subject':<11} {'baseline s (cpu)':>17} {'ours s (cpu)':>14} {'speed-up':>9} "
          f"{'base err mm (pose)':>18} {'our err mm (pose)':>17}")
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for voxel in [float(v) for v in args.voxels.split(",")]:
            anatomy = build_anatomy(voxel)
            plan = plan_cohort(args.subjects, 0, 0, voxel, args.seed, work / "bids")
            speedups = []
            for _, row in plan.iterrows():
                sid = row["participant_id"]
                scan = simulate_scan(row, anatomy, args.seed)
                t1w = work / f"{sid}_{voxel:g}mm_T1w.nii.gz"
                nib.save(scan.image, t1w)
                pose = np.linalg.inv(scan.native_to_mni)
                best, _ = best_affine_template_to_native(row, anatomy, args.seed, points[:3])
                base_affine, base_wall, base_cpu = _timed(lambda: baseline(t1w, tpl_img))
                out = work / f"out_{sid}_{voxel:g}"
                _, our_wall, our_cpu = _timed(lambda: preprocess_t1w(t1w, out, sid, [1, 2], threads=args.threads))
                xfm = json.loads(next(out.glob("*_xfm.json")).read_text())
                ours = np.array(xfm["template_to_native_ras"])
                speedups.append(base_wall / our_wall)
                print(f"{voxel:>4g}mm {sid:<11} {base_wall:>8.1f} ({base_cpu:5.1f}) {our_wall:>6.1f} ({our_cpu:5.1f}) "
                      f"{base_wall / our_wall:>8.2f}x {_errors(base_affine, best, pose, points):>18} "
                      f"{_errors(ours, best, pose, points):>17}", flush=True)
            print(f"{voxel:>4g}mm mean speed-up (wall) {np.mean(speedups):.2f}x over {len(speedups)} subject(s)")


if __name__ == "__main__":
    main()
