"""One training run: what every fitting stage reads (:class:`Run`: the resolved spec, device,
cache rows and ages of each split), and what the stages share: evaluation forward passes,
BatchNorm re-estimation, optimiser and scheduler, the resumable state."""

from __future__ import annotations

import itertools
import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from brainage.data.cache import CachedVolumes
from brainage.data.splits import split_hash
from brainage.models.files import forward_batches, iter_batches
from brainage.models.kinds import ModelKind
from brainage.models.spec import ModelSpec
from brainage.train.augment import AugmentConfig
from brainage.train.checkpoint import fingerprint


class TrainingInterrupted(RuntimeError):
    """The run stopped early (max_epochs_this_run or SIGTERM) after writing its checkpoint."""


@dataclass
class Run:
    name: str
    spec: ModelSpec
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
    def setup(cls, name: str, spec: ModelSpec, training: dict, splits: pd.DataFrame, volumes, index, seed: int,
              progress: bool) -> "Run":
        from brainage.train.distributed import init_distributed, is_main_process

        rank, world, device = init_distributed()
        cuda = device.type == "cuda"
        # ``augment``: true (training.augment), false, or a dict overriding training.augment for this model
        augmented = spec["augment"] is not False and spec["augment"] is not None
        overrides = spec["augment"] if isinstance(spec["augment"], dict) else {}
        aug_cfg = (AugmentConfig.from_dict({**(training.get("augment") or {}), **overrides})
                   if augmented or spec.kind.views > 1 else None)
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
    def kind(self) -> ModelKind:
        return self.spec.kind

    def fingerprint(self) -> str:
        parts = (self.spec.settings, self.training, self.seed, {s: split_hash(v) for s, v in self.sets.items()},
                 list(self.cache.shape), self.world)
        # a retrained source (same folder, new weights) must not resume the old run
        return fingerprint(*parts, self.init_from["model_sha256"]) if self.init_from else fingerprint(*parts)

    def forward(self, model: nn.Module, rows, min_batch: int = 1):
        """``model`` over cache ``rows`` (un-augmented), batch by batch: the outputs (float32, CPU)."""
        batches = itertools.takewhile(lambda b: len(b[0]) >= min_batch, iter_batches(rows, self.cache.row, self.batch_size))
        return [out for _, out in forward_batches(model, batches, self.device, self.channels_last, self.amp)]


@torch.no_grad()
def predict_ages(model: nn.Module, cache: CachedVolumes, rows, device, batch_size: int, channels_last: bool, amp) -> np.ndarray:
    """Ages (years) predicted for cache ``rows`` without augmentation, in eval mode."""
    was_training = model.training
    model.eval()
    out = [o for _, o in forward_batches(model, iter_batches(rows, cache.row, batch_size), device, channels_last, amp)]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def predict_rows(run: Run, model: nn.Module, rows) -> np.ndarray:
    return predict_ages(model, run.cache, rows, run.device, run.batch_size, run.channels_last, run.amp)


@torch.no_grad()
def recompute_batchnorm_stats(model: nn.Module, run: Run) -> None:
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


def make_optimiser(params, cfg: dict) -> torch.optim.Optimizer:
    if cfg["name"] == "adam":
        return torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0))
    if cfg["name"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg.get("momentum", 0.0), weight_decay=cfg.get("weight_decay", 0.0))
    raise ValueError(f"optimiser name must be adam or sgd, got {cfg['name']!r}")


def make_scheduler(opt, cfg: dict, epochs: int):
    # a list, not a set: with few epochs two fractions can round to the same epoch, and
    # MultiStepLR then applies gamma twice there (the total decay stays gamma ** len(milestones))
    milestones = sorted(max(1, int(round(f * epochs))) for f in cfg.get("milestones") or [])
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=cfg.get("gamma", 0.1))


def new_state() -> dict[str, Any]:
    return {"phase": "main", "epoch": 0, "step": 0, "loss_sum": 0.0, "loss_n": 0, "best_val": math.inf,
            "best_state": None, "best_epoch": -1, "bad_epochs": 0, "log": [], "elapsed": 0.0}


def cpu_copy(module: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def progress_bar(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, mininterval=5, file=sys.stderr)
