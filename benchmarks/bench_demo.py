"""Where the demo's time goes: wall time per stage of a whole run, and per unit of work.

    # the whole demo (`snakemake --cores all` with config/config.yaml) in a fresh copy, then the report
    nice python benchmarks/bench_demo.py run /tmp/demo
    # the report of a run already made (the repository, or a working directory)
    python benchmarks/bench_demo.py report .
    # old vs new settings in one run: each overlay (a YAML merged into the demo, config/config.yaml
    # over config/defaults.yaml; `models:` replaced whole) runs in its own fresh copy, one after
    # the other, up to a target
    nice python benchmarks/bench_demo.py compare /tmp/cmp old.yaml new.yaml --target preprocess_all

Stages are the rule files: a rule's stage is the ``workflow/rules/<stage>.smk`` defining it
(resources, cohort = simulate, preprocess, train, infer = inference + saliency, stats = tables,
figures, report). A stage's wall time is the time during which at least one of its jobs ran
(start and end of every job from the Snakemake log of the run); the total is the first job's
start to the last job's end. Per unit: seconds per job of every rule (``benchmark:`` files,
``logs/<rule>/<wildcards>.benchmark.tsv``), the native preprocessing's own timings per step
(each subject's QC json), and the seconds per epoch of every model (``train_log.tsv``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
COPIED = ("Snakefile", "workflow", "profiles", "src", "envs", "config")
STAGE_NAMES = {"cohort": "simulate", "infer": "infer/saliency", "stats": "stats/report"}
_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_RULE = re.compile(r"^(?:local)?rule (\w+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)$")
_DONE = re.compile(r"^Finished job(?:id:)? (\d+)")


def rule_stages(workdir: Path) -> dict[str, str]:
    """Rule name -> stage (the rules file defining it, named as the README names the stages)."""
    stages = {}
    for smk in sorted((workdir / "workflow" / "rules").glob("*.smk")):
        stage = STAGE_NAMES.get(smk.stem, smk.stem)
        for line in smk.read_text().splitlines():
            # rules defined in a loop (one per batch of subjects) are named f"<stem>_{BATCH}"
            found = re.match(r"^\s*(?:rule (\w+):|use rule \w+ as (\w+)|f\"(\w+)_\{\w+\}\"$)", line)
            if found:
                stages[found.group(1) or found.group(2) or found.group(3)] = stage
    # the tables' and figures' rules are made in a loop over brainage.report.targets (stats.smk)
    from brainage.report.targets import TARGETS

    stages.update({t.name: STAGE_NAMES["stats"] for t in TARGETS})
    return stages


def stage_of(stages: dict[str, str], rule: str) -> str:
    """The stage of ``rule``; a batch rule (``preprocess_b003``) is its stem's (``preprocess``)."""
    return stages.get(rule) or stages.get(re.sub(r"_b\d+$", "", rule), "other")


def job_intervals(log_file: Path) -> list[tuple[str, float, float]]:
    """(rule, start, end) of every finished job of a Snakemake log, in seconds since the epoch."""
    stamp, rule, started, jobs = None, None, {}, []
    for line in log_file.read_text(errors="replace").splitlines():
        if m := _STAMP.match(line.strip()):
            stamp = dt.datetime.strptime(re.sub(" +", " ", m.group(1)), "%a %b %d %H:%M:%S %Y").timestamp()
        elif m := _RULE.match(line.strip()):
            rule = m.group(1)
        elif (m := _JOBID.match(line)) and rule is not None:
            started[m.group(1)] = (rule, stamp)
            rule = None
        elif (m := _DONE.match(line.strip())) and m.group(1) in started:
            name, start = started.pop(m.group(1))
            jobs.append((name, start, stamp))
    return jobs


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total, end = total + (b - a), b
        elif b > end:
            total, end = total + (b - end), b
    return total


def _benchmarks(workdir: Path) -> dict[str, list[float]]:
    """Rule -> seconds of each of its jobs, from the ``benchmark:`` files under logs/."""
    per_rule = defaultdict(list)
    for tsv in sorted((workdir / "logs").glob("**/*.benchmark.tsv")):
        rows = tsv.read_text().splitlines()
        if len(rows) > 1:
            per_rule[tsv.relative_to(workdir / "logs").parts[0]].append(float(rows[-1].split("\t")[0]))
    return per_rule


