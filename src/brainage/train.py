"""The training engine: end-to-end L1 models and Rank-N-Contrast encoders with a linear head.

One model = one entry under ``models:`` in the config (see :func:`resolve_spec` for the keys and
their defaults). Two kinds:

- ``loss: l1`` (end-to-end): encoder + linear head trained together on the L1 loss of the
  standardised age, Adam (lr 1e-3), validation MAE every epoch, early stopping after
  ``patience`` epochs without improvement, the best-validation weights kept.
- ``loss: rnc``: the encoder trained with ``RnCLoss`` on two augmented views per subject, SGD
  (lr 0.5, momentum 0.9, weight decay 1e-4) with step decay: the lr is multiplied by ``gamma``
  (0.1) at the fractions ``milestones`` (0.7, 0.8, 0.9) of the epochs, as in the Rank-N-Contrast
  reference code (decay rate 0.1 at epochs 700/800/900 of 1000). Batches larger than memory are
  split by gradient caching (``rnc.chunk_size``, brainage.gradcache). Then the linear head:
  encoder frozen (eval mode), one linear layer on its features, L1, SGD lr 0.05 momentum 0.9,
  decay 0.2 at 0.6/0.75/0.9 of ``head.epochs``, best-validation head kept (``head.select:
  best_val``) or the converged last one (``last``: with a handful of validation subjects the
  best-validation epoch is mostly noise). Features of the
  frozen encoder are computed once, without augmentation; they are standardised with the
  training-set statistics and scaled by 1/sqrt(F) while the head trains (conditioning), and
  that affine map is folded into the head's weights at the end, so the head stays one linear
  layer on raw features.

BatchNorm: before every evaluation (and before the head's features) the running statistics are
re-estimated on the un-augmented training volumes (:func:`recompute_batchnorm_stats`); with
small 3D batches the exponential averages otherwise lag the weights badly.

Exact resume: a checkpoint (atomic write) after every epoch (and every
``training.checkpoint_every_steps`` steps, and on SIGTERM, e.g. SLURM preemption) holds the
model, optimiser, scheduler, RNG states, the phase/epoch/step position in the loader, and the
early-stopping state. The epoch's sample order and every augmentation draw are derived from
(seed, phase, epoch, subject, view) rather than from a stateful stream, so a resumed run reads
the same batches with the same augmentations as an uninterrupted one and ends with identical
weights (tested on CPU). A checkpoint whose config fingerprint (model entry, training section,
seed, split membership, grid, process count) differs is ignored; an edit of the code alone
resumes the checkpoint (Snakemake reruns the job, which continues where it stopped).

GPU: bf16 autocast, channels-last 3D tensors, pinned memory and non-blocking copies,
augmentation on the device, optional ``torch.compile``; losses are accumulated on the device
(no host sync per step). Under ``torchrun`` the model is wrapped in DistributedDataParallel,
each process takes its slice of every global batch, and the RNC loss is computed on the
gathered global batch (brainage.distributed.global_rnc_loss).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import math
import pickle
import platform
import random
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from brainage.augment import AugmentConfig, augment_volume, sample_params
from brainage.cache import INTENSITY_NORMALISATION, CachedVolumes
from brainage.io import InputError, atomic_path, json_text, save_figure, write_json, write_tsv
from brainage.networks import AgeModel, architecture_of, build_age_model
from brainage.splits import split_hash

log = logging.getLogger("brainage.train")

__all__ = ["resolve_spec", "train_model", "load_model", "launch_torchrun", "TrainingInterrupted"]

_DEFAULT_OPTIMISER = {
    "l1": {"name": "adam", "lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0, "milestones": [], "gamma": 0.1},
    "rnc": {"name": "sgd", "lr": 0.5, "momentum": 0.9, "weight_decay": 1e-4, "milestones": [0.7, 0.8, 0.9], "gamma": 0.1},
}
_DEFAULT_HEAD = {
    "epochs": 100, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0,
    "milestones": [0.6, 0.75, 0.9], "gamma": 0.2, "batch_size": 32, "select": "best_val",
}


class TrainingInterrupted(RuntimeError):
    """The run stopped early (max_epochs_this_run or SIGTERM) after writing its checkpoint."""


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


def resolve_spec(entry: dict) -> dict:
    """A model's config entry with every default filled in (the study's settings).

    Keys: backbone (resnet18|resnet50|resnet101|sfcn), grid (mm), loss (l1|rnc), batch_size,
    epochs, augment (true: ``training.augment``; false; or a dict overriding keys of
    ``training.augment`` for this model), patience (epochs without val improvement; null = never stop early),
    width, conv1_stride, norm (batch|group|instance), optimiser {name adam|sgd, lr, momentum,
    weight_decay, milestones (fractions of epochs), gamma}, rnc {temperature, chunk_size},
    head {epochs, lr, momentum, weight_decay, milestones, gamma, batch_size, patience,
    select (best_val|last)}, gpus.
    """
    spec = copy.deepcopy(dict(entry))
    loss = spec.setdefault("loss", "l1")
    if loss not in ("l1", "rnc"):
        raise ValueError(f"model loss must be l1 or rnc, got {loss!r}")
    for key in ("backbone", "grid", "batch_size", "epochs"):
        if key not in spec:
            raise ValueError(f"model config needs {key!r}")
    spec.setdefault("augment", True)
    spec.setdefault("patience", None)
    spec.setdefault("width", 1.0)
    spec.setdefault("conv1_stride", 1)
    spec.setdefault("norm", "batch")
    spec.setdefault("gpus", 0)
    spec["optimiser"] = {**_DEFAULT_OPTIMISER[loss], **(spec.get("optimiser") or {})}
    spec["rnc"] = {"temperature": 2.0, "chunk_size": None, **(spec.get("rnc") or {})}
    spec["head"] = {**_DEFAULT_HEAD, "patience": None, **(spec.get("head") or {})}
    return spec


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


class _Volumes(torch.utils.data.Dataset):
    """Keys (epoch, i) -> (views (V, 1, D, H, W) or raw (1, 1, D, H, W), age, augmentation draws).

    Augmentation parameters are drawn from a generator seeded by (seed, phase, epoch, i, view),
    never from a shared stream. ``augment_here`` applies them in the worker (CPU training);
    otherwise the raw volume and the draws go to the training loop, which augments on the GPU.
    """

    def __init__(self, cache: CachedVolumes, rows, ages, aug: AugmentConfig | None, views: int,
                 seed: int, phase: int, augment_here: bool) -> None:
        self.cache, self.rows, self.ages = cache, np.asarray(rows), np.asarray(ages, dtype=np.float32)
        self.aug, self.views, self.seed, self.phase, self.augment_here = aug, views, seed, phase, augment_here

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        x = torch.from_numpy(self.cache.row(int(self.rows[i])))[None]
        params = None
        if self.aug is not None:
            shape = tuple(x.shape[1:])
            params = [
                sample_params(self.aug, shape, np.random.default_rng([self.seed, self.phase, epoch, i, v]))
                for v in range(self.views)
            ]
        if params is not None and self.augment_here:
            out = torch.stack([augment_volume(x, p, self.aug) for p in params])
            params = None
        else:
            out = x[None].expand(self.views if params is None else 1, *x.shape)
        return out, torch.tensor(self.ages[i]), params


def _collate(items):
    xs, ys, ps = zip(*items)
    return torch.stack(xs), torch.stack(ys), list(ps)


def _epoch_batches(n: int, batch_size: int, seed: int, phase: int, epoch: int, rank: int, world: int):
    """This process's batches of keys (epoch, i) for one epoch (drop_last; global order seeded)."""
    order = np.random.default_rng([seed, phase, epoch, 7]).permutation(n)
    local = batch_size // world
    batches = []
    for b in range(n // batch_size):
        chunk = order[b * batch_size : (b + 1) * batch_size][rank * local : (rank + 1) * local]
        batches.append([(epoch, int(i)) for i in chunk])
    return batches


def _loader(dataset, batches, workers: int, pin: bool):
    # A private generator: creating the iterator must not draw from the global torch RNG, whose
    # state is checkpointed (dropout), or a mid-epoch resume would shift it by one draw.
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate, pin_memory=pin,
        persistent_workers=False, prefetch_factor=2 if workers else None, generator=torch.Generator().manual_seed(0),
    )


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def _rng_state() -> dict:
    """Every generator's state in types ``torch.load(weights_only=True)`` reads (tensors, lists)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save(obj: Any, path: Path) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


class _Stop:
    """Set by SIGTERM (SLURM preemption): the loop checkpoints at the next step and exits."""

    requested = False

    @classmethod
    @contextlib.contextmanager
    def on_sigterm(cls):
        cls.requested = False
        try:
            previous = signal.signal(signal.SIGTERM, lambda *_: setattr(cls, "requested", True))
        except ValueError:  # not the main thread
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------


def _optimiser(params, cfg: dict) -> torch.optim.Optimizer:
    if cfg["name"] == "adam":
        return torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0))
    if cfg["name"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg.get("momentum", 0.0), weight_decay=cfg.get("weight_decay", 0.0))
    raise ValueError(f"optimiser name must be adam or sgd, got {cfg['name']!r}")


def _scheduler(opt, cfg: dict, epochs: int):
    # a list, not a set: with few epochs two fractions can round to the same epoch, and
    # MultiStepLR then applies gamma twice there (the total decay stays gamma ** len(milestones))
    milestones = sorted(max(1, int(round(f * epochs))) for f in cfg.get("milestones") or [])
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=cfg.get("gamma", 0.1))


@torch.no_grad()
def _predict(model: nn.Module, cache: CachedVolumes, rows, device, batch_size: int, channels_last: bool, amp) -> np.ndarray:
    """Ages (years) predicted for cache ``rows`` without augmentation, in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        x = torch.stack([torch.from_numpy(cache.row(int(r)))[None] for r in rows[start : start + batch_size]])
        x = _to_device(x, device, channels_last)
        with _autocast(device, amp):
            out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


