"""A model's settings and their defaults, defined once: the study's settings.

One model = one entry under ``models:`` in the config. :func:`resolve_spec` fills in every
default; the trainer (``brainage.train.engine``), the networks (``brainage.models.networks``) and the config
schema (``workflow/schemas/config.schema.yaml``, whose ``models`` keys a test compares with the
fields here) all read them from this module. Torch-free.

Keys: backbone (resnet18|resnet34|resnet50|resnet101|sfcn), grid (mm), loss (l1|rnc|kl),
batch_size, epochs, augment (true: ``training.augment``; false; or a mapping overriding keys of
``training.augment`` for this model), patience (epochs without val improvement; null = never
stop early), width, conv1_stride, norm (batch|group|instance), inputs (intensity|tissue: what the
network sees, see :class:`Architecture`), gpus, optimiser {name adam|sgd, lr, momentum,
weight_decay, milestones (fractions of epochs), gamma}, rnc {temperature, chunk_size},
soft_label {bin_width, sigma} (loss kl only, :class:`SoftLabel`), head {epochs, lr, momentum,
weight_decay, milestones, gamma, batch_size, select (best_val|last), patience}, init_from (the folder of a trained model: model.pt and
model_card.json; see :func:`init_from_problems`).

``init_from`` (pretraining, e.g. on the simulated cohort): an RNC model's encoder starts from the
source's encoder; with ``epochs: 0`` it is used as is and only the linear head is fitted. An
end-to-end model starts from the whole source network (its encoder only when the source is an
RNC model) and trains ``epochs >= 1`` as usual. The source must have this model's architecture
and grid; a classical model starts from nothing.

A classical entry (``backbone: pca_gpr``, brainage.models.classical: PCA of smoothed tissue maps, then
a Gaussian process) needs only backbone and grid, takes ``classical`` {features, smooth_mm,
mask_fraction, components, kernel, restarts} and none of the network keys; it has no epochs and
no saliency (:func:`has_saliency`).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from brainage.core.paths import MODELS_ROOT, model_files
from brainage.models.kinds import CLASSICAL_BACKBONES, KINDS, RNC, STACK, STACK_BACKBONE, ModelKind, kind_of

#: l1 and kl train end to end (kl: soft age labels, :class:`SoftLabel`); rnc: an RNC encoder, then a head
LOSSES = ("l1", "rnc", "kl")
#: the soft-label loss (Peng et al. 2021): its network ends in one logit per age bin
SOFT_LABEL_LOSS = "kl"
#: what a network sees: the normalised T1w intensity (the study's), or soft CSF/GM/WM maps computed
#: from it inside the network (brainage.models.networks.TissueInput), as the classical model uses
INPUTS = ("intensity", "tissue")


@dataclass(frozen=True)
class SoftLabel:
    """The soft-label loss (``loss: kl``, SFCN, Peng et al. 2021): the ages are cut into bins of
    ``bin_width`` years (those within 2 years, or 2 ``sigma`` if wider, of the training ages are
    predicted: brainage.models.networks.AgeBinsHead), each training age becomes a Gaussian of SD
    ``sigma`` years over them, the network outputs a logit per bin, trained by the KL divergence;
    the predicted age is the expectation over the bins."""

    bin_width: float = 1.0
    sigma: float = 1.0


@dataclass(frozen=True)
class Architecture:
    """What defines a network (stored in model.pt): backbone and its shape.

    inputs: ``intensity`` (one channel) or ``tissue`` (the encoder's first step turns the volume
    into three channels, soft CSF/GM/WM maps); bin_width: None for one linear output (the
    standardised age), a width in years for a soft-label head (``loss: kl``). A model.pt written
    before a field existed loads with its default.
    """

    backbone: str
    width: float = 1.0
    conv1_stride: int = 1
    norm: str = "batch"
    inputs: str = "intensity"
    bin_width: float | None = None

    @classmethod
    def of(cls, spec: dict) -> "Architecture":
        """From a config entry (raw or resolved) or a stored architecture."""
        defaults = cls(spec["backbone"])
        if "bin_width" in spec:  # a stored architecture
            bins = spec["bin_width"]
        else:
            bins = (spec.get("soft_label") or {}).get("bin_width", SoftLabel.bin_width) \
                if str(spec.get("loss", "l1")).lower() == SOFT_LABEL_LOSS else None
        return cls(
            backbone=spec["backbone"],
            width=float(spec.get("width", defaults.width)),
            conv1_stride=int(spec.get("conv1_stride", defaults.conv1_stride)),
            norm=spec.get("norm", defaults.norm),
            inputs=str(spec.get("inputs", defaults.inputs)),
            bin_width=None if bins is None else float(bins),
        )


@dataclass(frozen=True)
class Optimiser:
    name: str
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: list = field(default_factory=list)
    gamma: float = 0.1


#: end-to-end: Adam lr 1e-3, constant; RNC encoder: SGD lr 0.5, step decay 0.1 at 70/80/90 %
OPTIMISER = {
    "l1": Optimiser("adam", 1e-3),
    "rnc": Optimiser("sgd", 0.5, 0.9, 1e-4, [0.7, 0.8, 0.9], 0.1),
    "kl": Optimiser("adam", 1e-3),
}


@dataclass(frozen=True)
class Rnc:
    temperature: float = 2.0
    chunk_size: int | None = None


@dataclass(frozen=True)
class Head:
    """The head on the frozen RNC encoder. ``type: linear`` (the study's): SGD lr 0.05, decay 0.2
    at 60/75/90 %. ``type: kernel``: a Gaussian process (RBF + white noise, hyper-parameters by
    the marginal likelihood of the training subjects) on the standardised frozen features,
    brainage.train.head; the SGD keys are then unused."""

    type: str = "linear"
    epochs: int = 100
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: list = field(default_factory=lambda: [0.6, 0.75, 0.9])
    gamma: float = 0.2
    batch_size: int = 32
    select: str = "best_val"
    patience: int | None = None


@dataclass(frozen=True)
class ModelDefaults:
    """Defaults of the top-level keys (backbone, grid, loss, batch_size, epochs are required)."""

    augment: bool | dict = True
    patience: int | None = None
    width: float = Architecture.width
    conv1_stride: int = Architecture.conv1_stride
    norm: str = Architecture.norm
    inputs: str = Architecture.inputs
    gpus: int = 0
    #: this model's training seed (null: the run's ``seed``); the same entry under several seeds,
    #: combined by a stack with ``combine: mean``, is a seed ensemble
    seed: int | None = None


@dataclass(frozen=True)
class Classical:
    """The classical baseline (brainage.models.classical, brainageR-style): voxel features, PCA, GP.

    features: tissue (soft CSF/GM/WM maps; 6.2 y MAE on 86 real IXI heads at 4 mm, 5-fold CV)
    or intensity (8.0 y); smooth_mm: Gaussian sigma (mm); mask_fraction: a voxel is in the mask
    when it is brain in at least this share of the training volumes; components: PCA axes kept
    (null: all, n_train - 1); kernel: rbf or linear (6.35 y); restarts: extra seeded starts of
    the marginal-likelihood optimiser.
    """

    features: str = "tissue"
    smooth_mm: float = 4.0
    mask_fraction: float = 0.5
    components: int | None = None
    kernel: str = "rbf"
    restarts: int = 2


#: what every entry needs; a network also needs NETWORK_REQUIRED (and loss, l1 when absent)
REQUIRED = ("backbone", "grid")
NETWORK_REQUIRED = ("batch_size", "epochs")
#: every key a model entry may hold (the schema's ``models`` properties)
KEYS = ("backbone", "grid", "loss", "batch_size", "epochs", *(f.name for f in fields(ModelDefaults)),
        "optimiser", "rnc", "soft_label", "head", "classical", "init_from", "members", "combine")
#: the keys of each nested mapping
NESTED_KEYS = {"optimiser": tuple(f.name for f in fields(Optimiser)), "rnc": tuple(f.name for f in fields(Rnc)),
               "soft_label": tuple(f.name for f in fields(SoftLabel)), "head": tuple(f.name for f in fields(Head)),
               "classical": tuple(f.name for f in fields(Classical))}


def has_saliency(entry: dict) -> bool:
    """Whether Grad-RAM saliency applies (networks only; a classical model has no layers)."""
    return kind_of(entry).saliency


def entry_problems(name: str, entry: dict) -> list[str]:
    """What a ``models:`` entry lacks or holds wrongly for its kind, one ``config ...`` line each
    (brainage.config lists them with the schema's problems, before any job)."""
    where = f"config models.{name}"
    if kind_of(entry) is STACK:
        extra = [k for k in entry if k not in (*REQUIRED, "members", "combine")]
        lines = [f"{where}.{k}: a stacked model (backbone {STACK_BACKBONE}) takes only grid and members, not {k!r}"
                 for k in extra]
        members = entry.get("members")
        if not isinstance(members, list) or len(members) < 2:
            lines.append(f"{where}.members: a stacked model needs a list of at least two other models' names")
        if entry.get("combine", "fitted") not in STACK_COMBINE:
            lines.append(f"{where}.combine: {entry.get('combine')!r} is not one of {', '.join(STACK_COMBINE)}")
        return lines
    if "members" in entry:
        return [f"{where}.members: only a stacked model (backbone {STACK_BACKBONE}) has members"]
    if not kind_of(entry).network:
        extra = [k for k in entry if k not in (*REQUIRED, "classical", "init_from")]
        lines = [f"{where}.{k}: a classical model ({entry['backbone']}) takes no {k!r}; its settings go "
                 f"under 'classical' ({', '.join(NESTED_KEYS['classical'])})" for k in extra]
        if "init_from" in entry:
            lines.append(f"{where}.init_from: a classical model ({entry['backbone']}) has no network weights to "
                         f"start from a trained model; remove init_from")
        return lines
    lines = [f"{where}: a network needs {k!r}" for k in ("loss", *NETWORK_REQUIRED) if k not in entry]
    if "classical" in entry:
        lines.append(f"{where}.classical: only for backbone {' or '.join(CLASSICAL_BACKBONES)}")
    if "soft_label" in entry and str(entry.get("loss", "l1")).lower() != SOFT_LABEL_LOSS:
        lines.append(f"{where}.soft_label: only for loss {SOFT_LABEL_LOSS} (this model: loss {entry.get('loss', 'l1')})")
    return lines + init_from_problems(name, entry)


#: how a stack weighs its members: convex weights fitted on out-of-fold predictions, or equal
#: weights (an ensemble: e.g. the same entry under several ``seed`` values)
STACK_COMBINE = ("fitted", "mean")


def _stacked_under(name: str, models: dict, seen: frozenset = frozenset()) -> set[str]:
    """Every model a stack combines, through stacked members (cycles stop at ``seen``)."""
    out: set[str] = set()
    for member in (models.get(name) or {}).get("members") or []:
        if member in seen or not isinstance(models.get(member), dict):
            continue
        out.add(member)
        if kind_of(models[member]) is STACK:
            out |= _stacked_under(member, models, seen | {name})
    return out


def stack_problems(name: str, entry: dict, models: dict, scheme: str) -> list[str]:
    """A stacked model against the other entries and the splits, one ``config ...`` line each:
    its members are other entries on its grid (stacks too, a seed ensemble say, but never one
    that contains this stack), and the run cross-validates (its weights are fitted on
    out-of-fold predictions)."""
    where, lines = f"config models.{name}", []
    if scheme != "kfold":
        lines.append(f"{where}: a stacked model is fitted on out-of-fold predictions; it needs "
                     f"training.splits.scheme: kfold (this run: {scheme})")
    for member in entry.get("members") or []:
        other = models.get(member)
        if not isinstance(other, dict):
            lines.append(f"{where}.members: {member!r} is not a model of 'models' ({', '.join(models)})")
        elif member == name or (kind_of(other) is STACK and name in _stacked_under(member, models)):
            lines.append(f"{where}.members: {member!r} contains {name!r} itself; a stack cannot contain itself")
        elif "grid" in entry and "grid" in other and float(other["grid"]) != float(entry["grid"]):
            lines.append(f"{where}.members: {member!r} is on the {float(other['grid']):g} mm grid, the stack on "
                         f"{float(entry['grid']):g} mm; a stack's members share its grid")
    return lines


def init_from_problems(name: str, entry: dict) -> list[str]:
    """A network entry's ``epochs: 0`` and ``init_from``, one ``config ...`` line at most.

    The source is checked against its model card when the card exists already (config time);
    a source that this run trains first (under results/models/) is checked by the trainer
    against its model.pt at job start.
    """
    where, source = f"config models.{name}", entry.get("init_from")
    loss = entry.get("loss", "l1")
    if entry.get("epochs") == 0 and kind_of(entry) is not RNC:
        return [f"{where}.epochs: 0 trains nothing in an end-to-end model (loss {loss}); give epochs >= 1 "
                f"(with init_from they start from the pretrained weights)"]
    if entry.get("epochs") == 0 and not source:
        return [f"{where}.epochs: 0 needs init_from (a pretrained encoder used as is, only its linear head fitted)"]
    if not source:
        return []
    files = model_files(source)
    if not files["model"].is_file():
        if Path(source).resolve().is_relative_to(MODELS_ROOT.resolve()):
            return []  # possibly a model this run trains first
        return [f"{where}.init_from: {source} holds no model.pt (give the folder of a trained model, "
                f"results/models/<name> of a finished run)"]
    if not files["card"].is_file():
        return []
    problem = source_mismatch(entry, json.loads(files["card"].read_text()))
    return [f"{where}.init_from: {source} does not fit this model ({problem})"] if problem else []


def source_mismatch(entry: dict, source: dict) -> str | None:
    """What keeps model ``entry`` from starting from a trained model (its card or model.pt meta), or None."""
    kind = KINDS.get(str(source.get("kind")))  # a card of an unknown kind fails below, on its architecture
    if kind is not None and not kind.network:
        return "the source is a classical model, it has no network weights"
    ours, theirs = asdict(Architecture.of(entry)), asdict(Architecture.of(source["architecture"]))
    # the head matters only where the whole network is handed on (end to end from end to end)
    whole = kind_of(entry).joint_head and kind is not None and kind.joint_head
    diffs = [f"{k} {ours[k]} here, {theirs[k]} in the source" for k in ours
             if ours[k] != theirs[k] and k != "bin_width"]
    if whole and (ours["bin_width"] or theirs["bin_width"]):
        diffs.append("a soft-label head (loss kl) is neither handed on to nor taken from an end-to-end model; "
                     "start from an RNC model's encoder, or from scratch")
    if float(source["grid_res"]) != float(entry["grid"]):
        diffs.append(f"grid {float(entry['grid']):g} mm here, {float(source['grid_res']):g} mm in the source")
    return "; ".join(diffs) or None


def init_from_input(entry: dict) -> dict[str, str]:
    """The training job's input ``init_from``: the source's model.pt (a new source retrains), or none."""
    source = (entry or {}).get("init_from")
    return {"init_from": str(model_files(source)["model"])} if source and kind_of(entry).network else {}


def _resolve_classical(spec: dict) -> dict:
    if "grid" not in spec:
        raise ValueError("model config needs 'grid'")
    problems = entry_problems(str(spec["backbone"]), spec)
    if problems:
        raise ValueError(problems[0])
    spec["classical"] = {**asdict(Classical()), **(spec.get("classical") or {})}
    return spec


def resolve_spec(entry: dict) -> dict:
    """A model's config entry with every default filled in (the study's settings)."""
    spec = copy.deepcopy(dict(entry))
    if kind_of(spec) is STACK:
        problems = entry_problems(str(spec.get("backbone")), spec)
        if problems:
            raise ValueError(problems[0])
        return spec
    if not kind_of(spec).network:
        return _resolve_classical(spec)
    loss = spec.setdefault("loss", "l1")
    if loss not in LOSSES:
        raise ValueError(f"model loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    for key in (*REQUIRED, *NETWORK_REQUIRED):
        if key not in spec:
            raise ValueError(f"model config needs {key!r}")
    if "classical" in spec or ("soft_label" in spec and loss != SOFT_LABEL_LOSS):
        raise ValueError(next(line for line in entry_problems(str(spec["backbone"]), spec)
                              if re.search(r"\.(classical|soft_label):", line)))
    for key, value in asdict(ModelDefaults()).items():
        spec.setdefault(key, value)
    if spec["inputs"] not in INPUTS:
        raise ValueError(f"model inputs must be one of {', '.join(INPUTS)}, got {spec['inputs']!r}")
    if loss == SOFT_LABEL_LOSS:
        spec["soft_label"] = {**asdict(SoftLabel()), **(spec.get("soft_label") or {})}
    spec["optimiser"] = {**asdict(OPTIMISER[loss]), **(spec.get("optimiser") or {})}
    spec["rnc"] = {**asdict(Rnc()), **(spec.get("rnc") or {})}
    spec["head"] = {**asdict(Head()), **(spec.get("head") or {})}
    return spec


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """One ``models:`` entry resolved once, at the edge (the training script), and passed on.

    name: the entry's name; kind: its :class:`~brainage.models.kinds.ModelKind`; settings: the
    entry with every default filled in (:func:`resolve_spec`), as model.pt and the model card
    record it. ``spec["key"]`` and ``spec.get`` read the settings.
    """

    name: str
    kind: ModelKind
    settings: dict

    @classmethod
    def resolve(cls, name: str, entry: dict) -> "ModelSpec":
        settings = resolve_spec(entry)
        return cls(name, kind_of(settings), settings)

    def __getitem__(self, key: str):
        return self.settings[key]

    def get(self, key: str, default=None):
        return self.settings.get(key, default)

