"""The training engine: end-to-end L1 models and Rank-N-Contrast encoders with a linear head.

One model = one entry under ``models:`` in the config (see :func:`resolve_spec` for the keys and
their defaults). Three kinds:

- ``loss: l1`` (end-to-end): encoder + linear head trained together on the L1 loss of the
  standardised age, Adam (lr 1e-3), validation MAE every epoch, early stopping after
  ``patience`` epochs without improvement, the best-validation weights kept.
- ``backbone: pca_gpr``: the classical baseline, no network (brainage.models.classical).
- ``loss: rnc``: the encoder trained with ``RnCLoss`` on two augmented views per subject, SGD
  (lr 0.5, momentum 0.9, weight decay 1e-4) with step decay: the lr is multiplied by ``gamma``
  (0.1) at the fractions ``milestones`` (0.7, 0.8, 0.9) of the epochs, as in the Rank-N-Contrast
  reference code (decay rate 0.1 at epochs 700/800/900 of 1000). Batches larger than memory are
  split by gradient caching (``rnc.chunk_size``, brainage.train.gradcache). Then the linear head:
  encoder frozen (eval mode), one linear layer on its features, L1, SGD lr 0.05 momentum 0.9,
  decay 0.2 at 0.6/0.75/0.9 of ``head.epochs``, best-validation head kept (``head.select:
  best_val``) or the converged last one (``last``: with a handful of validation subjects the
  best-validation epoch is mostly noise). Features of the
  frozen encoder are computed once, without augmentation; they are standardised with the
  training-set statistics and scaled by 1/sqrt(F) while the head trains (conditioning), and
  that affine map is folded into the head's weights at the end, so the head stays one linear
  layer on raw features.

Pretraining (``init_from``, :func:`start_from_pretrained`): the network starts from a trained
model's weights (an RNC model or an RNC source: the encoder; end-to-end from end-to-end: the
whole network). An RNC model with ``epochs: 0`` skips the contrastive stage: only its head is
fitted, on the frozen pretrained encoder.

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
gathered global batch (brainage.train.distributed.global_rnc_loss).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from brainage.train.augment import AugmentConfig, augment_volume, sample_params
from brainage.data.cache import INTENSITY_NORMALISATION, CachedVolumes
from brainage.train.checkpoint import Checkpoint, StopRequest, fingerprint
from brainage.core.io import InputError, atomic_path, save_figure, write_json, write_tsv
from brainage.models.files import autocast, forward_batches, iter_batches, load_model, save_model, to_device, unwrap
from brainage.models.networks import architecture_of, build_age_model
from brainage.core.paths import model_files
from brainage.models.spec import init_from_problems, is_classical, resolve_spec, source_mismatch
from brainage.data.splits import split_hash

log = logging.getLogger("brainage.train.engine")

__all__ = ["train_model", "launch_torchrun", "TrainingInterrupted"]


class TrainingInterrupted(RuntimeError):
    """The run stopped early (max_epochs_this_run or SIGTERM) after writing its checkpoint."""


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
# One run: what every fitting stage reads
# --------------------------------------------------------------------------------------


@dataclass
class _Run:
    name: str
    spec: dict
    training: dict
    seed: int
    rank: int
    world: int
    main: bool
    device: torch.device
    amp: torch.dtype | None
    channels_last: bool
    cache: CachedVolumes
    sets: dict[str, list[str]]
    rows: dict[str, np.ndarray]
    ages: dict[str, np.ndarray]
    age_mean: float
    age_sd: float
    batch_size: int
    aug_cfg: AugmentConfig | None
    progress: bool
    #: the pretrained source the model started from (config init_from), as the model card records it
    init_from: dict | None = None

    @classmethod
    def setup(cls, name: str, spec: dict, training: dict, splits: pd.DataFrame, volumes, index, seed: int,
              progress: bool) -> "_Run":
        from brainage.train.distributed import init_distributed, is_main_process

        rank, world, device = init_distributed()
        cuda = device.type == "cuda"
        # ``augment``: true (training.augment), false, or a dict overriding training.augment for this model
        augmented = spec["augment"] is not False and spec["augment"] is not None
        overrides = spec["augment"] if isinstance(spec["augment"], dict) else {}
        aug_cfg = (AugmentConfig.from_dict({**(training.get("augment") or {}), **overrides})
                   if augmented or spec["loss"] == "rnc" else None)
        cache = CachedVolumes(volumes, index)
        splits = splits.set_index("participant_id", drop=False)
        sets = {s: splits.index[splits["split"] == s].tolist() for s in ("train", "val", "test")}
        if len(sets["train"]) < 2 or not sets["val"]:
            raise ValueError(f"{name}: need >= 2 training and >= 1 validation subjects, got {len(sets['train'])}/{len(sets['val'])}")
        rows = {s: np.array([cache.row_of(p) for p in ids], dtype=np.int64) for s, ids in sets.items()}
        ages = {s: splits.loc[ids, "age"].to_numpy(np.float32) for s, ids in sets.items()}
        batch_size = min(int(spec["batch_size"]), len(rows["train"]))
        if batch_size % world:
            raise ValueError(f"{name}: batch_size {batch_size} is not divisible by the {world} processes")
        return cls(
            name=name, spec=spec, training=training, seed=seed, rank=rank, world=world, main=is_main_process(),
            device=device, amp=torch.bfloat16 if (cuda and training.get("amp", True)) else None,
            channels_last=bool(cuda and training.get("channels_last", True)), cache=cache, sets=sets, rows=rows,
            ages=ages, age_mean=float(ages["train"].mean()), age_sd=float(ages["train"].std() or 1.0),
            batch_size=batch_size, aug_cfg=aug_cfg, progress=progress,
        )

    @property
    def kind(self) -> str:
        return "rnc" if self.spec["loss"] == "rnc" else "e2e"

    def fingerprint(self) -> str:
        parts = (self.spec, self.training, self.seed, {s: split_hash(v) for s, v in self.sets.items()},
                 list(self.cache.shape), self.world)
        # a retrained source (same folder, new weights) must not resume the old run
        return fingerprint(*parts, self.init_from["model_sha256"]) if self.init_from else fingerprint(*parts)

    def forward(self, model: nn.Module, rows, min_batch: int = 1):
        """``model`` over cache ``rows`` (un-augmented), batch by batch: the outputs (float32, CPU)."""
        batches = itertools.takewhile(lambda b: len(b[0]) >= min_batch, iter_batches(rows, self.cache.row, self.batch_size))
        return [out for _, out in forward_batches(model, batches, self.device, self.channels_last, self.amp)]


@torch.no_grad()
def _predict(model: nn.Module, cache: CachedVolumes, rows, device, batch_size: int, channels_last: bool, amp) -> np.ndarray:
    """Ages (years) predicted for cache ``rows`` without augmentation, in eval mode."""
    was_training = model.training
    model.eval()
    out = [o for _, o in forward_batches(model, iter_batches(rows, cache.row, batch_size), device, channels_last, amp)]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def _predict_rows(run: _Run, model: nn.Module, rows) -> np.ndarray:
    return _predict(model, run.cache, rows, run.device, run.batch_size, run.channels_last, run.amp)


@torch.no_grad()
def recompute_batchnorm_stats(model: nn.Module, run: _Run) -> None:
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
    run.forward(model, run.rows["train"][:512], min_batch=2)  # a batch of one has no batch statistics
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


# --------------------------------------------------------------------------------------
# Optimisation
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


def _new_state() -> dict[str, Any]:
    return {"phase": "main", "epoch": 0, "step": 0, "loss_sum": 0.0, "loss_n": 0, "best_val": math.inf,
            "best_state": None, "best_epoch": -1, "bad_epochs": 0, "log": [], "elapsed": 0.0}


def _cpu_copy(module: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------
# Stage 1: end-to-end L1, or the RNC encoder (what differs between the two)
# --------------------------------------------------------------------------------------


class _EndToEnd:
    """Encoder + head on the L1 of the standardised age; best-validation weights, early stopping."""

    views, log_phase, loss_label = 1, "e2e", "L1 (years)"

    def __init__(self, run: _Run, model: nn.Module, net: nn.Module) -> None:
        self.run, self.model, self.net = run, model, net

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        run = self.run
        xb = x[:, 0].contiguous(memory_format=torch.channels_last_3d) if run.channels_last else x[:, 0]
        with autocast(run.device, run.amp):
            pred = self.net(xb)
        loss = F.l1_loss(pred.float(), y)  # in years; same minimiser as L1 on z
        (loss / run.age_sd).backward()  # gradient of the L1 of the standardised age
        return loss

    def evaluate(self, state: dict, epoch: int) -> float:
        run = self.run
        recompute_batchnorm_stats(unwrap(self.model), run)
        val_mae = float(np.abs(_predict_rows(run, self.model, run.rows["val"]) - run.ages["val"]).mean())
        if val_mae < state["best_val"]:
            state.update(best_val=val_mae, best_epoch=epoch, bad_epochs=0, best_state=_cpu_copy(unwrap(self.model)))
        else:
            state["bad_epochs"] += 1
        return val_mae

    def stops_early(self, state: dict) -> bool:
        patience = self.run.spec["patience"]
        return patience is not None and state["bad_epochs"] >= int(patience)

    def finish(self, state: dict) -> None:
        unwrap(self.model).load_state_dict(state["best_state"])
        state["phase"] = "done"


class _RncEncoder:
    """The encoder on the Rank-N-Contrast loss of two augmented views per subject."""

    views, log_phase, loss_label = 2, "encoder", "RNC loss"

    def __init__(self, run: _Run, model: nn.Module, net: nn.Module) -> None:
        import functools

        from brainage.train.distributed import global_rnc_loss
        from brainage.train.gradcache import contrastive_step
        from brainage.train.losses import RnCLoss

        self.run, self.model, self.net, self.step = run, model, net, contrastive_step
        rnc = RnCLoss(temperature=float(run.spec["rnc"]["temperature"]))
        self.loss_fn = functools.partial(global_rnc_loss, rnc) if run.world > 1 else rnc

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        run = self.run
        v = torch.cat([x[:, k] for k in range(x.shape[1])])  # (2N, 1, D, H, W): all view-1s, then view-2s
        if run.channels_last:
            v = v.contiguous(memory_format=torch.channels_last_3d)
        return self.step(self.net, v, y.repeat(x.shape[1]), self.loss_fn, run.spec["rnc"]["chunk_size"], run.amp)

    def evaluate(self, state: dict, epoch: int) -> float:
        return math.nan

    def stops_early(self, state: dict) -> bool:
        return False

    def finish(self, state: dict) -> None:
        state["phase"] = "head"
        state.update(epoch=0, best_val=math.inf, best_state=None, best_epoch=-1, bad_epochs=0)


def _fit_stage1(run: _Run, stage, opt, sched, state: dict, ckpt: Checkpoint, max_epochs_this_run: int | None) -> None:
    """Epochs of stage 1 from ``state``'s position; checkpoint after each (and on SIGTERM)."""
    epochs = int(run.spec["epochs"])
    every_steps = int(run.training.get("checkpoint_every_steps", 0) or 0)
    workers, cuda = int(run.training.get("num_workers", 0)), run.device.type == "cuda"
    dataset = _Volumes(run.cache, run.rows["train"], run.ages["train"], run.aug_cfg, stage.views, run.seed, 1,
                       augment_here=not cuda)
    epochs_this_run = 0
    if epochs == 0:  # a pretrained RNC encoder used as is (init_from): straight to its head
        stage.finish(state)
    for epoch in _progress(range(state["epoch"], epochs), run.progress and run.main, f"{run.name} {run.kind}"):
        stage.model.train()
        t0 = time.time()
        batches = _epoch_batches(len(run.rows["train"]), run.batch_size, run.seed, 1, epoch, run.rank, run.world)
        loss_sum = torch.tensor(state["loss_sum"], device=run.device)
        for step, (x, y, params) in enumerate(_loader(dataset, batches[state["step"]:], workers, cuda), start=state["step"]):
            x = to_device(x, run.device)
            y = y.to(run.device, non_blocking=True)
            if params[0] is not None:  # augment on the device
                x = torch.stack([torch.stack([augment_volume(x[b, 0], p, run.aug_cfg) for p in ps]) for b, ps in enumerate(params)])
            opt.zero_grad(set_to_none=True)
            loss = stage.loss(x, y)
            opt.step()
            loss_sum += loss.detach()
            state["step"] = step + 1
            if StopRequest.requested or (every_steps and state["step"] % every_steps == 0 and state["step"] < len(batches)):
                state["loss_sum"], state["loss_n"] = float(loss_sum), state["step"]
                ckpt.save(stage.model, state, opt, sched)
                if StopRequest.requested:
                    raise TrainingInterrupted(f"{run.name}: SIGTERM, checkpoint written at epoch {epoch} step {state['step']}")
        train_loss = float(loss_sum) / max(1, len(batches))
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"{run.name}: training loss is {train_loss} at epoch {epoch}; lower optimiser.lr")
        lr = opt.param_groups[0]["lr"]
        sched.step()
        val_mae = stage.evaluate(state, epoch)
        state["elapsed"] += time.time() - t0
        state["log"].append({"phase": stage.log_phase, "epoch": epoch + 1, "train_loss": train_loss, "val_mae": val_mae,
                             "lr": lr, "seconds": time.time() - t0})
        log.info("%s epoch %d/%d: train %s %.4f, val MAE %.3f, lr %.3g, %.1fs", run.name, epoch + 1, epochs,
                 stage.loss_label, train_loss, val_mae, lr, time.time() - t0)
        state.update(epoch=epoch + 1, step=0, loss_sum=0.0, loss_n=0)
        stop_early = stage.stops_early(state)
        if stop_early or epoch + 1 == epochs:
            stage.finish(state)
        ckpt.save(stage.model, state, *((opt, sched) if state["phase"] == "main" else (None, None)))
        epochs_this_run += 1
        if stop_early:
            log.info("%s: early stop at epoch %d (best val MAE %.3f at epoch %d)", run.name, epoch + 1, state["best_val"], state["best_epoch"] + 1)
            break
        if max_epochs_this_run is not None and epochs_this_run >= max_epochs_this_run and state["phase"] != "done":
            raise TrainingInterrupted(f"{run.name}: stopped after {epochs_this_run} epochs (checkpoint written)")


