"""Pretrained initialisation (config ``init_from``): a network starts from a trained model's
weights, checked against this model's architecture, grid and encoder shapes first."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import nn

from brainage.core.io import InputError
from brainage.core.paths import model_files
from brainage.models.files import load_model, unwrap
from brainage.models.kinds import kind_named
from brainage.models.spec import source_mismatch
from brainage.train.run import Run

log = logging.getLogger("brainage.train.engine")


def start_from_pretrained(run: Run, model: nn.Module) -> dict | None:
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
    problem = source_mismatch(run.spec.settings, meta) or _shape_mismatch(target, source, meta, list(run.cache.shape))
    if problem:
        raise InputError(f"{run.name}: init_from {folder} does not fit this model ({problem})")
    target.encoder.load_state_dict(source.encoder.state_dict())
    # a source trained end to end hands on its head too when this model trains end to end
    whole = run.kind.joint_head and kind_named(meta["kind"], str(files["model"])).joint_head
    if whole:
        target.head.load_state_dict(source.head.state_dict())
        rebase_head(target.head, float(source.age_mean), float(source.age_sd), run.age_mean, run.age_sd)
    log.info("%s: %s starts from %s (%s model %s)", run.name, "network" if whole else "encoder", files["model"], meta["kind"], meta.get("name"))
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
