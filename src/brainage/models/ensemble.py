"""One model file that applies several trained models as one: their (weighted) mean prediction.

A cross-validated model is deployed as the ensemble of its fold models (equal weights: the
mean of their predictions, brainage.train.deploy); a stacked model (``backbone: stack``,
brainage.train.stack) as its members' deployed ensembles with the weights and intercept fitted
on their out-of-fold predictions. Either way ``results/models/<name>/model.pt`` is one file that
``brainage.models.files.load_model`` returns as a module mapping volumes (B, 1, D, H, W) to ages
(B, 1), like any model.

File layout (``torch.load(weights_only=True)`` safe): ``state_dict`` holds every member's
tensors under the prefix ``m<i>.``; ``meta["members"]`` holds each member's own meta (kind,
architecture, ...), ``meta["weights"]`` and ``meta["intercept"]`` the combination. Members are
themselves any kind, an ensemble included (a stack of deployed cross-validated models).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from brainage.models.kinds import ENSEMBLE

__all__ = ["EnsembleAgeModel", "ensemble_blob", "split_members", "KIND"]

#: ``meta["kind"]`` of an ensemble model.pt
KIND = ENSEMBLE.name


class EnsembleAgeModel(nn.Module):
    """``intercept + sum_i weights[i] * member_i(x)``: volumes (B, 1, D, H, W) -> ages (B, 1)."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float], intercept: float = 0.0) -> None:
        super().__init__()
        if len(members) != len(weights) or not members:
            raise ValueError(f"an ensemble needs one weight per member, got {len(members)} members, {len(weights)} weights")
        self.members = nn.ModuleList(members)
        self.weights = [float(w) for w in weights]
        self.intercept = float(intercept)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for weight, member in zip(self.weights, self.members):
            if weight == 0.0:
                continue
            y = member(x).float().reshape(x.shape[0], -1)[:, :1] * weight
            out = y if out is None else out + y
        if out is None:
            out = torch.zeros((x.shape[0], 1), device=x.device)
        return out + self.intercept


def ensemble_blob(blobs: Sequence[dict], weights: Sequence[float], intercept: float, meta: dict) -> dict:
    """A model.pt's ``{"state_dict", "meta"}`` combining member blobs (each ``{"state_dict", "meta"}``
    as load_model reads them); ``meta`` gives the ensemble's own keys (name, grid_res, ...)."""
    state = {f"m{i}.{key}": value for i, blob in enumerate(blobs) for key, value in blob["state_dict"].items()}
    full = {**meta, "kind": KIND, "members": [blob["meta"] for blob in blobs],
            "weights": [float(w) for w in weights], "intercept": float(intercept)}
    return {"state_dict": state, "meta": full}


def split_members(state_dict: dict, meta: dict) -> list[tuple[dict, dict]]:
    """Each member's ``(state_dict, meta)`` of an ensemble model.pt."""
    members = meta.get("members") or []
    parts: list[dict] = [{} for _ in members]
    for key, value in state_dict.items():
        index, _, rest = key.partition(".")
        parts[int(index[1:])][rest] = value
    return list(zip(parts, members))


def build_ensemble(state_dict: dict, meta: dict, build_member: Callable[[dict, dict], nn.Module]) -> EnsembleAgeModel:
    """The module of an ensemble model.pt; ``build_member(state_dict, meta)`` builds one member."""
    members = [build_member(state, member_meta) for state, member_meta in split_members(state_dict, meta)]
    return EnsembleAgeModel(members, meta["weights"], meta.get("intercept", 0.0)).eval()