@torch.no_grad()
def recompute_batchnorm_stats(model: nn.Module, cache: CachedVolumes, rows, device, batch_size: int, channels_last: bool, amp) -> None:
    """Re-estimate BatchNorm running statistics on un-augmented training volumes ("precise BN").

    With small 3D batches and few steps per epoch, the exponential running averages lag far
    behind the weights, and eval-mode predictions can be off by decades of years while the
    training loss is low. Before every evaluation the statistics are recomputed as exact
    averages over (up to 512 of) the training volumes, with every other layer in eval mode (no
    dropout draw, so the torch RNG stream and exact resume are unaffected). Wu & Johnson 2021,
    "Rethinking 'Batch' in BatchNorm".
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    was_training = model.training
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    rows = rows[:512]
    for start in range(0, len(rows), batch_size):
        x = torch.stack([torch.from_numpy(cache.row(int(r)))[None] for r in rows[start : start + batch_size]])
        if len(x) < 2:
            break
        with _autocast(device, amp):
            model(_to_device(x, device, channels_last))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


@torch.no_grad()
def _features(encoder: nn.Module, cache: CachedVolumes, rows, device, batch_size: int, channels_last: bool, amp) -> torch.Tensor:
    encoder.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        x = torch.stack([torch.from_numpy(cache.row(int(r)))[None] for r in rows[start : start + batch_size]])
        with _autocast(device, amp):
            out.append(encoder(_to_device(x, device, channels_last)).float().cpu())
    return torch.cat(out)


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def _autocast(device: torch.device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def train_model(
    name: str,
    entry: dict,
    training: dict,
    splits: pd.DataFrame,
    volumes: str | Path,
    index: str | Path,
    out_dir: str | Path,
    seed: int,
    preprocess: dict | None = None,
    max_epochs_this_run: int | None = None,
    progress: bool = True,
) -> dict:
    """Train model ``name`` (config ``entry``) on the cached grid; write model.pt and friends.

    ``splits``: the splits table (participant_id, age, split); ``volumes``/``index``: the cache
    of the model's grid; ``out_dir``: results/models/<name>. Resumes from
    ``out_dir/checkpoint.pt`` when it matches this config. ``max_epochs_this_run`` stops (with a
    checkpoint, raising :class:`TrainingInterrupted`) after that many epochs in this process.
    Returns the metrics written to the model card.
    """
    from brainage.distributed import init_distributed, is_main_process

    spec = resolve_spec(entry)
    out_dir = Path(out_dir)
    rank, world, device = init_distributed()
    main = is_main_process()
    cuda = device.type == "cuda"
    amp = torch.bfloat16 if (cuda and training.get("amp", True)) else None
    channels_last = bool(cuda and training.get("channels_last", True))
    workers = int(training.get("num_workers", 0))
    every_steps = int(training.get("checkpoint_every_steps", 0) or 0)
    # ``augment``: true (training.augment), false, or a dict overriding training.augment for this model
    augmented = spec["augment"] is not False and spec["augment"] is not None
    overrides = spec["augment"] if isinstance(spec["augment"], dict) else {}
    aug_cfg = AugmentConfig.from_dict({**(training.get("augment") or {}), **overrides}) if augmented or spec["loss"] == "rnc" else None

    cache = CachedVolumes(volumes, index)
    splits = splits.set_index("participant_id", drop=False)
    sets = {s: splits.index[splits["split"] == s].tolist() for s in ("train", "val", "test")}
    if len(sets["train"]) < 2 or not sets["val"]:
        raise ValueError(f"{name}: need >= 2 training and >= 1 validation subjects, got {len(sets['train'])}/{len(sets['val'])}")
    rows = {s: np.array([cache.row_of(p) for p in ids], dtype=np.int64) for s, ids in sets.items()}
    ages = {s: splits.loc[ids, "age"].to_numpy(np.float32) for s, ids in sets.items()}
    age_mean, age_sd = float(ages["train"].mean()), float(ages["train"].std() or 1.0)
    batch_size = min(int(spec["batch_size"]), len(rows["train"]))
    if batch_size % world:
        raise ValueError(f"{name}: batch_size {batch_size} is not divisible by the {world} processes")

    fingerprint = _fingerprint(spec, training, seed, {s: split_hash(v) for s, v in sets.items()}, list(cache.shape), world)
    torch.manual_seed(seed)
    model = build_age_model(architecture_of(spec), age_mean, age_sd).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    kind = "rnc" if spec["loss"] == "rnc" else "e2e"
    main_epochs = int(spec["epochs"])
    trainable = model.encoder if kind == "rnc" else model
    opt = _optimiser(trainable.parameters(), spec["optimiser"])
    sched = _scheduler(opt, spec["optimiser"], main_epochs)

    state: dict[str, Any] = {
        "phase": "main", "epoch": 0, "step": 0, "loss_sum": 0.0, "loss_n": 0, "best_val": math.inf,
        "best_state": None, "best_epoch": -1, "bad_epochs": 0, "log": [], "elapsed": 0.0,
    }
    ckpt_path = out_dir / "checkpoint.pt"
    head_opt = head_sched = None
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # tensors and plain values only
        if ckpt.get("fingerprint") == fingerprint:
            model.load_state_dict(ckpt["model"])
            state = ckpt["state"]
            if state["phase"] == "main":
                opt.load_state_dict(ckpt["optimiser"])
                sched.load_state_dict(ckpt["scheduler"])
            _set_rng_state(ckpt["rng"])
            log.info("%s: resumed from %s at phase %s epoch %d step %d", name, ckpt_path, state["phase"], state["epoch"], state["step"])
            head_ckpt = ckpt if state["phase"] == "head" else None
        else:
            log.info("%s: ignoring %s (written for another config)", name, ckpt_path)
            head_ckpt = None
    else:
        head_ckpt = None

    def checkpoint(extra_opt=None, extra_sched=None) -> None:
        if not main:
            return
        o, s = (opt, sched) if state["phase"] == "main" else (extra_opt, extra_sched)
        _save(
            {"fingerprint": fingerprint, "model": _unwrap(model).state_dict(), "state": state,
             "optimiser": o.state_dict() if o is not None else None,
             "scheduler": s.state_dict() if s is not None else None, "rng": _rng_state()},
            ckpt_path,
        )

    epochs_this_run = 0
    started = time.time()
    compiled = model
    if training.get("compile", False) and cuda:
        compiled = torch.compile(model)
    net = compiled
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(compiled.encoder if kind == "rnc" else compiled, device_ids=[device.index] if cuda else None)
    elif kind == "rnc":
        net = compiled.encoder

    with _Stop.on_sigterm():
        # ---------------- phase 1: end-to-end L1, or the RNC encoder ----------------
        if state["phase"] == "main":
            views = 2 if kind == "rnc" else 1
            dataset = _Volumes(cache, rows["train"], ages["train"], aug_cfg, views, seed, 1, augment_here=not cuda)
            if kind == "rnc":
                from brainage.distributed import global_rnc_loss
                from brainage.gradcache import contrastive_step
                from brainage.losses import RnCLoss

                rnc = RnCLoss(temperature=float(spec["rnc"]["temperature"]))
                loss_fn = functools.partial(global_rnc_loss, rnc) if world > 1 else rnc
            bar = _progress(range(state["epoch"], main_epochs), progress and main, f"{name} {kind}")
            for epoch in bar:
                model.train()
                t0 = time.time()
                batches = _epoch_batches(len(rows["train"]), batch_size, seed, 1, epoch, rank, world)
                loss_sum = torch.tensor(state["loss_sum"], device=device)
                for step, (x, y, params) in enumerate(_loader(dataset, batches[state["step"]:], workers, cuda), start=state["step"]):
                    x = _to_device(x, device, False)
                    y = y.to(device, non_blocking=True)
                    if params[0] is not None:  # augment on the device
                        x = torch.stack([torch.stack([augment_volume(x[b, 0], p, aug_cfg) for p in ps]) for b, ps in enumerate(params)])
                    opt.zero_grad(set_to_none=True)
                    if kind == "rnc":
                        v = torch.cat([x[:, k] for k in range(x.shape[1])])  # (2N, 1, D, H, W): all view-1s, then view-2s
                        if channels_last:
                            v = v.contiguous(memory_format=torch.channels_last_3d)
                        loss = contrastive_step(net, v, y.repeat(x.shape[1]), loss_fn, spec["rnc"]["chunk_size"], amp)
                    else:
                        xb = x[:, 0].contiguous(memory_format=torch.channels_last_3d) if channels_last else x[:, 0]
                        with _autocast(device, amp):
                            pred = net(xb)
                        loss = F.l1_loss(pred.float(), y)  # in years; same minimiser as L1 on z
                        (loss / age_sd).backward()  # gradient of the L1 of the standardised age
                    opt.step()
                    loss_sum += loss.detach()
                    state["step"] = step + 1
                    if _Stop.requested or (every_steps and state["step"] % every_steps == 0 and state["step"] < len(batches)):
                        state["loss_sum"], state["loss_n"] = float(loss_sum), state["step"]
                        checkpoint()
                        if _Stop.requested:
                            raise TrainingInterrupted(f"{name}: SIGTERM, checkpoint written at epoch {epoch} step {state['step']}")
                train_loss = float(loss_sum) / max(1, len(batches))
                if not math.isfinite(train_loss):
                    raise FloatingPointError(f"{name}: training loss is {train_loss} at epoch {epoch}; lower optimiser.lr")
                lr = opt.param_groups[0]["lr"]
                sched.step()
                val_mae = math.nan
                if kind == "e2e":
                    recompute_batchnorm_stats(_unwrap(model), cache, rows["train"], device, batch_size, channels_last, amp)
                    pred = _predict(model, cache, rows["val"], device, batch_size, channels_last, amp)
                    val_mae = float(np.abs(pred - ages["val"]).mean())
                    if val_mae < state["best_val"]:
                        state.update(best_val=val_mae, best_epoch=epoch, bad_epochs=0,
                                     best_state={k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()})
                    else:
                        state["bad_epochs"] += 1
                state["elapsed"] += time.time() - t0
                state["log"].append({"phase": "encoder" if kind == "rnc" else "e2e", "epoch": epoch + 1,
                                     "train_loss": train_loss, "val_mae": val_mae, "lr": lr, "seconds": time.time() - t0})
                log.info("%s epoch %d/%d: train %s %.4f, val MAE %.3f, lr %.3g, %.1fs", name, epoch + 1, main_epochs,
                         "RNC loss" if kind == "rnc" else "L1 (years)", train_loss, val_mae, lr, time.time() - t0)
                state.update(epoch=epoch + 1, step=0, loss_sum=0.0, loss_n=0)
                stop_early = kind == "e2e" and spec["patience"] is not None and state["bad_epochs"] >= int(spec["patience"])
                if stop_early or epoch + 1 == main_epochs:
                    if kind == "e2e":
                        _unwrap(model).load_state_dict(state["best_state"])
                        state["phase"] = "done"
                    else:
                        state["phase"] = "head"
                        state.update(epoch=0, best_val=math.inf, best_state=None, best_epoch=-1, bad_epochs=0)
                checkpoint()
                epochs_this_run += 1
                if stop_early:
                    log.info("%s: early stop at epoch %d (best val MAE %.3f at epoch %d)", name, epoch + 1, state["best_val"], state["best_epoch"] + 1)
                    break
                if max_epochs_this_run is not None and epochs_this_run >= max_epochs_this_run and state["phase"] != "done":
                    raise TrainingInterrupted(f"{name}: stopped after {epochs_this_run} epochs (checkpoint written)")

        # ---------------- phase 2 (RNC): frozen encoder, linear head ----------------
        if state["phase"] == "head":
            head_cfg = spec["head"]
            encoder = _unwrap(model).encoder
            for p in encoder.parameters():
                p.requires_grad_(False)
            recompute_batchnorm_stats(encoder, cache, rows["train"], device, batch_size, channels_last, amp)
            f_train = _features(encoder, cache, rows["train"], device, batch_size, channels_last, amp)
            f_val = _features(encoder, cache, rows["val"], device, batch_size, channels_last, amp)
            # standardise, and divide by sqrt(F) so that a feature vector has unit mean square norm:
            # the study's head lr (0.05, momentum 0.9) then moves the output by ~0.5 sd per step
            # whatever the feature width F (128 on the demo, 2048 for ResNet50)
            mu = f_train.mean(0)
            sd = f_train.std(0).clamp_min(1e-6) * math.sqrt(f_train.shape[1])
            z_train = ((f_train - mu) / sd).to(device)
            z_val = ((f_val - mu) / sd).to(device)
            y_train = torch.from_numpy((ages["train"] - age_mean) / age_sd).to(device)
            head = nn.Linear(f_train.shape[1], 1).to(device)
            head_opt = _optimiser(head.parameters(), {**head_cfg, "name": "sgd"})
            head_sched = _scheduler(head_opt, head_cfg, int(head_cfg["epochs"]))
            if head_ckpt is not None and head_ckpt["optimiser"] is not None:
                head.load_state_dict(head_ckpt["state"]["head"])
                head_opt.load_state_dict(head_ckpt["optimiser"])
                head_sched.load_state_dict(head_ckpt["scheduler"])
            hb = min(int(head_cfg["batch_size"]), len(y_train))
            bar = _progress(range(state["epoch"], int(head_cfg["epochs"])), progress and main, f"{name} head")
            for epoch in bar:
                t0 = time.time()
                order = torch.from_numpy(np.random.default_rng([seed, 2, epoch, 7]).permutation(len(y_train))).to(device)
                loss_sum = torch.zeros((), device=device)
                n_batches = len(y_train) // hb
                for b in range(n_batches):
                    idx = order[b * hb : (b + 1) * hb]
                    loss = F.l1_loss(head(z_train[idx]).squeeze(-1), y_train[idx])
                    head_opt.zero_grad(set_to_none=True)
                    loss.backward()
                    head_opt.step()
                    loss_sum += loss.detach()
                lr = head_opt.param_groups[0]["lr"]
                head_sched.step()
                with torch.no_grad():
                    val_mae = float(((head(z_val).squeeze(-1).float() * age_sd + age_mean).cpu().numpy() - ages["val"]).__abs__().mean())
                # select "last": every epoch replaces the kept head (the convex head has converged
                # when its lr has decayed); "best_val": the head of the lowest validation MAE
                if val_mae < state["best_val"] or head_cfg["select"] == "last":
                    state.update(best_val=val_mae, best_epoch=epoch, bad_epochs=0,
                                 best_state={k: v.detach().cpu().clone() for k, v in head.state_dict().items()})
                else:
                    state["bad_epochs"] += 1
                train_loss = float(loss_sum) / max(1, n_batches) * age_sd
                state["elapsed"] += time.time() - t0
                state["log"].append({"phase": "head", "epoch": epoch + 1, "train_loss": train_loss, "val_mae": val_mae,
                                     "lr": lr, "seconds": time.time() - t0})
                state.update(epoch=epoch + 1, head={k: v.detach().cpu().clone() for k, v in head.state_dict().items()})
                patience = head_cfg.get("patience")
                done = epoch + 1 == int(head_cfg["epochs"]) or (patience is not None and state["bad_epochs"] >= int(patience))
                if done:
                    # fold the feature standardisation into the best head: w' = w / sd, b' = b - w'.mu
                    best = state["best_state"]
                    w = best["weight"] / sd.cpu()
                    target = _unwrap(model).head
                    with torch.no_grad():
                        target.weight.copy_(w)
                        target.bias.copy_(best["bias"] - (w * mu.cpu()).sum(1))
                    state["phase"] = "done"
                    log.info("%s: linear head best val MAE %.3f at epoch %d", name, state["best_val"], state["best_epoch"] + 1)
                checkpoint(head_opt, head_sched)
                if done:
                    break
            for p in encoder.parameters():
                p.requires_grad_(True)

    # ---------------- outputs ----------------
    model.eval()
    metrics: dict[str, Any] = {"best_val_mae": state["best_val"], "best_epoch": state["best_epoch"] + 1}
    if len(rows["test"]):
        pred = _predict(model, cache, rows["test"], device, batch_size, channels_last, amp)
        metrics["test_mae"] = float(np.abs(pred - ages["test"]).mean())
        metrics["test_mae_mean_age_baseline"] = float(np.abs(age_mean - ages["test"]).mean())
        metrics["test_mae_ratio_to_baseline"] = metrics["test_mae"] / max(metrics["test_mae_mean_age_baseline"], 1e-9)
        metrics["n_test"] = int(len(rows["test"]))
    if main:
        meta = {
            "name": name, "kind": kind, "architecture": architecture_of(spec), "feature_dim": int(_unwrap(model).encoder.out_features),
            "grid_res": float(spec["grid"]), "grid_shape": list(cache.shape), "intensity_normalisation": INTENSITY_NORMALISATION,
            "preprocess": preprocess or {}, "age": {"train_mean": age_mean, "train_sd": age_sd,
            "train_min": float(ages["train"].min()), "train_max": float(ages["train"].max())},
            "config": spec, "training": training, "seed": seed, "metrics": metrics,
        }
        # metadata reduced to JSON types (no numpy scalars, no tuples): model.pt then loads with
        # torch.load(weights_only=True), which builds tensors and plain containers and runs no code
        _save({"state_dict": _unwrap(model).state_dict(), "meta": json.loads(json_text(meta, indent=None))},
              out_dir / "model.pt")
        table = pd.DataFrame(state["log"], columns=["phase", "epoch", "train_loss", "val_mae", "lr", "seconds"])
        write_tsv(out_dir / "train_log.tsv", table)
        plot_learning_curve(table, name, out_dir / "learning_curve.png")
        import monai

        write_json(out_dir / "model_card.json", {
            "name": name, "kind": kind, "architecture": meta["architecture"], "grid_res": meta["grid_res"],
            "data": {s: {"n": len(v), "hash": split_hash(v)} for s, v in sets.items()},
            "age": meta["age"], "metrics": metrics, "config": spec, "training": training, "seed": seed,
            "training_seconds": state["elapsed"], "device": str(device), "processes": world,
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
                         "numpy": np.__version__},
        })
        ckpt_path.unlink(missing_ok=True)
    log.info("%s: done %s", name, json.dumps(metrics))
    return metrics


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, mininterval=5, file=sys.stderr)


def plot_learning_curve(table: pd.DataFrame, name: str, path: str | Path) -> None:
    """Training loss and validation MAE per epoch (two panels for RNC: encoder, then head)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [p for p in ("e2e", "encoder", "head") if (table["phase"] == p).any()]
    fig, axes = plt.subplots(1, len(phases), figsize=(5 * len(phases), 3.6), squeeze=False)
    for ax, phase in zip(axes[0], phases):
        t = table[table["phase"] == phase]
        if phase == "encoder":
            ax.plot(t["epoch"], t["train_loss"], "o-", ms=3, label="train RNC loss")
            ax.set_ylabel("Rank-N-Contrast loss")
            ax.set_title(f"{name}: RNC encoder")
        else:
            ax.plot(t["epoch"], t["train_loss"], "o-", ms=3, label="train L1 (years)")
            ax.plot(t["epoch"], t["val_mae"], "s-", ms=3, label="val MAE (years)")
            best = t.loc[t["val_mae"].idxmin()]
            ax.axvline(best["epoch"], color="grey", ls=":", label=f"best val {best['val_mae']:.2f} (epoch {int(best['epoch'])})")
            ax.set_ylabel("years")
            ax.set_title(f"{name}: {'end-to-end' if phase == 'e2e' else 'linear head (encoder frozen)'}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[AgeModel, dict]:
    """A trained model (eval mode) and its metadata from ``results/models/<name>/model.pt``.

    meta keys: name, kind (e2e|rnc), architecture, feature_dim, grid_res, grid_shape,
    intensity_normalisation (apply brainage.cache.normalise_intensity), preprocess, age
    (train_mean, train_sd, train_min, train_max), config, training, seed, metrics.
    """
    try:
        # weights_only: tensors and plain containers only, so a shared model.pt cannot run code
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is a page long: keep the line naming what was refused
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"it asks to run {found.group(1)}" if found else "it holds more than tensors and plain values"
        raise InputError(f"{path}: refused, not a model.pt that loads safely ({what}); use a model.pt "
                         f"written by `snakemake train_all` of this version") from None
    if not isinstance(blob, dict) or "state_dict" not in blob or not isinstance(blob.get("meta"), dict):
        raise InputError(f"{path}: not a brainage model.pt (no state_dict and meta)")
    meta = blob["meta"]
    model = build_age_model(meta["architecture"], meta["age"]["train_mean"], meta["age"]["train_sd"])
    model.load_state_dict(blob["state_dict"])
    model.to(map_location).eval()
    return model, meta


def launch_torchrun(job: dict, splits_path: str, gpus: int) -> None:
    """Run :func:`train_model` in ``gpus`` processes (one per GPU) under torchrun, on this node.

    ``job``: the keyword arguments of train_model without ``splits``, which each process reads
    from ``splits_path``. Raises CalledProcessError if training fails.
    """
    import subprocess

    out_dir = Path(job["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    job_file = out_dir / "torchrun_job.json"
    with atomic_path(job_file) as tmp:
        tmp.write_text(json.dumps({**job, "splits": str(splits_path)}, default=str))
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
         "-m", "brainage.train", str(job_file)],
        check=True,
    )
    job_file.unlink(missing_ok=True)


def _main(job_json: str) -> None:
    """Entry point of one training process under torchrun: ``python -m brainage.train job.json``."""
    job = json.loads(Path(job_json).read_text())
    logging.basicConfig(level=logging.INFO)
    from brainage.splits import read_splits

    job["splits"] = read_splits(job["splits"])
    train_model(**job)


if __name__ == "__main__":
    _main(sys.argv[1])
