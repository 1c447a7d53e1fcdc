"""The shared model layer: device choice, model files, and the one batched forward pass.

Used by the training engine (``brainage.train.engine``) and by everything that applies a trained
model (``brainage.apply.infer``, ``brainage.apply.explain``, ``brainage.apply.predict``), so that applying a
model never imports the trainer. Torch is needed here; the report side (statistics, tables,
figures) never imports this module.

A model file (``results/models/<name>/model.pt``) holds ``{"state_dict", "meta"}``; meta keys:
name, kind (e2e|rnc|classical), architecture (networks), feature_dim, grid_res, grid_shape, intensity_normalisation
(apply brainage.data.cache.normalise_intensity), preprocess, age (train_mean, train_sd, train_min,
train_max), config, training, seed, metrics; a classical model (brainage.models.classical) holds
arrays in ``state_dict`` and its settings and scalars in ``meta["classical"]``, and loads as a
``ClassicalAgeModel`` module that maps volumes to ages like a network.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from brainage.core.io import InputError, atomic_path, json_text
from brainage.models.classical import ClassicalAgeModel
from brainage.models.ensemble import build_ensemble
from brainage.models.kinds import ENSEMBLE, kind_named
from brainage.models.networks import AgeModel, build_age_model

__all__ = [
    "pick_device", "load_model", "read_blob", "model_from_blob", "save_model", "save_torch", "unwrap", "to_device", "autocast", "iter_batches",
    "forward_batches",
]


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when present, else the CPU (the same code runs on both)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"device {device!r} is not a device name (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device {device!r}: no CUDA GPU is available here; use auto or cpu")
        if dev.index is not None and dev.index >= count:
            raise InputError(f"device {device!r}: only {count} CUDA GPU(s) here (cuda:0-cuda:{count - 1})")
    elif dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r}: only auto, cpu, cuda and cuda:N are supported")
    return dev


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file renamed at the end (never a partial file).

    Saved through a file object: given a path, torch names the zip's records after the file
    (here a random temporary name), so the same weights gave different bytes every run."""
    with atomic_path(Path(path), suffix=".pt") as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def save_model(state_dict: dict, meta: dict, path: str | Path) -> None:
    """A model file; metadata reduced to JSON types (no numpy scalars, no tuples), so that it
    loads with ``torch.load(weights_only=True)``, which builds tensors and plain containers and
    runs no code."""
    save_torch({"state_dict": state_dict, "meta": json.loads(json_text(meta, indent=None))}, path)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[AgeModel, dict]:
    """A trained model (eval mode) and its metadata (module docstring) from a model file."""
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
    return model_from_blob(blob["state_dict"], meta, str(path)).to(map_location).eval(), meta


def read_blob(path: str | Path) -> dict:
    """A model.pt's raw ``{"state_dict", "meta"}`` (tensors and plain values), e.g. to combine
    fold models into one file (brainage.models.ensemble)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "state_dict" not in blob or not isinstance(blob.get("meta"), dict):
        raise InputError(f"{path}: not a brainage model.pt (no state_dict and meta)")
    return blob


def model_from_blob(state_dict: dict, meta: dict, where: str = "model") -> nn.Module:
    """The module of one model.pt's contents, by its kind (an ensemble's members recursively)."""
    kind = kind_named(str(meta.get("kind")), where)
    if kind is ENSEMBLE:
        return build_ensemble(state_dict, meta, lambda state, member: model_from_blob(state, member, where))
    if not kind.network:  # brainage.models.classical: arrays
        return ClassicalAgeModel.from_blob(state_dict, meta)
    model = build_age_model(meta["architecture"], meta["age"]["train_mean"], meta["age"]["train_sd"], meta.get("head"))
    model.load_state_dict(state_dict)
    return model.eval()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and ``torch.compile`` wrappers."""
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """``x`` on ``device`` (non-blocking from pinned memory), channels-last 3D when asked."""
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision on ``device`` in ``dtype`` (bf16 on GPUs), or nothing when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def iter_batches(
    keys: Sequence, load_volume: Callable[[Any], np.ndarray], batch_size: int
) -> Iterator[tuple[list, torch.Tensor]]:
    """Batches of ``(keys, volumes (B, 1, D, H, W) float32)`` read with ``load_volume(key) -> (D, H, W)``.

    Keys are subject ids (``CachedVolumes.volume``) or cache rows (``CachedVolumes.row``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(keys), batch_size):
        chunk = list(keys[start : start + batch_size])
        arrays = [np.asarray(load_volume(key), dtype=np.float32) for key in chunk]
        yield chunk, torch.from_numpy(np.stack(arrays))[:, None]


def forward_batches(
    model: nn.Module,
    batches: Iterator[tuple[list, torch.Tensor]],
    device: torch.device,
    channels_last: bool = False,
    amp: torch.dtype | None = None,
) -> Iterator[tuple[list, torch.Tensor]]:
    """``(keys, model(volumes) as float32 on the CPU)`` per batch: the one forward loop of training
    (validation, BatchNorm statistics, head features) and inference. The caller chooses the
    model's mode and the gradient context (``torch.no_grad``/``inference_mode``)."""
    for keys, volumes in batches:
        with autocast(device, amp):
            out = model(to_device(volumes, device, channels_last))
        yield keys, out.float().cpu()