# --------------------------------------------------------------------------------------
# Stage 2 (RNC): the linear head on the frozen encoder
# --------------------------------------------------------------------------------------


@torch.no_grad()
def _head_features(run: _Run, encoder: nn.Module) -> tuple[torch.Tensor, ...]:
    """Standardised features of train and val (and the map: mean, scale) of the frozen encoder.

    Standardised, and divided by sqrt(F) so that a feature vector has unit mean square norm:
    the study's head lr (0.05, momentum 0.9) then moves the output by ~0.5 sd per step whatever
    the feature width F (128 on the demo, 2048 for ResNet50).
    """
    recompute_batchnorm_stats(encoder, run)
    encoder.eval()
    f_train, f_val = (torch.cat(run.forward(encoder, run.rows[s])) for s in ("train", "val"))
    mu = f_train.mean(0)
    sd = f_train.std(0).clamp_min(1e-6) * math.sqrt(f_train.shape[1])
    return ((f_train - mu) / sd).to(run.device), ((f_val - mu) / sd).to(run.device), mu, sd


def _fit_head(run: _Run, model: nn.Module, state: dict, ckpt: Checkpoint, resumed: dict | None) -> None:
    head_cfg = run.spec["head"]
    encoder = unwrap(model).encoder
    for p in encoder.parameters():
        p.requires_grad_(False)
    z_train, z_val, mu, sd = _head_features(run, encoder)
    y_train = torch.from_numpy((run.ages["train"] - run.age_mean) / run.age_sd).to(run.device)
    head = nn.Linear(z_train.shape[1], 1).to(run.device)
    head_opt = _optimiser(head.parameters(), {**head_cfg, "name": "sgd"})
    head_sched = _scheduler(head_opt, head_cfg, int(head_cfg["epochs"]))
    if resumed is not None and resumed["optimiser"] is not None:
        head.load_state_dict(resumed["state"]["head"])
        head_opt.load_state_dict(resumed["optimiser"])
        head_sched.load_state_dict(resumed["scheduler"])
    hb = min(int(head_cfg["batch_size"]), len(y_train))
    for epoch in _progress(range(state["epoch"], int(head_cfg["epochs"])), run.progress and run.main, f"{run.name} head"):
        t0 = time.time()
        order = torch.from_numpy(np.random.default_rng([run.seed, 2, epoch, 7]).permutation(len(y_train))).to(run.device)
        loss_sum = torch.zeros((), device=run.device)
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
            val_mae = float(((head(z_val).squeeze(-1).float() * run.age_sd + run.age_mean).cpu().numpy() - run.ages["val"]).__abs__().mean())
        # select "last": every epoch replaces the kept head (the convex head has converged
        # when its lr has decayed); "best_val": the head of the lowest validation MAE
        if val_mae < state["best_val"] or head_cfg["select"] == "last":
            state.update(best_val=val_mae, best_epoch=epoch, bad_epochs=0, best_state=_cpu_copy(head))
        else:
            state["bad_epochs"] += 1
        train_loss = float(loss_sum) / max(1, n_batches) * run.age_sd
        state["elapsed"] += time.time() - t0
        state["log"].append({"phase": "head", "epoch": epoch + 1, "train_loss": train_loss, "val_mae": val_mae,
                             "lr": lr, "seconds": time.time() - t0})
        state.update(epoch=epoch + 1, head=_cpu_copy(head))
        patience = head_cfg.get("patience")
        done = epoch + 1 == int(head_cfg["epochs"]) or (patience is not None and state["bad_epochs"] >= int(patience))
        if done:
            _fold_head(unwrap(model).head, state["best_state"], mu, sd)
            state["phase"] = "done"
            log.info("%s: linear head best val MAE %.3f at epoch %d", run.name, state["best_val"], state["best_epoch"] + 1)
        ckpt.save(model, state, head_opt, head_sched)
        if done:
            break
    for p in encoder.parameters():
        p.requires_grad_(True)


