"""Saliency truth checks of a finished demo run (simulated cohort only):

    python benchmarks/bench_saliency_truths.py RUN_DIR [--methods]

Scores region rankings against three definitions of what the simulator changed, all from
RUN_DIR/results/cohort/truth/effects_aal116.tsv (recomputed by
brainage.data.simulate.cohort.effects_table for a run simulated before the ``AD_specific`` rows):

``signal``: the pipeline's truth (brainage.apply.explain.TRUTH_MEASURE, TRUTH_EFFECT): the mean
    |signal change| per AAL116 region of the simulator's mean subject rendered on the template
    (20 -> 80 years for ageing; AD and PD: the cohort's mean patient, its disease atrophy and
    biological-age increment, against an age-matched control).
``specific``: the same for ageing; AD and PD: the disease's own atrophy alone (no increment).
``volume``: |volume change| of the effect's deformation (the truth before 2026-12-05).

1. Every group map the run wrote (results/saliency/<model>/aal116.tsv), scored by
   brainage.apply.explain.truth_checks (Holm across each model's groups): per truth and effect, the
   precision@10 range over groups and models and the smallest Holm p.
2. ``--methods``: on the run's 4 mm cache, the healthy test subjects' and the AD subjects' group
   maps of every network, recomputed by each method (Grad-RAM on layer1-layer3, the input
   gradient), beside a reference made from the data alone: bench_saliency_oracle's voxelwise
   |r(voxel, age)| over all healthy subjects and |Cohen's d| of AD against the healthy age trend
   (precision@10 and its one-sided p against random rankings, no correction). Not a ceiling:
   |d| divides by the healthy spread, and against the signal truth of AD it scores below
   RNC batch 32's gradient map (0.4 and 0.5, 2026-12-06 demo run).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))


def run_truths(run: Path) -> dict[str, pd.DataFrame]:
    """{"signal": ..., "specific": ..., "volume": ...}: the run's truth table ranked three ways."""
    from brainage.apply.explain import TRUTH_MEASURE

    effects = pd.read_csv(run / "results" / "cohort" / "truth" / "effects_aal116.tsv", sep="\t")
    if "AD_specific" not in set(effects["effect"]):  # simulated before 2026-12-06: recompute the table
        import yaml

        from brainage.data.simulate.anatomy import Anatomy
        from brainage.data.simulate.cohort import effects_table
        from brainage.data.simulate.model import model_from_config

        config = yaml.safe_load((run / "config" / "config.yaml").read_text())
        anatomy = Anatomy.load(run / "results" / "cohort" / "truth" / "anatomy.npz")
        subjects = pd.read_csv(run / "results" / "cohort" / "truth" / "subjects.tsv", sep="\t")
        effects = effects_table(anatomy, model_from_config(config["cohort"]["simulate"]), subjects)
    pipeline = effects[~effects["effect"].str.endswith("_specific")]
    # AD and PD groups scored against the disease's own atrophy alone (no biological-age increment)
    specific = effects[effects["effect"].isin(["ageing", "AD_specific", "PD_specific"])]
    specific = specific.assign(effect=specific["effect"].str.replace("_specific", "", regex=False))
    # the pipeline ranks by TRUTH_MEASURE (the signal change): the volume truth puts the volume change there
    return {"signal": pipeline, "specific": specific, "volume": pipeline.assign(**{TRUTH_MEASURE: pipeline["volume_change_pct"]})}


def score_written_maps(run: Path, truths: dict[str, pd.DataFrame]) -> None:
    from brainage.apply.explain import truth_checks

    summary = defaultdict(list)
    for table in sorted((run / "results" / "saliency").glob("*/aal116.tsv")):
        aal = pd.read_csv(table, sep="\t")
        for truth, effects in truths.items():
            checks = truth_checks(aal, effects, 10, 10000, 0).dropna(subset=["precision"])
            for _, c in checks.iterrows():
                summary[(truth, c["effect"])].append((c["precision"], c["p_holm"], f"{table.parent.name}:{c['group']}"))
    print(f"\n{'truth':<8} {'effect':<7} {'precision@10':>13} {'min p Holm':>11}  best group")
    for (truth, effect), rows in sorted(summary.items()):
        best = min(rows, key=lambda r: (r[1], -r[0]))
        print(f"{truth:<8} {effect:<7} {min(r[0] for r in rows):>6.1f}-{max(r[0] for r in rows):<6.1f} {best[1]:>11.4f}  {best[2]}")


