"""Preprocessing judged on real heads: QC pass rate, NCC and brain-volume distributions.

    brainage simulate --out /tmp/qc_sim --n-hc 12 --n-ad 0 --n-pd 0        # optional comparison
    python benchmarks/qc_real_heads.py --data ../shared/data/ixi_dev ../shared/data/ixi_sample \
        [--simulated /tmp/qc_sim] [--out /tmp/qc_real_heads] [--jobs 2] [--config config/config.yaml]

Runs the pipeline's own preprocessing (:func:`brainage.preprocess.preprocess_or_exclude`, the
rule's entry, with the ``preprocess`` section of ``--config``, grids 2 and 4 mm) on every
``*.nii*`` scan of the ``--data`` folders (and every ``*_T1w.nii.gz`` under ``--simulated``),
``--jobs`` scans at a time with one thread each. A subject whose QC json is already in
``--out`` is not run again, so a rerun only summarises (and ``--out`` may be a pipeline's
``results/preprocess``). Writes ``qc.tsv``, ``excluded.tsv`` and ``qc_montage.png`` under
``--out`` (``--out``/simulated for the simulated heads) and prints, for real and simulated
heads side by side:

* pass rate under the thresholds of ``--config`` (re-judged from each QC json's metrics, so a
  threshold change needs no rerun), and every failure with its reasons;
* NCC, brain volume, affine scales and determinant: min, 1st/5th/50th/95th percentile, max;
* the NCC of the same registered brains moved off by a known error (shifted 4 and 8 mm,
  rotated 10 degrees; the worst axis of each): where a threshold must sit to catch a bad
  registration without cutting good ones;
* with a ``demographics.csv`` beside the scans (IXI_ID, AGE, SEX_ID): Pearson r of NCC and
  brain volume with age, and brain volume by sex (checks that the metrics measure heads).

Everything it writes goes to ``--out`` (default ``/tmp/qc_real_heads``), never the repository.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd

GRIDS = [2.0, 4.0]
PCTS = [1, 5, 50, 95]
#: known registration errors applied to each registered brain: (label, shift mm, rotation deg)
MISREGISTRATIONS = [("shift 4 mm", 4.0, 0.0), ("shift 8 mm", 8.0, 0.0), ("rotate 10 deg", 0.0, 10.0)]


def participant_id(scan: Path) -> str:
    """``sub-IXI012`` for ``IXI012-HH-1211-T1_ds.nii.gz`` (the manifest's IXI ids); BIDS names
    give their ``sub-`` label; anything else its letters and digits."""
    from brainage.data.manifest.ixi import _IXI_T1
    from brainage.preprocess import _id_from_name

    match = _IXI_T1.fullmatch(scan.name)
    return f"sub-IXI{int(match.group(1)):03d}" if match else _id_from_name(str(scan))


def _run_one(scan: str, out: str, sub: str, settings: dict) -> tuple[str, float]:
    from brainage.preprocess import preprocess_or_exclude

    started = time.perf_counter()
    preprocess_or_exclude(scan, out, sub, GRIDS, engine="native", settings=settings, threads=1)
    return sub, time.perf_counter() - started


def outputs(out: Path, sub: str) -> dict[str, Path]:
    from brainage.core.paths import preprocess_outputs

    return preprocess_outputs(out / sub / "anat", sub, GRIDS)


def run_all(scans: dict[str, Path], out: Path, settings: dict, jobs: int) -> None:
    todo = {sub: scan for sub, scan in scans.items() if not outputs(out, sub)["qc_json"].exists()}
    print(f"{out}: {len(scans)} scans, {len(scans) - len(todo)} already preprocessed, {len(todo)} to run "
          f"({jobs} at a time)", flush=True)
    if not todo:
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_run_one, str(scan), str(out / sub / "anat"), sub, settings) for sub, scan in todo.items()]
        for i, fut in enumerate(as_completed(futures), 1):
            sub, seconds = fut.result()
            print(f"  [{i}/{len(todo)}] {sub} {seconds:.0f} s", flush=True)


def misregistered_ncc(out: Path, subs: list[str]) -> pd.DataFrame:
    """NCC (2 mm grid, template brain mask) of each registered brain as registered and moved off
    by each of :data:`MISREGISTRATIONS` (the lowest NCC over the three axes)."""
    import nibabel as nib
    from scipy import ndimage

    from brainage.data.atlases import load_template_1mm
    from brainage.core.grids import downsample_from_1mm
    from brainage.preprocess.qc import ncc

    tpl, mask = load_template_1mm()
    tpl2 = downsample_from_1mm(tpl, 2.0)
    mask2 = downsample_from_1mm(mask.astype(np.float32), 2.0) >= 0.5
    rows = []
    for sub in subs:
        path = outputs(out, sub)["res2"]
        vol = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
        if not vol.any():  # excluded as bad input: no registered brain
            continue
        row = {"participant_id": sub, "registered": ncc(vol, tpl2, mask2)}
        for label, shift_mm, angle in MISREGISTRATIONS:
            if shift_mm:
                moved = [ndimage.shift(vol, [shift_mm / 2.0 * (a == i) for a in range(3)], order=1) for i in range(3)]
            else:
                moved = [ndimage.rotate(vol, angle, axes=ax, reshape=False, order=1) for ax in [(0, 1), (1, 2), (0, 2)]]
            row[label] = min(ncc(m, tpl2, mask2) for m in moved)
        rows.append(row)
    return pd.DataFrame(rows)


def describe(values: pd.Series) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    if not len(v):
        return "n/a"
    digits = 3 if np.abs(v).max() < 100 else 0
    return "".join(f"{x:9.{digits}f}" for x in [v.min(), *np.percentile(v, PCTS), v.max()])


def summary(table: pd.DataFrame, moved: pd.DataFrame, label: str) -> None:
    n, passed = len(table), int(table["passed"].sum())
    print(f"\n{label}: {passed}/{n} passed QC ({100.0 * passed / max(n, 1):.1f} %)")
    print(f"  {'metric':<22}{'min':>9}" + "".join(f"{'p' + str(p):>9}" for p in PCTS) + f"{'max':>9}")
    for col in ["ncc", "brain_volume_ml", "min_scale", "max_scale", "determinant", "rotation_deg", "runtime_s"]:
        print(f"  {col:<22}{describe(table[col])}")
    for label_, _, _ in MISREGISTRATIONS:
        if label_ in moved:
            print(f"  {'ncc ' + label_:<22}{describe(moved[label_])}")
    for row in table.loc[~table["passed"]].itertuples():
        print(f"  FAILED {row.participant_id}: {row.reason}")


def demographics_check(table: pd.DataFrame, data_dirs: list[Path]) -> None:
    """Ages and sexes through the project's IXI importer, where a demographics.csv is beside the scans."""
    from brainage.data.manifest import from_ixi

    frames = [from_ixi(d / "demographics.csv", d) for d in data_dirs if (d / "demographics.csv").exists()]
    if not frames:
        return
    demo = pd.concat(frames)[["participant_id", "age", "sex"]]
    ok = table.merge(demo, on="participant_id").dropna(subset=["ncc", "brain_volume_ml"])
    if len(ok) < 3:
        return
    age = ok["age"].astype(float)
    print(f"\nwith demographics ({len(ok)} subjects, ages {age.min():.1f}-{age.max():.1f}):")
    print(f"  r(NCC, age) = {np.corrcoef(ok.ncc, age)[0, 1]:+.2f}   "
          f"r(brain volume, age) = {np.corrcoef(ok.brain_volume_ml, age)[0, 1]:+.2f}")
    for sex, name in [("M", "male"), ("F", "female")]:
        vol = ok.loc[ok["sex"] == sex, "brain_volume_ml"]
        if len(vol):
            print(f"  brain volume {name:<6} n={len(vol):<3} mean {vol.mean():6.0f} ml, sd {vol.std():4.0f}, "
                  f"range {vol.min():.0f}-{vol.max():.0f}")


def threshold_margins(tables: dict[str, pd.DataFrame], moved: dict[str, pd.DataFrame], thresholds: dict) -> None:
    """Each threshold beside the measured extremes of each set of heads; the NCC threshold also
    beside the highest NCC of a brain shifted 4 mm (a threshold above it catches that error)."""
    print("\nthresholds (--config preprocess.qc) beside the measured extremes:")
    checks = [("min_ncc", "ncc", "min"), ("min_brain_volume_ml", "brain_volume_ml", "min"),
              ("max_brain_volume_ml", "brain_volume_ml", "max"), ("min_scale", "min_scale", "min"),
              ("max_scale", "max_scale", "max")]
    for key, col, side in checks:
        line = f"  {key:<20} {thresholds.get(key, float('nan')):>8g}"
        for label, table in tables.items():
            values = pd.to_numeric(table[col], errors="coerce").dropna()
            if len(values):
                line += f"   {label} {side} {(values.min() if side == 'min' else values.max()):8.3f}"
        if key == "min_ncc":
            for label, table in moved.items():
                if "shift 4 mm" in table and len(table):
                    line += f"   {label} shifted 4 mm max {table['shift 4 mm'].max():.3f}"
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", required=True, type=Path, help="folders of raw T1w scans (real heads)")
    parser.add_argument("--simulated", type=Path, default=None,
                        help="a `brainage simulate --out` folder: its scans are preprocessed the same way, to compare")
    parser.add_argument("--out", default="/tmp/qc_real_heads", type=Path)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--config", default="config/config.yaml", type=Path,
                        help="YAML whose 'preprocess' section (chain and QC thresholds) is used, layered over "
                             "config/defaults.yaml as --configfile layers it")
    args = parser.parse_args()

    from brainage.config import resolved_config
    from brainage.preprocess import settings_from_config
    from brainage.preprocess.qc import write_cohort_qc

    settings = resolved_config([args.config])["preprocess"]
    thresholds = settings_from_config(settings)["qc"]
    sets = {"real": (args.out, {participant_id(p): p for d in args.data for p in sorted(d.glob("*.nii*"))})}
    if args.simulated is not None:
        sets["simulated"] = (args.out / "simulated",
                             {participant_id(p): p for p in sorted(args.simulated.rglob("sub-*_T1w.nii.gz"))})
    if not sets["real"][1]:
        print(f"no *.nii* scans in {', '.join(map(str, args.data))}", file=sys.stderr)
        return 1
    tables, moved = {}, {}
    for label, (out, scans) in sets.items():
        out.mkdir(parents=True, exist_ok=True)
        run_all(scans, out, settings, args.jobs)
    print(f"\nconfig {args.config}: preprocess.qc = {settings.get('qc')}")
    for label, (out, scans) in sets.items():
        subs = sorted(scans)
        # the pipeline's cohort QC, every subject judged against --config's thresholds
        table = write_cohort_qc([outputs(out, s)["qc_json"] for s in subs], out / "qc.tsv", out / "excluded.tsv",
                                out / "qc_montage.png", [outputs(out, s)["res2"] for s in subs], thresholds=thresholds)
        where = ", ".join(d.name for d in args.data) if label == "real" else str(args.simulated)
        moved[label] = misregistered_ncc(out, subs)
        summary(table, moved[label], f"{label} heads ({where})")
        tables[label] = table
    demographics_check(tables["real"], args.data)
    threshold_margins(tables, moved, settings.get("qc") or {})
    print(f"\nqc.tsv, excluded.tsv, qc_montage.png and each subject's QC figure under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