@torch.no_grad()
def _fold_head(target: nn.Linear, best: dict, mu: torch.Tensor, sd: torch.Tensor) -> None:
    """The feature standardisation folded into the head: w' = w / sd, b' = b - w'.mu."""
    w = best["weight"] / sd.cpu()
    target.weight.copy_(w)
    target.bias.copy_(best["bias"] - (w * mu.cpu()).sum(1))


# --------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------


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
    if is_classical(entry):  # no network, no epochs: brainage.models.classical fits it in one go
        from brainage.models.classical import train_classical

        return train_classical(name, resolve_spec(entry), splits, volumes, index, out_dir, seed, training, preprocess)
    problems = init_from_problems(name, entry)
    if problems:
        raise ValueError(problems[0])
    run = _Run.setup(name, resolve_spec(entry), training, splits, volumes, index, seed, progress)
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    model = build_age_model(architecture_of(run.spec), run.age_mean, run.age_sd).to(run.device)
    if run.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    run.init_from = start_from_pretrained(run, model)
    opt = _optimiser((model.encoder if run.kind == "rnc" else model).parameters(), run.spec["optimiser"])
    sched = _scheduler(opt, run.spec["optimiser"], int(run.spec["epochs"]))

    ckpt = Checkpoint(model_files(out_dir)["checkpoint"], run.fingerprint(), writer=run.main)
    resumed = ckpt.load(name)
    state = _new_state()
    head_resumed = resumed if resumed is not None and resumed["state"]["phase"] == "head" else None
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        state = resumed["state"]
        if state["phase"] == "main":
            opt.load_state_dict(resumed["optimiser"])
            sched.load_state_dict(resumed["scheduler"])

    with StopRequest.on_sigterm():
        if state["phase"] == "main":
            stage_cls = _RncEncoder if run.kind == "rnc" else _EndToEnd
            _fit_stage1(run, stage_cls(run, model, _network(run, model)), opt, sched, state, ckpt, max_epochs_this_run)
        if state["phase"] == "head":
            _fit_head(run, model, state, ckpt, head_resumed)
    metrics = _write_outputs(run, model, state, out_dir, preprocess)
    ckpt.remove()
    log.info("%s: done %s", name, json.dumps(metrics))
    return metrics


