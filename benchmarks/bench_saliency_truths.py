"""Grad-RAM truth checks of a finished demo run against two definitions of the simulator's truth
(simulated cohort only):

    python benchmarks/bench_saliency_truths.py RUN_DIR

``volume``: the pipeline's, the 10 AAL116 regions of largest |volume change| (Jacobian of the
effect's deformation, results/cohort/truth/effects_aal116.tsv). ``signal``: what a scanner
sees change: the simulator's mean subject (no pose, warp, bias or noise; the first site's
contrast) rendered on the 1 mm template grid at biological age 20 and 80 (ageing) and, for AD
and PD, at the cohort's mean severity against a healthy 20-year-old (their disease effect, as
effects_aal116.tsv defines it); the truth is the mean |signal change| (relative to WM = 1) per
AAL116 region. Every group map of every model (results/saliency/<model>/aal116.tsv) is scored
by brainage.explain.truth_checks against both; prints, per truth and cohort, the precision@10
range over groups and models and the smallest Holm p. If the Grad-RAM maps miss both, the
limit is the maps, not the truth's definition.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def signal_truth(run: Path) -> pd.DataFrame:
    """index, name, effect, volume_change_pct (here: mean |signal change| per region, the column
    truth_checks ranks by)."""
    from brainage.atlases import aal_labels, load_aal_1mm
    from brainage.grids import TEMPLATE_AFFINE_1MM, TEMPLATE_SHAPE_1MM, resample_labels, template_grid
    from brainage.simulate.anatomy import FIELD_AFFINE, HEAD_AFFINE, Anatomy
    from brainage.simulate.model import SITES, model_from_config
    from brainage.simulate.scan import effect_fields, effect_weights, intensity_knots

    config = yaml.safe_load((run / "config" / "config.yaml").read_text())
    model = model_from_config(config["cohort"]["simulate"])
    anatomy = Anatomy.load(run / "results" / "cohort" / "truth" / "anatomy.npz")
    subjects = pd.read_csv(run / "results" / "cohort" / "truth" / "subjects.tsv", sep="\t")
    idx = np.indices(TEMPLATE_SHAPE_1MM, dtype=np.float32).reshape(3, -1)
    mni = TEMPLATE_AFFINE_1MM[:3, :3].astype(np.float32) @ idx + TEMPLATE_AFFINE_1MM[:3, 3:4].astype(np.float32)
    to_field, to_head = np.linalg.inv(FIELD_AFFINE), np.linalg.inv(HEAD_AFFINE)
    field_idx = (to_field[:3, :3] @ mni + to_field[:3, 3:4]).astype(np.float32)
    site = next(iter(SITES))

    def render(age: float, cohort: str = "HC", severity: float = 0.0) -> np.ndarray:
        row = {"biological_age": age, "severity": severity, "cohort": cohort, "ventricle_offset": 0.0, "dataset": site}
        field = effect_fields(anatomy, effect_weights(row, model))
        z = mni + np.stack([ndimage.map_coordinates(field[d], field_idx, order=1) for d in range(3)])
        units = ndimage.map_coordinates(anatomy.head, (to_head[:3, :3] @ z + to_head[:3, 3:4]).astype(np.float32), order=1)
        return np.interp(units, *intensity_knots(row, anatomy, model))

    aal, affine = load_aal_1mm()
    labels = resample_labels(aal, affine, template_grid(1.0)).reshape(-1).astype(np.int64)
    names = aal_labels()
    young = render(20.0)
    changed = {"ageing": render(80.0)}
    for cohort in ("AD", "PD"):
        severity = subjects.loc[subjects["cohort"] == cohort, "severity"].mean()
        changed[cohort] = render(20.0, cohort, float(severity) if np.isfinite(severity) else 0.5)
    rows = []
    counts = np.bincount(labels, minlength=256)
    for effect, image in changed.items():
        sums = np.bincount(labels, weights=np.abs(image - young), minlength=256)
        for index, name in zip(names["index"], names["name"]):
            rows.append({"index": index, "name": name, "effect": effect, "volume_change_pct": sums[index] / max(counts[index], 1)})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    from brainage.explain import read_effects, truth_checks

    truths = {"volume": read_effects(args.run / "results" / "cohort" / "truth" / "effects_aal116.tsv"),
              "signal": signal_truth(args.run)}
    for effect in ("ageing", "AD"):
        top = truths["signal"][truths["signal"]["effect"] == effect].nlargest(10, "volume_change_pct")["name"]
        print(f"signal truth, {effect} top 10: {', '.join(top)}")
    summary = defaultdict(list)
    for table in sorted((args.run / "results" / "saliency").glob("*/aal116.tsv")):
        aal = pd.read_csv(table, sep="\t")
        for truth, effects in truths.items():
            checks = truth_checks(aal, effects, 10, 10000, 0).dropna(subset=["precision"])
            for _, c in checks.iterrows():
                summary[(truth, c["effect"])].append((c["precision"], c["p_holm"], f"{table.parent.name}:{c['group']}"))
    print(f"\n{'truth':<8} {'effect':<7} {'precision@10':>13} {'min p Holm':>11}  best group")
    for (truth, effect), rows in sorted(summary.items()):
        best = min(rows, key=lambda r: r[1])
        print(f"{truth:<8} {effect:<7} {min(r[0] for r in rows):>6.1f}-{max(r[0] for r in rows):<6.1f} {best[1]:>11.3f}  {best[2]}")


if __name__ == "__main__":
    main()
