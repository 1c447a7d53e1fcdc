"""The shared epoch loop of a network's first stage (end-to-end, or the RNC encoder): one
optimisation step per batch by the kind's stage object (``loss``), evaluation, early stopping
and a checkpoint after every epoch, every ``checkpoint_every_steps`` steps and on SIGTERM."""

from __future__ import annotations

import logging
import math
import time

import torch
from torch import nn

from brainage.models.files import to_device
from brainage.train.augment import augment_volume
from brainage.train.checkpoint import Checkpoint, StopRequest
from brainage.train.data import VolumeViews, epoch_batches, loader
from brainage.train.run import Run, TrainingInterrupted, progress_bar

log = logging.getLogger("brainage.train.engine")


def fit_epochs(run: Run, stage, opt, sched, state: dict, ckpt: Checkpoint, max_epochs_this_run: int | None) -> None:
    """Epochs of stage 1 from ``state``'s position; checkpoint after each (and on SIGTERM)."""
    epochs = int(run.spec["epochs"])
    every_steps = int(run.training.get("checkpoint_every_steps", 0) or 0)
    workers, cuda = int(run.training.get("num_workers", 0)), run.device.type == "cuda"
    dataset = VolumeViews(run.cache, run.rows["train"], run.ages["train"], run.aug_cfg, stage.views, run.seed, 1,
                       augment_here=not cuda)
    epochs_this_run = 0
    if epochs == 0:  # a pretrained RNC encoder used as is (init_from): straight to its head
        stage.finish(state)
    for epoch in progress_bar(range(state["epoch"], epochs), run.progress and run.main, f"{run.name} {run.kind.name}"):
        stage.model.train()
        t0 = time.time()
        batches = epoch_batches(len(run.rows["train"]), run.batch_size, run.seed, 1, epoch, run.rank, run.world)
        loss_sum = torch.tensor(state["loss_sum"], device=run.device)
        for step, (x, y, params) in enumerate(loader(dataset, batches[state["step"]:], workers, cuda), start=state["step"]):
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


def trained_network(run: Run, model: nn.Module, stage_cls) -> nn.Module:
    """What stage 1 runs (``stage_cls.trained_module``: the model, or its encoder), compiled and
    DDP-wrapped as asked."""
    compiled = torch.compile(model) if run.training.get("compile", False) and run.device.type == "cuda" else model
    trained = stage_cls.trained_module(compiled)
    if run.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(trained, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    return trained