# --------------------------------------------------------------------------------------
# Pretrained initialisation (config init_from)
# --------------------------------------------------------------------------------------


def start_from_pretrained(run: _Run, model: nn.Module) -> dict | None:
    """Load the trained model of config ``init_from`` into ``model``; what the model card records.

    An RNC model, or any model from an RNC source: the encoder's weights (the head is fitted on
    this cohort, or starts from its seeded initialisation). End-to-end from end-to-end: the whole
    network, its head re-expressed in this cohort's age standardisation (:func:`rebase_head`).
    BatchNorm statistics are re-estimated on this cohort before every use, as for any model
    (:func:`recompute_batchnorm_stats`); the encoder's parameters are the source's exactly.
    """
    folder = run.spec.get("init_from")
    if not folder:
        return None
    files = model_files(folder)
    if not files["model"].is_file():
        raise InputError(f"{run.name}: init_from {folder} holds no model.pt (give the folder of a trained model, "
                         f"results/models/<name> of a finished run)")
    source, meta = load_model(files["model"])  # weights_only: a shared model.pt cannot run code
    target = unwrap(model)
    problem = source_mismatch(run.spec, meta) or _shape_mismatch(target, source, meta, list(run.cache.shape))
    if problem:
        raise InputError(f"{run.name}: init_from {folder} does not fit this model ({problem})")
    target.encoder.load_state_dict(source.encoder.state_dict())
    if run.kind == "e2e" and meta["kind"] == "e2e":
        target.head.load_state_dict(source.head.state_dict())
        rebase_head(target.head, float(source.age_mean), float(source.age_sd), run.age_mean, run.age_sd)
    log.info("%s: %s starts from %s (%s model %s)", run.name, "encoder" if run.kind == "rnc" or meta["kind"] == "rnc"
             else "network", files["model"], meta["kind"], meta.get("name"))
    return {"path": str(folder), "model_sha256": _sha256(files["model"]), "name": meta.get("name"),
            "kind": meta["kind"], "card_sha256": _sha256(files["card"]) if files["card"].is_file() else None}


