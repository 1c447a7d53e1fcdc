"""The study's networks at their real size: every network of ``config/paper.yaml`` built at full
width on its grid (1 mm: 193 x 229 x 193; RNC-lowRez: 2 mm), on simulated heads, on this CPU.

    python benchmarks/bench_study_models.py [--config config/paper.yaml] [--memory-gb 24] [--budget-gb 24]
        [--threads 2] [--steps 2] [--rnc-subjects 2] [--rnc-steps 1] [--study-batches] [--only resnet18@1]
        [--workdir /tmp/bench_study_models]

Two parts.

1. Counted, not run (``torch.device("meta")``: shapes only, no memory, seconds): for every
   distinct network (backbone, grid) its parameters, the FLOPs of one sample's forward and
   backward pass (``torch.utils.flop_counter``: convolutions and matmuls) and the bytes autograd
   saves for the backward pass of one sample (an upper bound: a tensor saved by two layers is
   counted twice).
2. Run, each network in a fresh process whose address space is capped at ``--memory-gb`` (so
   "does not fit" is an allocation failure, not a guess), through the library's own pieces
   (``build_age_model``, ``contrastive_step``, ``RnCLoss``, ``make_optimiser``, ``Checkpoint``,
   ``grad_ram``) on simulated heads (the simulator's subjects rendered on the 1 mm template grid,
   ``brainage.data.simulate.cohort.render_template_subject``; 2 mm by ``downsample_from_1mm``),
   in this order (the resident peak ``ru_maxrss`` only grows, so each phase's peak is its own):
   a prediction (eval, no graph), a Grad-RAM map, for RNC models the linear head (features of
   the frozen encoder, then the study's head optimiser on them), ``--steps`` optimisation steps
   (end-to-end: batch 1, the study's optimiser; RNC: ``--rnc-steps`` steps of ``--rnc-subjects``
   subjects = 2x views through the gradient cache, one view per chunk), then a checkpoint written and resumed into a
   fresh model and optimiser (weights and optimiser state compared tensor for tensor).

An RNC model on a grid finer than ``--rnc-grid`` (1 mm: an hour per step on 2 cores) is not run
but derived from its network's end-to-end step: each view costs one forward without a graph and
one forward + backward of a one-view chunk, whose peak is that step's.

From the RNC step the batch size the gradient cache reaches in ``--budget-gb`` is derived: the
chunk's graph stays one view whatever the batch, and each subject adds its two views three
times (the loader's batch, its augmented copy, the concatenated views).
``--study-batches`` runs the study's own batch sizes instead (RNC 24 and 48, end-to-end 4 and 8;
hours on a CPU, minutes on a GPU).

The GPU-hour projection is a projection: counted FLOPs per epoch (training passes, the per-epoch
BatchNorm re-estimate and validation of the end-to-end kind, the RNC head's features) x the
study's epochs (300 with early stopping counted in full; 1000) x 1,618 subjects split 80/10/10,
divided by a named GPU's dense bf16 tensor throughput (NVIDIA A100 SXM: 312 TFLOP/s; H100 SXM:
989) at the stated fraction of it sustained (``--utilisation``, 0.3 by default: 3D convolutions
with BatchNorm and a data loader rarely sustain more; an assumption, not a measurement here).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SUBJECTS = 1618  # the study's healthy cohort
SPLIT = {"train": 0.8, "val": 0.1, "test": 0.1}
GPUS = {"A100-SXM": 312e12, "H100-SXM": 989e12}  # dense bf16 tensor-core peak, FLOP/s (NVIDIA data sheets)


def study_networks(config: Path) -> dict[str, dict]:
    """``backbone@grid`` -> the paper.yaml entries built on it (name -> resolved settings)."""
    from brainage.models.spec import ModelSpec

    nets: dict[str, dict] = {}
    for name, entry in yaml.safe_load(config.read_text())["models"].items():
        spec = ModelSpec.resolve(name, entry)
        key = f"{spec['backbone']}@{spec['grid']:g}"
        nets.setdefault(key, {})[name] = {"settings": spec.settings, "kind": spec.kind.name}
    return nets


def grid_shape(grid: float) -> tuple[int, int, int]:
    from brainage.core.grids import template_grid

    return tuple(template_grid(float(grid)).shape)


# ---------------------------------------------------------------------------------------------
# Part 1: counted on the meta device


def count(settings: dict, shape: tuple[int, ...]) -> dict:
    """Parameters, forward/backward FLOPs and saved-for-backward bytes of one sample."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from brainage.models.networks import architecture_of, build_age_model

    with torch.device("meta"):
        model = build_age_model(architecture_of(settings)).train()
        x = torch.empty(1, 1, *shape)
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = model(x)
        forward = counter.get_total_flops()
        y.sum().backward()
        total = counter.get_total_flops()
    return {"params": sum(p.numel() for p in model.parameters()), "fwd_flops": forward,
            "bwd_flops": total - forward, "saved_bytes": saved[0]}


