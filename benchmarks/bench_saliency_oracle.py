"""What a saliency map could find in the demo's data: precision@10 of data-driven "oracle" maps
against the simulator's truth, beside the Grad-RAM maps' (simulated cohort only).

    python benchmarks/bench_saliency_oracle.py RUN_DIR [--grid 4|2] [--cells 6] [--raw]

``RUN_DIR`` is a finished demo run (the repository, or `benchmarks/bench_demo.py run`'s copy).
The oracle maps use the preprocessed volumes themselves, no network, each divided by its
99.5th intensity percentile as the networks see it (``--raw``: as written): for ageing, the
voxelwise |Pearson r| of intensity with age over the healthy controls; for AD and PD, the
voxelwise |Cohen's d| of the patients against the controls after removing the controls' linear
age trend from both. Each map is ranked by AAL116 region (mean over the region's voxels) and
scored exactly as the Grad-RAM maps are (brainage.apply.explain.truth_check: precision at 10
against the 10 regions of largest |signal change| in results/cohort/truth/effects_aal116.tsv,
brainage.apply.explain.TRUTH_MEASURE; |volume change| for a run simulated before 2026-12-05;
p from 10,000 random rankings), once at the grid's resolution and once block-averaged to about
``--cells`` cells per axis, the resolution of the Grad-RAM maps (brainage.apply.explain `auto` layer).
If the oracle maps miss the truth too, the limit is the data and the truth's definition, not
the network or Grad-RAM. ``--grid 2`` (no model of the demo uses it, so it has no cache) reads
every subject's preprocessed 2 mm volume: what a map on the study's 2 mm grid could find.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def block_average(volume: np.ndarray, cells: int) -> np.ndarray:
    """``volume`` averaged over blocks giving about ``cells`` cells along each axis, back on its grid."""
    out = np.empty_like(volume)
    edges = [np.linspace(0, n, cells + 1).round().astype(int) for n in volume.shape]
    for i in range(cells):
        for j in range(cells):
            for k in range(cells):
                sl = tuple(slice(e[a], e[a + 1]) for e, a in zip(edges, (i, j, k)))
                out[sl] = np.nanmean(volume[sl]) if np.isfinite(volume[sl]).any() else np.nan
    return out


def region_table(volume: np.ndarray, labels: np.ndarray, names: pd.DataFrame) -> pd.DataFrame:
    """Mean of ``volume`` per AAL116 region, ranked (the shape of brainage.apply.explain's tables)."""
    rows = []
    for index, name in zip(names["index"], names["name"]):
        inside = (labels == index) & np.isfinite(volume)
        rows.append({"index": index, "name": name, "mean": float(volume[inside].mean()) if inside.any() else np.nan})
    table = pd.DataFrame(rows)
    table["rank"] = table["mean"].rank(ascending=False, method="first")
    return table


def oracle_maps(volumes: np.ndarray, index: pd.DataFrame, brain: np.ndarray) -> dict[str, np.ndarray]:
    """|r| with age over the controls; |d| of AD and of PD against the controls, age trend removed."""
    hc = index["split"].isin(["train", "val", "test"]).to_numpy()
    x = volumes[:, brain].astype(np.float64)
    age = index["age"].to_numpy(float)
    a = age[hc] - age[hc].mean()
    y = x[hc] - x[hc].mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):  # voxels constant across subjects: NaN, left out
        r = (a @ y) / np.sqrt((a @ a) * (y * y).sum(0))
    slope = (a @ y) / (a @ a)
    resid = x - (x[hc].mean(0) + np.outer(age - age[hc].mean(), slope))
    maps = {"ageing": np.abs(r)}
    for cohort in ("AD", "PD"):
        pat = (index["split"] == cohort).to_numpy()
        if pat.sum() > 1:
            pooled = np.sqrt((resid[pat].var(0, ddof=1) + resid[hc].var(0, ddof=1)) / 2)
            with np.errstate(invalid="ignore", divide="ignore"):
                maps[cohort] = np.abs(resid[pat].mean(0) - resid[hc].mean(0)) / pooled
    out = {}
    for key, values in maps.items():
        full = np.full(brain.shape, np.nan)
        full[brain] = values
        out[key] = full
    return out


