"""Exact resume of a training run: checkpoints, RNG states, and SIGTERM (SLURM preemption).

A checkpoint (atomic write) holds the model, the optimiser and scheduler of the running stage,
the RNG states and the trainer's position and bookkeeping (``state``: phase, epoch, step, early
stopping, log). It is used only by a run whose config fingerprint (model entry, training
section, seed, split membership, grid, process count) is the same; an edit of the code alone
resumes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from brainage.models.files import save_torch, unwrap

log = logging.getLogger("brainage.train.engine")


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able ``parts`` (the config a checkpoint belongs to)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rng_state() -> dict:
    """Every generator's state in types ``torch.load(weights_only=True)`` reads (tensors, lists)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoint:
    """``out_dir/checkpoint.pt`` of one run; only the main process writes it."""

    def __init__(self, path: str | Path, fingerprint: str, writer: bool = True) -> None:
        self.path, self.fingerprint, self.writer = Path(path), fingerprint, writer

    def load(self, name: str) -> dict | None:
        """The saved checkpoint when it belongs to this config (RNG states restored), else None."""
        if not self.path.exists():
            return None
        ckpt = torch.load(self.path, map_location="cpu", weights_only=True)  # tensors and plain values only
        if ckpt.get("fingerprint") != self.fingerprint:
            log.info("%s: ignoring %s (written for another config)", name, self.path)
            return None
        set_rng_state(ckpt["rng"])
        state = ckpt["state"]
        log.info("%s: resumed from %s at phase %s epoch %d step %d", name, self.path, state["phase"], state["epoch"], state["step"])
        return ckpt

    def save(self, model: nn.Module, state: dict, optimiser=None, scheduler=None) -> None:
        if not self.writer:
            return
        save_torch(
            {"fingerprint": self.fingerprint, "model": unwrap(model).state_dict(), "state": state,
             "optimiser": optimiser.state_dict() if optimiser is not None else None,
             "scheduler": scheduler.state_dict() if scheduler is not None else None, "rng": rng_state()},
            self.path,
        )

    def remove(self) -> None:
        if self.writer:
            self.path.unlink(missing_ok=True)


class StopRequest:
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