# ---------------------------------------------------------------------------------------------
# Part 2: run, one network per process


def simulated_heads(workdir: Path, n: int) -> Path:
    """``n`` simulated subjects (different ages) on the 1 mm template grid, normalised in the brain."""
    import numpy as np

    out = workdir / f"heads_1mm_{n}.npy"
    if out.exists():
        return out
    from brainage.data.simulate import SITES, SimulationModel, cached_anatomy, plan_subject
    from brainage.data.simulate.cohort import render_template_subject
    from brainage.preprocess.finish import normalise_in_brain

    model, anatomy = SimulationModel.from_params(), cached_anatomy(1.0)
    heads = []
    for i in range(n):
        row = plan_subject(f"sub-bench{i:02d}", "HC", next(iter(SITES.values())), 0, model, age=25.0 + 50.0 * i / max(1, n - 1))
        volume = render_template_subject(row, anatomy, model)
        heads.append(normalise_in_brain(volume, volume > 0.1))  # the head: the values do not change the cost
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npy")
    np.save(tmp, np.stack(heads).astype(np.float32))
    tmp.replace(out)
    return out


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def child(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from brainage.apply.explain.saliency import auto_target_layer, grad_ram
    from brainage.core.grids import downsample_from_1mm
    from brainage.models.networks import architecture_of, build_age_model

    limit = int(args.memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    job = json.loads(args.child)
    settings, kind, batch = job["settings"], job["kind"], job["batch"]
    heads = np.load(job["heads"], mmap_mode="r")
    grid = float(settings["grid"])
    need = max(batch, 2)
    vols = [downsample_from_1mm(np.asarray(heads[i % len(heads)]), grid) for i in range(need)]
    x_all = torch.from_numpy(np.stack(vols))[:, None]  # (n, 1, D, H, W)
    ages = torch.linspace(25.0, 75.0, need)
    model = build_age_model(architecture_of(settings), age_mean=50.0, age_sd=15.0)
    _emit({"phase": "built", "peak_gib": _peak_gib()})

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0

    model.eval()
    with torch.no_grad():
        pred, sec = timed(lambda: model(x_all[:1]))
    _emit({"phase": "predict", "s_per_sample": sec, "peak_gib": _peak_gib(), "finite": bool(torch.isfinite(pred).all())})

    layer = "layer4" if settings["backbone"].startswith("resnet") else auto_target_layer(model, x_all.shape[2:])
    cam, sec = timed(lambda: grad_ram(model, x_all[:1], layer))
    _emit({"phase": "gradram", "s_per_sample": sec, "peak_gib": _peak_gib(), "layer": layer,
           "in_unit_range": bool(float(cam.min()) >= 0.0 and float(cam.max()) <= 1.0)})

    if kind == "rnc":
        linear_head(model, x_all, ages, settings["head"], timed)
    train_and_resume(model, kind, settings, x_all, ages, batch, job, args, timed)


def linear_head(model, x_all, ages, head_cfg: dict, timed) -> None:
    """The RNC model's linear head: features of the frozen encoder once, then the study's head
    optimiser on them."""
    import torch

    need = len(x_all)
    with torch.no_grad():
        feats, sec = timed(lambda: torch.cat([model.features(x_all[i:i + 1]) for i in range(need)]))
    head = torch.nn.Linear(feats.shape[1], 1)
    hopt = torch.optim.SGD(head.parameters(), lr=head_cfg["lr"], momentum=head_cfg["momentum"])
    z = (ages - 50.0) / 15.0
    for _ in range(int(head_cfg["epochs"])):
        hopt.zero_grad()
        torch.nn.functional.l1_loss(head((feats - feats.mean(0)) / (feats.std(0) + 1e-6)).squeeze(-1), z).backward()
        hopt.step()
    _emit({"phase": "head", "s_per_sample": sec / need, "peak_gib": _peak_gib(), "epochs": int(head_cfg["epochs"])})


def train_and_resume(model, kind: str, settings: dict, x_all, ages, batch: int, job: dict, args, timed) -> None:
    """``args.steps`` optimisation steps, then a checkpoint resumed into a fresh model and optimiser."""
    import numpy as np
    import torch

    from brainage.models.networks import architecture_of, build_age_model
    from brainage.train.checkpoint import Checkpoint
    from brainage.train.gradcache import contrastive_step
    from brainage.train.losses import RnCLoss
    from brainage.train.run import make_optimiser, make_scheduler, new_state

    model.train()
    trained = model.encoder if kind == "rnc" else model
    rnc_loss = RnCLoss(temperature=float(settings["rnc"]["temperature"]))

    def step(net, opt) -> float:
        opt.zero_grad(set_to_none=True)
        x, y = x_all[:batch], ages[:batch]
        if kind == "rnc":  # two views per subject (identical here: the step's cost does not depend on them)
            views = torch.cat([x, x.clone()])
            loss = contrastive_step(net, views, y.repeat(2), rnc_loss, chunk_size=job["chunk"])
        else:
            loss = torch.nn.functional.l1_loss(model(x), y)
            (loss / 15.0).backward()
        opt.step()
        return float(loss)

    opt = make_optimiser(trained.parameters(), settings["optimiser"])
    sched = make_scheduler(opt, settings["optimiser"], int(settings["epochs"]))
    times, losses = [], []
    try:
        for _ in range(args.steps):
            loss, sec = timed(lambda: step(trained, opt))
            times.append(sec)
            losses.append(loss)
    except RuntimeError as exc:  # the address-space cap: an allocation that does not fit
        asked = re.search(r"allocate (\d+) bytes", str(exc))
        error = (f"an allocation of {int(asked.group(1)) / 2**20:.0f} MiB refused at the {args.memory_gb:g} GiB cap "
                 f"after {_peak_gib():.1f} GiB resident") if asked else str(exc).splitlines()[0][:160]
        _emit({"phase": "train", "error": error, "peak_gib": _peak_gib(), "batch": batch})
        return
    steady = times[1:] or times
    _emit({"phase": "train", "s_per_sample": sum(steady) / len(steady) / batch, "first_step_s": times[0],
           "peak_gib": _peak_gib(), "batch": batch, "chunk": job["chunk"], "losses": losses,
           "finite": all(map(np.isfinite, losses))})

    # checkpoint, resume into a fresh model and optimiser, one more step from each: equal
    ckpt = Checkpoint(Path(job["workdir"]) / f"checkpoint_{job['key']}.pt", "bench")
    state = new_state()
    (_, save_s) = timed(lambda: ckpt.save(trained, state, opt, sched))
    size = ckpt.path.stat().st_size
    torch.manual_seed(1)
    fresh = build_age_model(architecture_of(settings), age_mean=50.0, age_sd=15.0).train()
    fresh_trained = fresh.encoder if kind == "rnc" else fresh
    fresh_opt = make_optimiser(fresh_trained.parameters(), settings["optimiser"])
    fresh_sched = make_scheduler(fresh_opt, settings["optimiser"], int(settings["epochs"]))

    def resume():
        saved = ckpt.load(job["key"])
        fresh_trained.load_state_dict(saved["model"])
        fresh_opt.load_state_dict(saved["optimiser"])
        fresh_sched.load_state_dict(saved["scheduler"])

    (_, load_s) = timed(resume)
    same = all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), fresh_trained.state_dict().values()))
    for a, b in zip(opt.state_dict()["state"].values(), fresh_opt.state_dict()["state"].values()):
        same = same and all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
    ckpt.remove()
    _emit({"phase": "checkpoint", "save_s": save_s, "resume_s": load_s, "mib": size / 2**20, "restored_equal": same,
           "peak_gib": _peak_gib()})


