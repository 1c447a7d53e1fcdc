"""Realism of the simulated cohort: simulated and real heads through the same measurements.

Prints one line per compared quantity, ``simulated ... vs real ...`` (brainage.realism), and
writes the figure with both cohorts overlaid. The global-feature probe (ridge on nine global
features of the raw scan in its deepbet mask, 10-fold CV) runs on every head; the
template-space measures (histogram, tissue peaks, GM/WM contrast, brain and ventricle volume,
NCC) on ``--n-preprocess`` simulated heads spread over the age range (native engine, ~40 s
each) and on the real heads of a finished pipeline run. Everything is cached under ``--work``.

    python benchmarks/bench_realism.py --real-run /tmp/ixi_run --n-sim 160 --n-preprocess 30
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import realism  # benchmarks/realism.py: benchmark-only measurements, not the library
from brainage.core.paths import simulated_cohort_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-run", default="/tmp/ixi_run", help="finished pipeline run on the real heads")
    parser.add_argument("--work", default="/tmp/realism", help="cache folder")
    parser.add_argument("--sim-name", default="sim", help="simulated cohort folder under --work")
    parser.add_argument("--n-sim", type=int, default=160, help="simulated healthy heads (>= 150)")
    parser.add_argument("--n-preprocess", type=int, default=30, help="simulated heads preprocessed")
    parser.add_argument("--preprocess-minutes", type=float, default=None,
                        help="start no new preprocessing after this long (a rerun goes on where it stopped)")
    parser.add_argument("--sim-mask", choices=("deepbet", "true"), default="deepbet",
                        help="brain mask of the simulated heads for the probe (true: the simulator's, fast)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    work, run = Path(args.work), Path(args.real_run)
    sim_dir = work / args.sim_name
    manifest = simulated_cohort_files(sim_dir)["manifest"]
    if not manifest.exists():
        from brainage.data.simulate import simulate_cohort

        simulate_cohort(sim_dir, args.n_sim, 0, 0, args.seed, 2.0)
    cohorts = {"sim": pd.read_csv(manifest, sep="\t"),
               "real": pd.read_csv(run / "results" / "cohort" / "participants.tsv", sep="\t")}
    prep = run / "results" / "preprocess"
    sim_prep = sim_dir / "realism" / "preprocess"
    sim_mask = (realism.simulated_true_mask(sim_dir) if args.sim_mask == "true" else realism.cached_deepbet_mask(
        sim_dir / "realism" / "masks", lambda pid: sim_prep / pid / f"{pid}_desc-brain_mask.nii.gz"))
    found = {"sim": sim_mask,
             "real": realism.cached_deepbet_mask(work / "real" / "masks",
                                                 lambda pid: prep / pid / "anat" / f"{pid}_desc-brain_mask.nii.gz")}
    budget = None if args.preprocess_minutes is None else 60 * args.preprocess_minutes
    dirs = {"sim": realism.preprocess_subset(cohorts["sim"], args.n_preprocess, sim_prep, budget_s=budget),
            "real": {pid: prep / pid / "anat" for pid in cohorts["real"]["participant_id"]}}
    out = {}
    for name, table in cohorts.items():
        cache = work / (f"{args.sim_name}_{args.sim_mask}mask" if name == "sim" else "real") / "features.tsv"
        features = realism.cohort_raw_features(table, found[name], cache)
        ages = table.set_index("participant_id")["age"]
        out[name] = {"features": features, "probe": realism.global_feature_probe(features[list(realism.FEATURES)], features["age"]),
                     "template": realism.cohort_template_measures(dirs[name], ages), "raw_example": table["t1w"].iloc[0]}
    for line in realism.compare(out["sim"], out["real"]):
        print(line)
    print(f"simulated heads' probe masks: {args.sim_mask}; template-space measures on {len(out['sim']['template'])} "
          f"preprocessed simulated heads")
    figure = work / f"realism_{args.sim_name}_{args.sim_mask}mask.png"
    realism.realism_figure(out["sim"], out["real"], figure)
    print(f"figure: {figure}")


if __name__ == "__main__":
    main()