def _shape_mismatch(target: nn.Module, source: nn.Module, meta: dict, grid_shape: list[int]) -> str | None:
    """The grid shape, or the first encoder tensor (in-channels of conv1 ...), that differs from the source."""
    if list(meta.get("grid_shape", grid_shape)) != grid_shape:
        return f"grid shape {grid_shape} here, {meta['grid_shape']} in the source"
    ours, theirs = target.encoder.state_dict(), source.encoder.state_dict()
    for key, value in ours.items():
        if key not in theirs or theirs[key].shape != value.shape:
            found = list(theirs[key].shape) if key in theirs else "nothing"
            return f"encoder.{key} {list(value.shape)} here, {found} in the source"
    return None


@torch.no_grad()
def rebase_head(head: nn.Linear, source_mean: float, source_sd: float, mean: float, sd: float) -> None:
    """``head`` (standardised age of the source's cohort) re-expressed for this cohort's statistics.

    The same ages in years: z_s * sd_s + mean_s = z * sd + mean gives
    z = z_s * sd_s / sd + (mean_s - mean) / sd, an affine map folded into the head's weights.
    """
    head.weight.mul_(source_sd / sd)
    head.bias.mul_(source_sd / sd).add_((source_mean - mean) / sd)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _network(run: _Run, model: nn.Module) -> nn.Module:
    """What stage 1 runs: the model (e2e) or its encoder (rnc), compiled and DDP-wrapped as asked."""
    compiled = torch.compile(model) if run.training.get("compile", False) and run.device.type == "cuda" else model
    trained = compiled.encoder if run.kind == "rnc" else compiled
    if run.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(trained, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    return trained


def _write_outputs(run: _Run, model: nn.Module, state: dict, out_dir: Path, preprocess: dict | None) -> dict:
    """Test metrics; on the main process model.pt, train_log.tsv, learning_curve.png, model_card.json."""
    model.eval()
    metrics: dict[str, Any] = {"best_val_mae": state["best_val"], "best_epoch": state["best_epoch"] + 1}
    if len(run.rows["test"]):
        pred = _predict_rows(run, model, run.rows["test"])
        metrics["test_mae"] = float(np.abs(pred - run.ages["test"]).mean())
        metrics["test_mae_mean_age_baseline"] = float(np.abs(run.age_mean - run.ages["test"]).mean())
        metrics["test_mae_ratio_to_baseline"] = metrics["test_mae"] / max(metrics["test_mae_mean_age_baseline"], 1e-9)
        metrics["n_test"] = int(len(run.rows["test"]))
    if not run.main:
        return metrics
    spec, ages = run.spec, run.ages
    meta = {
        "name": run.name, "kind": run.kind, "architecture": architecture_of(spec),
        "feature_dim": int(unwrap(model).encoder.out_features), "grid_res": float(spec["grid"]),
        "grid_shape": list(run.cache.shape), "intensity_normalisation": INTENSITY_NORMALISATION,
        "preprocess": preprocess or {}, "age": {"train_mean": run.age_mean, "train_sd": run.age_sd,
        "train_min": float(ages["train"].min()), "train_max": float(ages["train"].max())},
        "config": spec, "training": run.training, "seed": run.seed, "metrics": metrics,
    }
    files = model_files(out_dir)
    save_model(unwrap(model).state_dict(), meta, files["model"])
    table = pd.DataFrame(state["log"], columns=["phase", "epoch", "train_loss", "val_mae", "lr", "seconds"])
    write_tsv(files["log_tsv"], table)
    plot_learning_curve(table, run.name, files["curve"])
    import monai

    write_json(files["card"], {
        "name": run.name, "kind": run.kind, "architecture": meta["architecture"], "grid_res": meta["grid_res"],
        "data": {s: {"n": len(v), "hash": split_hash(v)} for s, v in run.sets.items()},
        "age": meta["age"], "metrics": metrics, "config": spec, "training": run.training, "seed": run.seed,
        "init_from": run.init_from, "training_seconds": state["elapsed"], "device": str(run.device), "processes": run.world,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
                     "numpy": np.__version__},
    })
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
         "-m", "brainage.train.engine", str(job_file)],
        check=True,
    )
    job_file.unlink(missing_ok=True)


def _main(job_json: str) -> None:
    """Entry point of one training process under torchrun: ``python -m brainage.train.engine job.json``."""
    job = json.loads(Path(job_json).read_text())
    logging.basicConfig(level=logging.INFO)
    from brainage.data.splits import read_splits

    job["splits"] = read_splits(job["splits"])
    train_model(**job)


if __name__ == "__main__":
    _main(sys.argv[1])