def load_volumes(run: Path, grid: str, raw: bool) -> tuple[np.ndarray, pd.DataFrame]:
    """Every subject's volume on ``grid`` (from the training cache, else the preprocessed NIfTIs)
    and its participant_id, age and split; normalised as the networks see them unless ``raw``."""
    from brainage.data.cache import CachedVolumes, intensity_scale
    from brainage.core.paths import cache_files, preprocessed_t1w
    from brainage.data.splits import read_splits

    files = cache_files(run / "results" / "cache", f"res-{grid}")
    if files["volumes"].exists():
        cache = CachedVolumes(files["volumes"], files["index"])
        index = cache.index.sort_values("row")
        volumes = np.asarray(cache.array[index["row"].to_numpy()], dtype=np.float32)
        scales = index["scale"].to_numpy(np.float32)
    else:
        index = read_splits(run / "results" / "splits.tsv")
        volumes, scales = [], []
        for pid in index["participant_id"]:
            path = preprocessed_t1w(run / "results" / "preprocess" / pid / "anat", pid, grid)
            volumes.append(np.asarray(nib.load(str(path)).dataobj, dtype=np.float32))
            scales.append(intensity_scale(volumes[-1]))
        volumes, scales = np.stack(volumes), np.asarray(scales, np.float32)
    if not raw:
        volumes /= scales[:, None, None, None]
    return volumes, index.reset_index(drop=True)


def main(argv=None) -> None:
    from brainage.apply.explain import TRUTH_MEASURE, read_effects, relevant_regions, truth_check
    from brainage.report.stats import holm

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--grid", default="4")
    parser.add_argument("--cells", type=int, default=6)
    parser.add_argument("--raw", action="store_true", help="intensities as written, not normalised per subject")
    args = parser.parse_args(argv)
    run = args.run
    atlases = run / "resources" / "atlases"
    labels = np.asarray(nib.load(next(atlases.glob(f"*_res-{args.grid}_atlas-AAL116_dseg.nii.gz"))).dataobj)
    names = pd.read_csv(atlases / "atlas-AAL116_dseg.tsv", sep="\t")
    volumes, index = load_volumes(run, args.grid, args.raw)
    effects = read_effects(run / "results" / "cohort" / "truth" / "effects_aal116.tsv")
    brain = labels > 0
    rows = []
    for effect, volume in oracle_maps(volumes, index, brain).items():
        for resolution, vol in ((f"{args.grid} mm grid", volume), (f"~{args.cells} cells/axis", block_average(volume, args.cells))):
            table = region_table(vol, labels, names)
            relevant = relevant_regions(effects, effect, 10, among=table.dropna(subset=["mean"])["name"])
            rows.append({"map": f"oracle {effect}", "resolution": resolution, **truth_check(table, relevant)})
    result = pd.DataFrame(rows)
    result["p_holm"] = holm(result["p_value"])
    print(f"bench_saliency_oracle: {run} (simulated cohort), n={len(index)}, {args.grid} mm grid, "
          f"{'raw' if args.raw else 'normalised'} intensities; precision@10 against the simulator's "
          f"top-10 regions by |{TRUTH_MEASURE}| (random: {result['random_mean'].iloc[0]:.3f})")
    print(f"{'map':<16} {'resolution':<16} {'precision':>9} {'p':>8} {'p Holm':>8}  top regions")
    for r in result.itertuples():
        print(f"{r.map:<16} {r.resolution:<16} {r.precision:>9.2f} {r.p_value:>8.4f} {r.p_holm:>8.4f}  {r.top[:90]}")
    for effect in ("ageing", "AD", "PD"):
        print(f"truth {effect}: {';'.join(relevant_regions(effects, effect, 10))}")
    for check in sorted((run / "results" / "saliency").glob("*/truth_check.tsv")):
        t = pd.read_csv(check, sep="\t").set_index("group")
        picks = [g for g in ("HC", "AD", "AD-minus-HC", "PD", "PD-minus-HC") if g in t.index]
        print(f"Grad-RAM {check.parent.name}: " + ", ".join(
            f"{g} {t.loc[g, 'precision']:.1f} (p Holm {t.loc[g, 'p_holm']:.3f})" for g in picks))


if __name__ == "__main__":
    main()