def measure(job: dict, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(job), "--memory-gb", str(args.memory_gb),
           "--threads", str(args.threads), "--steps", str(args.rnc_steps if job["kind"] == "rnc" else args.steps)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    phases = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            phases[record.pop("phase")] = record
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        phases["died"] = {"rc": proc.returncode, "message": tail[:200]}
    return phases


def derived_rnc(e2e: dict, subjects: int) -> dict:
    """The gradient-cached RNC step of a network from its measured end-to-end step (batch 1): each
    of the 2 x subjects views is one forward without a graph (the prediction's time) and one
    forward + backward of a chunk of one view (the end-to-end step's time and peak)."""
    out = {k: e2e[k] for k in ("predict", "gradram") if k in e2e}
    train = e2e.get("train", {})
    if "s_per_sample" in train:
        out["train"] = {"s_per_sample": 2 * (e2e["predict"]["s_per_sample"] + train["s_per_sample"]),
                        "peak_gib": train["peak_gib"], "batch": subjects, "chunk": 1, "derived": True,
                        "views_included": False}
    elif train:
        out["train"] = dict(train)
    out["head"] = dict(e2e["predict"])  # the head's features: one forward without a graph per subject
    return out


# ---------------------------------------------------------------------------------------------
# the projection


def epoch_flops(settings: dict, kind: str, c: dict) -> float:
    """FLOPs of one epoch of the study's training on 1,618 subjects (80/10/10)."""
    n_train, n_val = SUBJECTS * SPLIT["train"], SUBJECTS * SPLIT["val"]
    fwd, bwd = c["fwd_flops"], c["bwd_flops"]
    if kind == "rnc":
        chunked = settings["rnc"]["chunk_size"] is not None
        return n_train * 2 * ((fwd if chunked else 0.0) + fwd + bwd)  # two views; gradcache re-runs forward
    # end-to-end: the step, the BatchNorm re-estimate (<= 512 training volumes) and validation
    return n_train * (fwd + bwd) + min(n_train, 512) * fwd + n_val * fwd


def run_flops(settings: dict, kind: str, c: dict) -> float:
    total = epoch_flops(settings, kind, c) * int(settings["epochs"])
    if kind == "rnc":  # the head: BatchNorm re-estimate + features of train and val, once
        total += (min(SUBJECTS * SPLIT["train"], 512) + SUBJECTS * (SPLIT["train"] + SPLIT["val"])) * c["fwd_flops"]
    return total


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "config" / "paper.yaml")
    parser.add_argument("--memory-gb", type=float, default=24.0, help="address-space cap of each network's process")
    parser.add_argument("--budget-gb", type=float, default=24.0, help="memory the batch-size reach is derived for")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rnc-subjects", type=int, default=2)
    parser.add_argument("--rnc-steps", type=int, default=1, help="RNC steps (each 2 x subjects views, 4 passes)")
    parser.add_argument("--study-batches", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated backbone@grid keys, e.g. resnet18@1")
    parser.add_argument("--rnc-grid", type=float, default=2.0,
                        help="RNC steps run on grids this coarse or coarser; finer ones are derived from the "
                             "network's end-to-end step (4 passes of every view: an hour per step on 2 cores at 1 mm)")
    parser.add_argument("--reuse", action="store_true", help="reuse the measurements kept in --workdir")
    parser.add_argument("--utilisation", type=float, default=0.3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_study_models"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    nets = study_networks(args.config)
    only = [k for k in args.only.split(",") if k]
    print(f"# {args.config.name}: {sum(len(v) for v in nets.values())} models on {len(nets)} networks; CPU "
          f"{args.threads} threads, fp32, address space capped at {args.memory_gb:g} GB per network")
    print("\n## counted on the meta device (one sample)")
    print(f"{'network':<14}{'grid':>16}{'params':>10}{'fwd TFLOP':>11}{'bwd TFLOP':>11}{'saved GiB':>11}  models")
    counts = {}
    for key, models in nets.items():
        settings = next(iter(models.values()))["settings"]
        shape = grid_shape(settings["grid"])
        c = counts[key] = count(settings, shape)
        print(f"{key:<14}{'x'.join(map(str, shape)):>16}{c['params'] / 1e6:>9.1f}M{c['fwd_flops'] / 1e12:>11.3f}"
              f"{c['bwd_flops'] / 1e12:>11.3f}{c['saved_bytes'] / 2**30:>11.1f}  {', '.join(models)}")

    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n_heads = 48 if args.study_batches else max(2, 2 * args.rnc_subjects)
    heads = simulated_heads(args.workdir, min(n_heads, 8))
    print(f"\n# {min(n_heads, 8)} simulated heads on the 1 mm grid in {time.perf_counter() - t0:.0f} s")

    print("\n## run on this CPU, library code, one process per network and kind "
          "(s/sample; peak = resident GiB of the process at the end of the phase)")
    print(f"{'network':<14}{'kind':<5}{'batch':>6}{'chunk':>6}  {'predict':>15}  {'Grad-RAM':>15}  {'head feats':>15}"
          f"  {'train step':>15}  checkpoint + resume")
    measured = {}
    for key, models in nets.items():
        if only and key not in only:
            continue
        kinds = sorted({m["kind"] for m in models.values()})  # "e2e" before "rnc"
        for kind in kinds:
            settings = next(m["settings"] for m in models.values() if m["kind"] == kind)
            if args.study_batches:
                batch = max(int(m["settings"]["batch_size"]) for m in models.values() if m["kind"] == kind)
            else:
                batch = args.rnc_subjects if kind == "rnc" else 1
            if kind == "rnc" and "e2e" in kinds and not args.study_batches and float(settings["grid"]) < args.rnc_grid:
                measured[(key, kind)] = derived_rnc(measured[(key, "e2e")], batch)
                print(row(key, kind, batch, 1, measured[(key, kind)]) + "  [derived from the e2e row: see below]")
                continue
            job = {"settings": settings, "kind": kind, "batch": batch, "chunk": 1 if kind == "rnc" else None,
                   "heads": str(heads), "workdir": str(args.workdir), "key": f"{key}_{kind}"}
            cache = args.workdir / f"measured_{key}_{kind}_b{batch}_s{args.steps if kind != 'rnc' else args.rnc_steps}.json"
            t1 = time.perf_counter()
            if args.reuse and cache.exists():
                r = json.loads(cache.read_text())
            else:
                r = measure(job, args)
                cache.write_text(json.dumps(r))
            measured[(key, kind)] = r
            print(row(key, kind, batch, job["chunk"], r) + f"  [{time.perf_counter() - t1:.0f} s]", flush=True)

    print(f"\n## what fits {args.budget_gb:g} GB (fp32, CPU), from the runs above")
    for (key, kind), r in measured.items():
        print(fits_line(key, kind, r, nets[key], counts[key], args.budget_gb))

    print(f"\n## projection (not a measurement): GPU hours of the study's training, {SUBJECTS} subjects 80/10/10, "
          f"counted FLOPs / (peak dense bf16 x {args.utilisation:g} sustained)")
    print(f"{'model':<22}{'network':<14}{'epochs':>7}{'PFLOP/epoch':>13}{'EFLOP run':>11}"
          + "".join(f"{g + ' h':>13}" for g in GPUS))
    totals = dict.fromkeys(GPUS, 0.0)
    for key, models in nets.items():
        for name, m in models.items():
            total = run_flops(m["settings"], m["kind"], counts[key])
            hours = {g: total / (peak * args.utilisation) / 3600 for g, peak in GPUS.items()}
            for g in GPUS:
                totals[g] += hours[g]
            print(f"{name:<22}{key:<14}{int(m['settings']['epochs']):>7}"
                  f"{epoch_flops(m['settings'], m['kind'], counts[key]) / 1e15:>13.1f}{total / 1e18:>11.2f}"
                  + "".join(f"{hours[g]:>13.0f}" for g in GPUS))
    print(f"{'all ' + str(sum(len(v) for v in nets.values())) + ' models':<36}{'':>7}{'':>13}{'':>11}"
          + "".join(f"{totals[g]:>13.0f}" for g in GPUS))
    cpu = [(counts[k]["fwd_flops"] + counts[k]["bwd_flops"]) / r["train"]["s_per_sample"]
           for (k, kind), r in measured.items() if kind != "rnc" and "s_per_sample" in r.get("train", {})]
    if cpu:
        print(f"# this CPU sustained {min(cpu) / 1e9:.0f}-{max(cpu) / 1e9:.0f} GFLOP/s in the end-to-end steps above")


def _cell(r: dict | None) -> str:
    if not r:
        return f"{'-':>15}"
    if "error" in r:
        return f"{'no fit':>15}"
    return f"{r['s_per_sample']:6.1f}s {r['peak_gib']:5.1f}G"


def row(key: str, kind: str, batch: int, chunk, r: dict) -> str:
    ck = r.get("checkpoint")
    ck_text = (f"{ck['mib']:.0f} MiB, save {ck['save_s']:.1f}s, resume {ck['resume_s']:.1f}s, "
               f"restored equal: {ck['restored_equal']}") if ck else "-"
    died = f"  DIED: {r['died']['message']}" if "died" in r else ""
    err = f"  train: {r['train']['error']}" if "error" in r.get("train", {}) else ""
    return (f"{key:<14}{kind:<5}{batch:>6}{chunk or '-':>6}  {_cell(r.get('predict'))}  {_cell(r.get('gradram'))}  "
            f"{_cell(r.get('head'))}  {_cell(r.get('train'))}  {ck_text}{err}{died}")


def fits_line(key: str, kind: str, r: dict, models: dict, c: dict, budget_gb: float) -> str:
    train = r.get("train", {})
    wanted = sorted({int(m["settings"]["batch_size"]) for m in models.values() if m["kind"] == kind})
    if "s_per_sample" not in train:
        why = train.get("error") or r.get("died", {}).get("message", "not run")
        return (f"{key} {kind}: one sample's training step does not fit this machine ({why}; this machine's "
                f"{_ram_gib():.1f} GiB cannot test {budget_gb:g} GB); autograd saves up to {c['saved_bytes'] / 2**30:.0f} GiB per "
                f"sample by count; the study's batches {wanted} need a GPU (bf16 autocast about halves activations)")
    view_gib = 3 * 4 * math.prod(grid_dims(key)) / 2**30  # fp32, three copies of each view
    if kind == "rnc":
        derived = train.get("views_included") is False  # the e2e step's peak: one view's graph, no batch of views
        fixed = train["peak_gib"] - (0.0 if derived else 2 * train["batch"] * view_gib)
        reach = int((budget_gb - fixed) // (2 * view_gib))
        source = "derived from the e2e step: one view's graph" if derived else f"measured at {train['batch']} subjects"
        return (f"{key} rnc: gradient cache (chunk 1 view) peak {train['peak_gib']:.1f} GiB ({source}); "
                f"{fixed:.1f} GiB do not grow with the batch, each subject adds {2 * view_gib:.2f}: batch <= {reach} "
                f"subjects fits {budget_gb:g} GB; the study's batches {wanted}: "
                + ", ".join(f"{b} {'fits' if b <= reach else 'does not fit'}" for b in wanted))
    # model, inputs, the largest forward without the trunk's graph (prediction, Grad-RAM)
    base = max(r.get(k, {}).get("peak_gib", 0.0) for k in ("predict", "gradram"))
    per_sample = train["peak_gib"] - base if train["batch"] == 1 else None
    text = f"{key} e2e: batch {train['batch']} step peak {train['peak_gib']:.1f} GiB"
    if per_sample is not None and per_sample > 0:
        reach = int((budget_gb - base) // per_sample)
        text += (f"; about {per_sample:.1f} GiB more per sample in the batch: batch <= {reach} fits; the study's "
                 + ", ".join(f"{b} {'fits' if b <= reach else 'does not fit'}" for b in wanted)
                 + " (the end-to-end kind has no gradient cache: its batch is one graph)")
    return text


def _ram_gib() -> float:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def grid_dims(key: str) -> tuple[int, int, int]:
    return grid_shape(float(key.split("@")[1]))


if __name__ == "__main__":
    main()