def _print_stages(workdir: Path) -> None:
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    jobs = [job for log_file in logs for job in job_intervals(log_file)]
    if not jobs:
        print(f"no finished jobs in {workdir}/.snakemake/log")
        return
    stages = rule_stages(workdir)
    by_stage = defaultdict(list)
    for rule, start, end in jobs:
        by_stage[stage_of(stages, rule)].append((start, end))
    print(f"{'stage':<16} {'jobs':>5} {'wall min':>9}")
    for stage in ["resources", "simulate", "preprocess", "train", "infer/saliency", "stats/report", "other"]:
        if stage in by_stage:
            print(f"{stage:<16} {len(by_stage[stage]):>5} {union_seconds(by_stage[stage]) / 60:>9.1f}")
    first, last = min(j[1] for j in jobs), max(j[2] for j in jobs)
    print(f"{'total':<16} {len(jobs):>5} {(last - first) / 60:>9.1f}   ({len(logs)} Snakemake log(s); "
          "the total spans all of them)")


def _print_units(workdir: Path) -> None:
    per_rule = _benchmarks(workdir)
    if per_rule:
        print(f"\n{'rule (benchmark files)':<24} {'jobs':>5} {'s/job mean':>11} {'s total':>9}")
        for rule, secs in sorted(per_rule.items()):
            print(f"{rule:<24} {len(secs):>5} {sum(secs) / len(secs):>11.1f} {sum(secs):>9.0f}")
    steps = defaultdict(list)
    for qc in (workdir / "results" / "preprocess").glob("sub-*/anat/*_desc-qc.json"):
        for step, secs in (json.loads(qc.read_text()).get("timings_s") or {}).items():
            steps[step].append(secs)
    if steps:
        print("native preprocessing, mean s per subject by step (in-process): "
              + ", ".join(f"{k} {sum(v) / len(v):.1f}" for k, v in steps.items()))
    import csv

    for log_tsv in sorted((workdir / "results" / "models").glob("*/train_log.tsv")):
        with log_tsv.open() as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        phases = defaultdict(list)
        for row in rows:
            phases[row["phase"]].append(float(row["seconds"]))
        print(f"model {log_tsv.parent.name:<22} " + ", ".join(
            f"{p}: {len(s)} epochs x {sum(s) / len(s):.1f} s = {sum(s) / 60:.1f} min" for p, s in phases.items()))


def report(workdir: Path) -> None:
    """Print the stage table and the per-unit figures of the run in ``workdir``."""
    print(f"== {workdir}")
    _print_stages(workdir)
    _print_units(workdir)


