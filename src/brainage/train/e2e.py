"""The end-to-end kind's stage: encoder and head trained together, on the L1 of the standardised
age or (``loss: kl``, a soft-label head) on the KL divergence to Gaussian soft age labels;
validation MAE every epoch, early stopping, the best-validation weights kept."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import numpy as np

from brainage.models.files import autocast, unwrap
from brainage.models.kinds import E2E
from brainage.models.networks import AGE_BIN_MARGIN, AgeBinsHead
from brainage.train.losses import SoftLabelKLLoss
from brainage.train.run import Run, cpu_copy, predict_rows, recompute_batchnorm_stats


class EndToEnd:
    """Encoder + head on the L1 of the standardised age, or on the soft-label KL loss (a soft-label
    head); best-validation weights, early stopping."""

    kind, log_phase, loss_label = E2E, "e2e", "L1 (years)"
    views = E2E.views

    @staticmethod
    def trained_module(model: nn.Module) -> nn.Module:
        """What the optimiser moves: the whole network."""
        return model

    def __init__(self, run: Run, model: nn.Module, net: nn.Module) -> None:
        self.run, self.model, self.net = run, model, net
        self.soft_label: SoftLabelKLLoss | None = None
        head = unwrap(model).head
        if isinstance(head, AgeBinsHead):
            # the bins the model predicts: within 2 years (2 label SDs when wider) of the training
            # ages, the same on every rank
            sigma = float(run.spec["soft_label"]["sigma"])
            head.set_age_range(float(run.ages["train"].min()), float(run.ages["train"].max()),
                               margin=max(AGE_BIN_MARGIN, 2.0 * sigma))
            self.soft_label = SoftLabelKLLoss(head.edges, sigma, head.active).to(run.device)
            self.loss_label = "KL (soft age labels)"

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        run = self.run
        xb = x[:, 0].contiguous(memory_format=torch.channels_last_3d) if run.channels_last else x[:, 0]
        if self.soft_label is not None:
            with autocast(run.device, run.amp):
                logits = self.net(xb, bin_logits=True)
            loss = self.soft_label(logits.float(), y)
            loss.backward()
            return loss
        with autocast(run.device, run.amp):
            pred = self.net(xb)
        loss = F.l1_loss(pred.float(), y)  # in years; same minimiser as L1 on z
        (loss / run.age_sd).backward()  # gradient of the L1 of the standardised age
        return loss

    def evaluate(self, state: dict, epoch: int) -> float:
        run = self.run
        recompute_batchnorm_stats(unwrap(self.model), run)
        val_mae = float(np.abs(predict_rows(run, self.model, run.rows["val"]) - run.ages["val"]).mean())
        if val_mae < state["best_val"]:
            state.update(best_val=val_mae, best_epoch=epoch, bad_epochs=0, best_state=cpu_copy(unwrap(self.model)))
        else:
            state["bad_epochs"] += 1
        return val_mae

    def stops_early(self, state: dict) -> bool:
        patience = self.run.spec["patience"]
        return patience is not None and state["bad_epochs"] >= int(patience)

    def finish(self, state: dict) -> None:
        unwrap(self.model).load_state_dict(state["best_state"])
        state["phase"] = "done"
