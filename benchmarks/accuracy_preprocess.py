"""Accuracy of a finished preprocessing run against the simulated cohort's ground truth.

    python benchmarks/accuracy_preprocess.py [--results results]

For every simulated subject already preprocessed: the mean displacement error (mm) over the
template brain between the estimated and the true native-to-MNI affine, the Dice of the
brain mask against the true native mask, and QC pass/fail. Targets (the preprocessing
issue): mean error <= 2.0 mm for 2 mm raw scans (<= 1.0 mm for 1 mm), Dice >= 0.95, all pass.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from brainage import TEMPLATE_SPACE
from brainage.atlases import load_template_1mm
from brainage.grids import TEMPLATE_AFFINE_1MM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results")
    args = parser.parse_args()
    results = Path(args.results)
    _, mask = load_template_1mm()
    ijk = np.argwhere(mask[::2, ::2, ::2]) * 2
    points = TEMPLATE_AFFINE_1MM @ np.c_[ijk, np.ones(len(ijk))].T
    rows = []
    for qc_path in sorted(results.glob("preprocess/sub-*/anat/sub-*_desc-qc.json")):
        sub = qc_path.name.split("_")[0]
        truth_dir = results / "cohort" / "truth" / sub
        xfm_name = f"{sub}_from-T1w_to-{TEMPLATE_SPACE}_mode-image_xfm.json"
        if not (truth_dir / xfm_name).exists():
            continue
        true = np.linalg.inv(np.array(json.loads((truth_dir / xfm_name).read_text())["native_to_mni"]))
        found = np.array(json.loads((qc_path.parent / xfm_name).read_text())["template_to_native_ras"])
        error = np.linalg.norm((found @ points - true @ points)[:3], axis=0).mean()
        est = np.asarray(nib.load(qc_path.parent / f"{sub}_desc-brain_mask.nii.gz").dataobj) > 0
        ref = np.asarray(nib.load(truth_dir / f"{sub}_desc-brain_mask.nii.gz").dataobj) > 0
        dice = 2 * (est & ref).sum() / (est.sum() + ref.sum())
        passed = bool(json.loads(qc_path.read_text())["passed"])
        rows.append((sub, error, dice, passed))
    if not rows:
        raise SystemExit(f"no preprocessed simulated subjects under {results}")
    errors = np.array([r[1] for r in rows])
    dices = np.array([r[2] for r in rows])
    worst = sorted(rows, key=lambda r: -r[1])[:3]
    print(f"subjects {len(rows)}  QC passed {sum(r[3] for r in rows)}/{len(rows)}")
    print(f"displacement error mm: mean {errors.mean():.2f}  median {np.median(errors):.2f}  "
          f"max {errors.max():.2f}  subjects <= 2.0 mm: {(errors <= 2.0).sum()}/{len(rows)}")
    print(f"brain-mask Dice: mean {dices.mean():.3f}  min {dices.min():.3f}  subjects >= 0.95: {(dices >= 0.95).sum()}/{len(rows)}")
    print("worst registrations: " + ", ".join(f"{s} {e:.2f} mm (Dice {d:.3f})" for s, e, d, _ in worst))


if __name__ == "__main__":
    main()