def _cpu() -> float:
    """CPU seconds of this process and its finished children (every thread): robust to a busy machine."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn):
    wall, cpu = time.perf_counter(), _cpu()
    out = fn()
    return out, time.perf_counter() - wall, _cpu() - cpu


def _job_startup() -> tuple[float, float]:
    """Wall and CPU seconds of a fresh Python importing what a preprocessing job imports."""
    code = "import ants, deepbet, torch, brainage.preprocess.native, brainage.preprocess.qc"
    _, wall, cpu = _timed(lambda: subprocess.run([sys.executable, "-c", code], check=True, capture_output=True))
    return wall, cpu


def units(overlays: list[Path], n_subjects: int, seed: int = 7) -> None:
    """Seconds per simulated and per preprocessed subject under each overlay's ``preprocess``
    settings, the overlays alternating subject by subject in this one process (so a busy machine
    slows all alike), with the registration error against the simulator's best affine fit and
    the brain-mask Dice against its true mask."""
    import tempfile

    import nibabel as nib
    import numpy as np

    sys.path.insert(0, str(REPO / "benchmarks"))
    from accuracy_preprocess import mean_distance_mm, template_brain_points
    from brainage.preprocess import preprocess_t1w
    from brainage.data.simulate.anatomy import cached_anatomy
    from brainage.data.simulate.model import plan_cohort
    from brainage.data.simulate.scan import best_affine_template_to_native, simulate_scan

    base = _demo()
    configs = {o.stem: _merge(base, yaml.safe_load(o.read_text()) or {}) for o in overlays}
    points = template_brain_points()
    results = defaultdict(list)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        anatomy, wall, cpu = _timed(lambda: cached_anatomy(2.0))
        print(f"anatomy (once per run): {wall:.1f} s wall, {cpu:.1f} s CPU")
        plan = plan_cohort(n_subjects, 0, 0, 2.0, seed, work / "bids")
        for _, row in plan.iterrows():
            sid = row["participant_id"]
            scan, wall, cpu = _timed(lambda: simulate_scan(row, anatomy, seed))
            results["simulate"].append((wall, cpu, np.nan, np.nan, np.nan))
            t1w = work / f"{sid}_T1w.nii.gz"
            nib.save(scan.image, t1w)
            truth = np.asarray(scan.mask.dataobj) > 0
            best, _ = best_affine_template_to_native(row, anatomy, seed, points[:3])
            for name, config in configs.items():
                pre, out = config["preprocess"], work / f"{name}_{sid}"
                settings = {k: v for k, v in pre.items() if k not in ("engine", "grids")}
                qc, wall, cpu = _timed(lambda: preprocess_t1w(t1w, out, sid, pre["grids"], settings=settings,
                                                              threads=2))
                found = np.array(json.loads(next(out.glob("*_xfm.json")).read_text())["template_to_native_ras"])
                mask = np.asarray(nib.load(next(out.glob("*_desc-brain_mask.nii.gz"))).dataobj) > 0
                dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
                results[name].append((wall, cpu, qc["ncc"], mean_distance_mm(found, best, points), dice))
            print(f"{sid}: " + "; ".join(f"{k} {v[-1][0]:.1f} s wall {v[-1][1]:.1f} s CPU" for k, v in results.items()),
                  flush=True)
    startup = _job_startup()
    print(f"\n{'per subject (mean)':<20} {'wall s':>7} {'CPU s':>7} {'NCC':>6} {'err mm':>7} {'max err':>8} {'Dice':>6}")
    for name, rows in results.items():
        a = np.array(rows, dtype=float)
        quality = "" if name == "simulate" else (f"{a[:, 2].mean():>6.3f} {a[:, 3].mean():>7.2f} {a[:, 3].max():>8.2f} "
                                                 f"{a[:, 4].mean():>6.3f}")
        print(f"{name:<20} {a[:, 0].mean():>7.1f} {a[:, 1].mean():>7.1f} {quality}")
    print(f"{'job start (imports)':<20} {startup[0]:>7.1f} {startup[1]:>7.1f}   (a Snakemake job's fresh Python, "
          "on top of the in-process figures above)")


def _synthetic_cache(folder: Path, grid: float, n_hc: int, seed: int):
    """A cache of ``n_hc`` random heads on the template grid of ``grid`` mm, split 80/10/10 (the
    demo's sizes: the time of an epoch depends on the shapes, not on the voxels)."""
    import numpy as np
    import pandas as pd

    from brainage.core.grids import template_grid

    rng = np.random.default_rng(seed)
    shape = template_grid(grid).shape
    inside = np.linalg.norm((np.indices(shape).T - np.array(shape) / 2).T / (np.array(shape)[:, None, None, None] / 2.5),
                            axis=0) < 1
    folder.mkdir(parents=True, exist_ok=True)
    volumes = np.lib.format.open_memmap(folder / "volumes.npy", mode="w+", dtype=np.float16, shape=(n_hc, *shape))
    for i in range(n_hc):
        volumes[i] = inside * rng.uniform(0.2, 1.0, shape)
    volumes.flush()
    n_val = n_test = n_hc // 10
    split = ["val"] * n_val + ["test"] * n_test + ["train"] * (n_hc - n_val - n_test)
    table = pd.DataFrame({"participant_id": [f"sub-hc{i:04d}" for i in range(n_hc)], "row": range(n_hc),
                          "age": rng.uniform(20, 90, n_hc), "split": split, "scale": 1.0})
    table.to_csv(folder / "index.tsv", sep="\t", index=False)
    return table[["participant_id", "age", "split"]], folder / "volumes.npy", folder / "index.tsv"


def epochs(overlays: list[Path], n_hc: int, measured_epochs: int = 1, seed: int = 7) -> None:
    """CPU seconds per epoch of every model of config/config.yaml and of each overlay (trained
    ``measured_epochs`` epochs, RNC heads as many, on a synthetic cache of ``n_hc`` controls,
    2 threads), and each config's training cost: CPU s/epoch x configured epochs. CPU time,
    not wall: on a shared machine it is what a job needs; the ratio of two configs holds on an
    idle one."""
    import copy
    import tempfile

    import pandas as pd
    import torch

    from brainage.train.engine import train_model

    torch.set_num_threads(2)
    base = _demo()
    configs = {"config.yaml": base, **{o.stem: _merge(base, yaml.safe_load(o.read_text()) or {}) for o in overlays}}
    per_epoch: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for config in configs.values():
            for name, entry in config["models"].items():
                key = json.dumps(entry, sort_keys=True)
                if key in per_epoch or "epochs" not in entry:
                    continue
                short = copy.deepcopy(entry)
                short["epochs"] = measured_epochs
                if isinstance(short.get("head"), dict):
                    short["head"]["epochs"] = measured_epochs
                splits, volumes, index = _synthetic_cache(work / f"res-{entry['grid']}", float(entry["grid"]), n_hc, seed)
                out = work / "models" / name
                _, wall, cpu = _timed(lambda: train_model(name, short, config["training"], splits, volumes, index,
                                                          out, seed, progress=False))
                log = pd.read_csv(out / "train_log.tsv", sep="\t")
                # CPU seconds per epoch of each phase: the call's CPU shared out as the phases' wall
                phase_wall = log.groupby("phase")["seconds"].sum()
                per_epoch[key] = {ph: cpu * phase_wall[ph] / phase_wall.sum() / measured_epochs for ph in phase_wall.index}
                print(f"{name:<22} {wall:.0f} s wall, {cpu:.0f} s CPU; CPU s/epoch: "
                      + ", ".join(f"{k} {v:.1f}" for k, v in per_epoch[key].items()), flush=True)
    for label, config in configs.items():
        total, parts = 0.0, []
        for name, entry in config["models"].items():
            cost = per_epoch.get(json.dumps(entry, sort_keys=True), {})
            head = (entry.get("head") or {}).get("epochs", 100) if entry.get("loss") == "rnc" else 0
            minutes = sum(s * (head if phase == "head" else entry["epochs"]) for phase, s in cost.items()) / 60
            total += minutes
            parts.append(f"{name} {minutes:.1f}")
        print(f"{label}: training {total:.1f} CPU min at most (early stopping ends sooner) = " + " + ".join(parts))


def _demo() -> dict:
    """The demo's whole configuration: config/config.yaml over config/defaults.yaml."""
    from brainage.config import resolved_config

    return resolved_config(root=REPO)


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict) and key != "models"
        merged[key] = _merge(base[key], value) if nested else value
    return merged