def compare_methods(run: Path, truths: dict[str, pd.DataFrame]) -> None:
    import nibabel as nib
    import torch

    from brainage.data.atlases import aal_labels
    from brainage.data.cache import CachedVolumes
    from brainage.apply.explain import parcel_table, relevant_regions, saliency_maps, truth_check
    from brainage.models.files import load_model

    res = 4
    cache = CachedVolumes(run / "results" / "cache" / f"res-{res}" / "volumes.npy", run / "results" / "cache" / f"res-{res}" / "index.tsv")
    splits = pd.read_csv(run / "results" / "splits.tsv", sep="\t")
    atlas = np.asanyarray(nib.load(str(run / "resources" / "atlases" / f"tpl-MNI152NLin2009cAsym_res-{res}_atlas-AAL116_dseg.nii.gz")).dataobj)
    labels = aal_labels()
    ad = splits[splits["cohort"] == "AD"]
    hc_test = splits[(splits["cohort"] == "HC") & (splits["split"] == "test")]

    def score(what: str, saliency: np.ndarray, effect: str) -> None:
        table = parcel_table(saliency, atlas, labels)
        present = table.loc[table["mean"].notna(), "name"]
        cells = []
        for truth, effects in truths.items():
            c = truth_check(table, relevant_regions(effects, effect, 10, among=present), 10, 10000, 0)
            cells.append(f"{c['precision']:>4.1f} (p {c['p_value']:.4f})")
        print(f"{what:<44} {effect:<7} " + "   ".join(cells), flush=True)

    print(f"\n{'map (4 mm cache; HC: test split, data: all HC)':<44} {'effect':<7} {'signal truth':<16}   {'specific truth':<16}   volume truth")
    # the reference: bench_saliency_oracle's voxelwise maps of the data themselves (no network)
    from bench_saliency_oracle import load_volumes, oracle_maps

    volumes, index = load_volumes(run, str(res), raw=False)
    oracle = oracle_maps(volumes, index, atlas > 0)
    score("data: voxelwise |r(voxel, age)|", np.nan_to_num(oracle["ageing"]), "ageing")
    score("data: voxelwise |d(AD vs age trend)|", np.nan_to_num(oracle["AD"]), "AD")
    torch.set_num_threads(2)
    for model_dir in sorted((run / "results" / "models").glob("*/model.pt")):
        model, meta = load_model(model_dir)
        if meta.get("kind") == "classical" or float(meta.get("grid_res", 0)) != res:
            continue
        for method, layer in [("gradram", "layer1"), ("gradram", "layer2"), ("gradram", "layer3"), ("gradient", "-")]:
            def group_mean(ids):
                total = 0.0
                for k in range(0, len(ids), 8):
                    x = torch.from_numpy(np.stack([cache.volume(p) for p in ids[k:k + 8]])[:, None].astype(np.float32))
                    total = total + saliency_maps(model.eval(), x, method, layer).numpy().sum(0)
                return total / len(ids)

            what = f"{model_dir.parent.name} {method}{'' if layer == '-' else ' ' + layer}"
            score(f"{what}: HC", group_mean(hc_test["participant_id"].tolist()), "ageing")
            score(f"{what}: AD", group_mean(ad["participant_id"].tolist()), "AD")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--methods", action="store_true", help="also recompute group maps by every method (2-3 min)")
    args = parser.parse_args()
    truths = run_truths(args.run)
    from brainage.apply.explain import relevant_regions

    for effect in ("ageing", "AD"):
        for truth, effects in truths.items():
            print(f"{truth} truth, {effect} top 10: {', '.join(relevant_regions(effects, effect, 10))}")
    score_written_maps(args.run, truths)
    if args.methods:
        compare_methods(args.run, truths)


if __name__ == "__main__":
    main()
