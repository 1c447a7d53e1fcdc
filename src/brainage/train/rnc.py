"""The Rank-N-Contrast kind's first stage: the encoder on the RNC loss of two augmented views
per subject (batches larger than memory through the gradient cache); its linear head is
fitted afterwards on the frozen encoder (:mod:`brainage.train.head`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from brainage.models.kinds import RNC
from brainage.train.run import Run


class RncEncoder:
    """The encoder on the Rank-N-Contrast loss of two augmented views per subject."""

    kind, log_phase, loss_label = RNC, "encoder", "RNC loss"
    views = RNC.views

    @staticmethod
    def trained_module(model: nn.Module) -> nn.Module:
        """What the optimiser moves: the encoder (the head is fitted afterwards, encoder frozen)."""
        return model.encoder

    def __init__(self, run: Run, model: nn.Module, net: nn.Module) -> None:
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
