"""The kinds of brain-age model, defined once: what each is, and what follows from it.

A model's kind decides how it is fitted (``brainage.train``: one trainer per kind, found in
``brainage.train.engine.TRAINERS``), how its model.pt loads (``brainage.models.files``), whether
Grad-RAM saliency applies (``brainage.apply``), and its role in the study's tables
(``brainage.report.roles``). Code asks the kind (``kind_of(entry).network``), never compares a
kind's name or a loss string itself. Torch-free: the workflow reads it at parse time.

Adding a kind: a :class:`ModelKind` here, a trainer in ``brainage.train`` registered in
``TRAINERS``, and (when it is not a network) a loader in ``brainage.models.files``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from brainage.core.io import InputError


@dataclass(frozen=True)
class ModelKind:
    """One kind of model.

    name: stored as ``meta["kind"]`` in model.pt and in the model card;
    network: a network with layers (epochs, init_from, Grad-RAM saliency); otherwise arrays;
    joint_head: the network's head is trained with its encoder (end-to-end), so a pretrained
    source of the same kind hands on its whole network, not only its encoder;
    views: augmented views of a subject per training sample (2: contrastive pairs);
    role: its family of rows in the study's tables (e2e, rnc, classical, stack);
    trained: fitted by a training job on volumes (``brainage.train.engine.TRAINERS``); a stack is
    fitted on other models' predictions (brainage.train.stack), an ensemble is assembled.
    """

    name: str
    description: str
    network: bool
    joint_head: bool = False
    views: int = 0
    role: str = ""
    trained: bool = True

    @property
    def saliency(self) -> bool:
        """Whether Grad-RAM saliency applies (a classical model has no layers)."""
        return self.network


E2E = ModelKind("e2e", "end-to-end regression network (L1 on the standardised age, or KL on soft age labels)", network=True, joint_head=True,
                views=1, role="e2e")
RNC = ModelKind("rnc", "Rank-N-Contrast encoder, then a linear head on the frozen encoder", network=True, views=2,
               role="rnc")
CLASSICAL = ModelKind("classical", "PCA of smoothed tissue maps, then a Gaussian process (brainageR-style)",
                      network=False, role="classical")
STACK = ModelKind("stack", "a weighted mean of other models' predictions, weights fitted on out-of-fold predictions",
                  network=False, role="stack", trained=False)
#: a deployed model: the mean (or a stack's weighted mean) of trained models, applied as one
#: (brainage.models.ensemble); written after training, never a ``models:`` entry of its own
ENSEMBLE = ModelKind("ensemble", "the weighted mean of several trained models' predictions (one model file)",
                     network=False, role="ensemble", trained=False)
#: every kind, by name
KINDS: dict[str, ModelKind] = {k.name: k for k in (E2E, RNC, CLASSICAL, STACK, ENSEMBLE)}

#: backbones that are not networks: a classical model (brainage.models.classical)
CLASSICAL_BACKBONES = ("pca_gpr",)
#: the backbone of a stacked model (``members:`` other entries; brainage.train.stack)
STACK_BACKBONE = "stack"
#: the loss that makes a network an RNC encoder (any other loss trains end to end)
RNC_LOSS = "rnc"


def kind_of(entry: Mapping | None) -> ModelKind:
    """The kind of a ``models:`` config entry (raw or resolved)."""
    entry = entry or {}
    if str(entry.get("backbone", "")).lower() == STACK_BACKBONE:
        return STACK
    if str(entry.get("backbone", "")).lower() in CLASSICAL_BACKBONES:
        return CLASSICAL
    return RNC if str(entry.get("loss", "l1")).lower() == RNC_LOSS else E2E


def kind_named(name: str, where: str = "model") -> ModelKind:
    """The kind recorded in a model file or card (``meta["kind"]``)."""
    try:
        return KINDS[name]
    except KeyError:
        raise InputError(f"{where}: unknown model kind {name!r} (known: {', '.join(KINDS)})") from None
