"""Stage 2 of an RNC model: the head on the frozen encoder's features.

``head.type: linear`` (the study's): features computed once, standardised, an SGD-trained
linear layer; the standardisation is folded into the head at the end, so the head stays one
linear layer on raw features. ``head.type: kernel``: a Gaussian process on the same frozen
features (PCA, RBF kernel, hyper-parameters by the training subjects' marginal likelihood:
brainage.train.classical.fit_features), in one fit, held as a torch :class:`KernelHead`."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainage.models.files import unwrap
from brainage.train.checkpoint import Checkpoint
from brainage.train.run import (Run, cpu_copy, make_optimiser, make_scheduler, predict_rows, progress_bar,
                                recompute_batchnorm_stats)

log = logging.getLogger("brainage.train.engine")


@torch.no_grad()
def _head_features(run: Run, encoder: nn.Module) -> tuple[torch.Tensor, ...]:
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


@torch.no_grad()
def fit_kernel_head(run: Run, model: nn.Module, state: dict) -> None:
    """The kernel head: one GP fit on the frozen encoder's training features. Not checkpointed
    (a resumed run refits it: deterministic, seconds)."""
    from brainage.models.networks import KernelHead
    from brainage.train.classical import fit_features

    t0 = time.time()
    encoder = unwrap(model).encoder
    recompute_batchnorm_stats(encoder, run)
    encoder.eval()
    features = torch.cat(run.forward(encoder, run.rows["train"])).double().numpy()
    settings = {"features": "encoder", "kernel": "rbf", "components": None, "restarts": 2, "smooth_mm": 0.0,
                "mask_fraction": 0.0}
    fitted, _ = fit_features(features, run.ages["train"], np.zeros(1, dtype=bool), settings, float(run.spec["grid"]),
                             run.seed)
    unwrap(model).head = KernelHead.from_classical(fitted, run.age_mean, run.age_sd).to(run.device)
    model.eval()
    val_mae = float(np.abs(predict_rows(run, model, run.rows["val"]) - run.ages["val"]).mean()) \
        if len(run.rows["val"]) else float("nan")
    state.update(best_val=val_mae, best_epoch=0, phase="done", elapsed=state["elapsed"] + time.time() - t0)
    state["log"].append({"phase": "head", "epoch": 1, "train_loss": float("nan"), "val_mae": val_mae, "lr": float("nan"),
                         "seconds": time.time() - t0})
    log.info("%s: kernel head (GP on %d frozen features, %d PCA axes) val MAE %.3f", run.name, features.shape[1],
             fitted.components.shape[0], val_mae)


def fit_head(run: Run, model: nn.Module, state: dict, ckpt: Checkpoint, resumed: dict | None) -> None:
    head_cfg = run.spec["head"]
    if head_cfg.get("type", "linear") == "kernel":
        fit_kernel_head(run, model, state)
        return
    encoder = unwrap(model).encoder
    for p in encoder.parameters():
        p.requires_grad_(False)
    z_train, z_val, mu, sd = _head_features(run, encoder)
    y_train = torch.from_numpy((run.ages["train"] - run.age_mean) / run.age_sd).to(run.device)
    head = nn.Linear(z_train.shape[1], 1).to(run.device)
    head_opt = make_optimiser(head.parameters(), {**head_cfg, "name": "sgd"})
    head_sched = make_scheduler(head_opt, head_cfg, int(head_cfg["epochs"]))
    if resumed is not None and resumed["optimiser"] is not None:
        head.load_state_dict(resumed["state"]["head"])
        head_opt.load_state_dict(resumed["optimiser"])
        head_sched.load_state_dict(resumed["scheduler"])
    hb = min(int(head_cfg["batch_size"]), len(y_train))
    for epoch in progress_bar(range(state["epoch"], int(head_cfg["epochs"])), run.progress and run.main, f"{run.name} head"):
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
            state.update(best_val=val_mae, best_epoch=epoch, bad_epochs=0, best_state=cpu_copy(head))
        else:
            state["bad_epochs"] += 1
        train_loss = float(loss_sum) / max(1, n_batches) * run.age_sd
        state["elapsed"] += time.time() - t0
        state["log"].append({"phase": "head", "epoch": epoch + 1, "train_loss": train_loss, "val_mae": val_mae,
                             "lr": lr, "seconds": time.time() - t0})
        state.update(epoch=epoch + 1, head=cpu_copy(head))
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