def fresh_workdir(workdir: Path, overlay: Path | None = None) -> Path:
    """A copy of the workflow, library and config in ``workdir`` (emptied first), with
    ``overlay`` merged into its config/config.yaml."""
    if workdir.exists():
        if (workdir / ".git").exists() or workdir.resolve() in (REPO, *REPO.parents):
            raise SystemExit(f"{workdir}: a repository or one of its parents, not a scratch directory")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    for name in COPIED:
        src = REPO / name
        copy = shutil.copytree if src.is_dir() else shutil.copy2
        kwargs = {"ignore": shutil.ignore_patterns("__pycache__", "*.egg-info")} if src.is_dir() else {}
        copy(src, workdir / name, **kwargs)
    if overlay is not None:
        config_file = workdir / "config" / "config.yaml"
        config = _merge(yaml.safe_load(config_file.read_text()), yaml.safe_load(overlay.read_text()) or {})
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return workdir


def run(workdir: Path, target: list[str], cores: str, overlay: Path | None = None, extra: str = "") -> float:
    """``snakemake --cores <cores> [extra] [target]`` in a fresh copy; returns its wall seconds."""
    fresh_workdir(workdir, overlay)
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "snakemake", "--cores", cores, *extra.split(), *target]
    with (workdir / "bench_demo.out").open("w") as out:
        status = subprocess.run(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    print(f"`{' '.join(cmd[2:])}` in {workdir}: exit {status}, {wall / 60:.1f} min wall "
          f"(output: {workdir / 'bench_demo.out'})")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    p_run = sub.add_parser("run", help="the demo in a fresh copy, then its report")
    p_rep = sub.add_parser("report", help="the report of an existing run")
    p_cmp = sub.add_parser("compare", help="config overlays one after the other, each in a fresh copy")
    p_units = sub.add_parser("units", help="s per simulated / preprocessed subject under each overlay, alternating")
    p_units.add_argument("overlays", type=Path, nargs="+")
    p_units.add_argument("--subjects", type=int, default=4)
    p_ep = sub.add_parser("epochs", help="s per epoch of every model of config.yaml and the overlays; projected training")
    p_ep.add_argument("overlays", type=Path, nargs="*")
    p_ep.add_argument("--n-hc", type=int, default=200)
    p_ep.add_argument("--epochs", type=int, default=1, help="epochs measured per model")
    for p in (p_run, p_cmp):
        p.add_argument("--target", nargs="*", default=[])
        p.add_argument("--cores", default="all")
        p.add_argument("--snakemake-args", default="", help="more Snakemake options, one string")
    p_run.add_argument("workdir", type=Path)
    p_run.add_argument("--overlay", type=Path)
    p_rep.add_argument("workdir", type=Path, nargs="?", default=Path("."))
    p_cmp.add_argument("workdir", type=Path)
    p_cmp.add_argument("overlays", type=Path, nargs="+")
    args = parser.parse_args()
    if args.mode == "report":
        report(args.workdir)
    elif args.mode == "epochs":
        epochs(args.overlays, args.n_hc, args.epochs)
    elif args.mode == "units":
        units(args.overlays, args.subjects)
    elif args.mode == "run":
        run(args.workdir, args.target, args.cores, args.overlay, args.snakemake_args)
        report(args.workdir)
    else:
        dirs = [args.workdir / overlay.stem for overlay in args.overlays]
        for overlay, workdir in zip(args.overlays, dirs):
            run(workdir, args.target, args.cores, overlay.resolve(), args.snakemake_args)
        for workdir in dirs:
            report(workdir)


if __name__ == "__main__":
    main()
