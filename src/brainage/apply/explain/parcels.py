"""Grad-RAM saliency: which parts of the brain drive a model's age estimate.

Grad-RAM (gradient-weighted regression activation map) is Grad-CAM for a regression output:
the gradient of the predicted age with respect to the activations of the last convolutional
block, channel weights = spatial mean of that gradient, ReLU of the weighted channel sum,
trilinear upsampling to the input grid, min-max normalisation to [0, 1] per subject.

The maps are then averaged per group (HC age group x sex, AD, PD), differenced against
age-matched healthy controls, and summarised per AAL116 region (Figures 4, 5 and 7 of the
study). On the simulated cohort the region ranking is checked against the regions the
simulator changed most (precision at k against random rankings; see :func:`relevant_regions`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from brainage.core.io import InputError, nifti_image, read_participants, save_figure, save_nifti
from brainage.core.paths import SALIENCY_METHODS as METHODS, SALIENCY_METHOD_LABELS as METHOD_LABELS, saliency_file

log = logging.getLogger(__name__)

#: the study's age groups (years): [low, high); the last is open-ended
AGE_GROUPS: tuple[tuple[str, float, float], ...] = (
    ("20-40", 20.0, 40.0),
    ("40-60", 40.0, 60.0),
    ("60-80", 60.0, 80.0),
    ("80plus", 80.0, float("inf")),
)
SEXES = ("F", "M")


# --------------------------------------------------------------------------------------
# Grad-RAM
# --------------------------------------------------------------------------------------


def find_layer(model: nn.Module, target_layer: str) -> nn.Module:
    """The block named ``target_layer`` (dotted path) in ``model`` or in ``model.encoder``.

    ``AgeModel`` keeps its convolutional trunk under ``.encoder``, so ``"layer4"`` resolves
    to ``model.encoder.layer4`` for both the end-to-end and the RNC encoder + head models.
    """
    for root in (model, getattr(model, "encoder", None)):
        if root is None:
            continue
        try:
            return root.get_submodule(target_layer)
        except AttributeError:
            continue
    names = [n for n, _ in model.named_modules() if n and n.count(".") <= 1]
    raise ValueError(f"no layer {target_layer!r} in {type(model).__name__}; candidates: {', '.join(names[:20])}")


#: ``explain.target_layer: auto`` picks the deepest block whose map has at least this many
#: voxels along every axis: at layer4 a 4 mm demo grid leaves 2 x 2 x 2 voxels, which can only
#: draw a ramp, not localise a region
MIN_MAP_VOXELS = 6


def block_shapes(model: nn.Module, shape: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, spatial shape)`` of each candidate block's output, in the order the forward pass
    runs them, for one input volume of ``shape``: the residual stages ``layerN`` (ResNets) and the
    ``features.K`` blocks and ``layer4`` (SFCN), named relative to ``model.encoder``."""
    import re

    encoder = getattr(model, "encoder", model)
    seen: list[tuple[str, tuple[int, ...]]] = []
    handles = [module.register_forward_hook(lambda _m, _i, out, name=name: seen.append((name, tuple(out.shape[2:]))))
               for name, module in encoder.named_modules() if re.fullmatch(r"layer\d+|features\.\d+", name)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            encoder(torch.zeros((1, 1, *shape), device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen


def auto_target_layer(model: nn.Module, shape: Sequence[int], min_voxels: int = MIN_MAP_VOXELS) -> str:
    """The deepest block whose map keeps ``min_voxels`` voxels along every axis (for inputs of
    ``shape``); when none does, the block with the largest map."""
    shapes = block_shapes(model, shape)
    if not shapes:
        raise ValueError(f"no layerN or features.K blocks in {type(model).__name__} to take Grad-RAM from")
    fine = [name for name, s in shapes if min(s) >= min_voxels]
    return fine[-1] if fine else max(shapes, key=lambda item: min(item[1]))[0]


def grad_ram(model: nn.Module, volumes: torch.Tensor, target_layer: str = "layer4") -> torch.Tensor:
    """Grad-RAM maps of a batch: ``volumes (B, 1, D, H, W)`` -> ``(B, D, H, W)`` in [0, 1].

    One forward and one backward pass for the whole batch. The model is run in eval mode
    (BatchNorm uses its running statistics, so each subject's map does not depend on the
    others in the batch) and restored to its previous mode afterwards. The backward pass
    stops at the target block: its output is re-entered into the graph as a leaf, so the
    trunk below it (most of the network) is never differentiated.
    """
    if volumes.ndim != 5 or volumes.shape[1] != 1:
        raise ValueError(f"volumes must be (B, 1, D, H, W), got {tuple(volumes.shape)}")
    layer = find_layer(model, target_layer)
    store: dict[str, torch.Tensor] = {}

    def _keep(_module, _inputs, output):
        leaf = output.detach().requires_grad_(True)
        store["acti"] = leaf
        return leaf

    handle = layer.register_forward_hook(_keep)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            ages = model(volumes).reshape(volumes.shape[0], -1)[:, 0]  # (B,)
            acti = store["acti"]  # (B, C, d, h, w)
            # samples are independent in eval mode: d(sum of ages)/d acti_b = d age_b / d acti_b
            (grad,) = torch.autograd.grad(ages.sum(), acti)
    finally:
        handle.remove()
        model.train(was_training)
    with torch.no_grad():
        weights = grad.mean(dim=tuple(range(2, grad.ndim)), keepdim=True)  # (B, C, 1, 1, 1)
        cam = F.relu((weights * acti).sum(dim=1, keepdim=True))  # (B, 1, d, h, w)
        cam = F.interpolate(cam, size=tuple(volumes.shape[2:]), mode="trilinear", align_corners=False)[:, 0]
        return minmax_per_subject(cam)


def input_gradient(model: nn.Module, volumes: torch.Tensor) -> torch.Tensor:
    """Gradient saliency of a batch: ``|d predicted age / d voxel|`` (Simonyan et al., 2014)
    on the input grid, ``volumes (B, 1, D, H, W)`` -> ``(B, D, H, W)`` in [0, 1] per subject.

    Unlike Grad-RAM, no block's resolution limits it: on the demo's 4 mm grid a ResNet18 block
    map is at most 12 x 15 x 12 voxels, and there Grad-RAM ranks none of the regions the
    simulator changed (benchmarks/bench_saliency_truths.py). Eval mode (BatchNorm running
    statistics, so a subject's map does not depend on the batch), one backward pass through the
    whole network; the model's mode is restored.
    """
    if volumes.ndim != 5 or volumes.shape[1] != 1:
        raise ValueError(f"volumes must be (B, 1, D, H, W), got {tuple(volumes.shape)}")
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = volumes.detach().clone().requires_grad_(True)
            ages = model(x).reshape(x.shape[0], -1)[:, 0]
            (grad,) = torch.autograd.grad(ages.sum(), x)  # samples independent in eval mode
    finally:
        model.train(was_training)
    return minmax_per_subject(grad.detach()[:, 0].abs())




def saliency_maps(model: nn.Module, volumes: torch.Tensor, method: str = "gradram", target_layer: str = "layer4") -> torch.Tensor:
    """``(B, D, H, W)`` maps in [0, 1] of ``volumes (B, 1, D, H, W)`` by ``method`` (:data:`METHODS`)."""
    if method == "gradram":
        return grad_ram(model, volumes, target_layer)
    if method == "gradient":
        return input_gradient(model, volumes)
    raise ValueError(f"unknown saliency method {method!r}: one of {', '.join(METHODS)}")


def minmax_per_subject(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of ``maps (B, ...)`` to [0, 1]; a constant map becomes all zeros."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return scaled.reshape(maps.shape)


# --------------------------------------------------------------------------------------
# Groups
# --------------------------------------------------------------------------------------


def age_group(age: float) -> str | None:
    """The study's age group of ``age`` (``20-40`` ... ``80plus``), None below 20 or unknown."""
    if age is None or not np.isfinite(age):
        return None
    for name, low, high in AGE_GROUPS:
        if low <= age < high:
            return name
    return None


@dataclass
class Group:
    """A set of subjects whose saliency maps are averaged (``id`` is used in file names)."""

    id: str
    label: str
    cohort: str
    age_group: str = "all"
    sex: str = "all"
    members: list[str] = field(default_factory=list)


def saliency_groups(subjects: pd.DataFrame) -> list[Group]:
    """Groups of the study: HC by age group (x sex and both sexes), all HC, AD and PD.

    ``subjects`` has columns participant_id, cohort (HC|AD|PD), age, sex (F|M). Every group
    is listed, also empty ones (``members == []``), so the outputs have a fixed layout.
    """
    groups: list[Group] = []
    hc = subjects[subjects["cohort"] == "HC"]
    bins = hc["age"].map(age_group)
    for name, low, high in AGE_GROUPS:
        span = f"{low:g}+" if not np.isfinite(high) else f"{low:g}-{high:g}"
        in_bin = hc[bins == name]
        for sex in SEXES:
            members = in_bin.loc[in_bin["sex"] == sex, "participant_id"].tolist()
            groups.append(Group(f"HC_{name}_{sex}", f"HC {span} y, {sex}", "HC", name, sex, members))
        groups.append(Group(f"HC_{name}", f"HC {span} y", "HC", name, "all", in_bin["participant_id"].tolist()))
    groups.append(Group("HC", "HC, all ages", "HC", members=hc["participant_id"].tolist()))
    for cohort in ("AD", "PD"):
        members = subjects.loc[subjects["cohort"] == cohort, "participant_id"].tolist()
        groups.append(Group(cohort, cohort, cohort, members=members))
    return groups


def match_controls_by_age(patients: pd.DataFrame, controls: pd.DataFrame) -> pd.DataFrame:
    """Age-matched controls: for each patient (oldest first) the nearest-age unused control.

    Without replacement while controls last, then with replacement; ties go to the same sex,
    then to the smaller participant_id, so the matching is deterministic. Returns columns
    participant_id, age, control_id, control_age.
    """
    rows = []
    columns = ["participant_id", "age", "control_id", "control_age"]
    if controls.empty or patients.empty:
        return pd.DataFrame({c: pd.Series(dtype=float if "age" in c else object) for c in columns})
    free = controls.sort_values("participant_id").copy()
    for _, p in patients.sort_values(["age", "participant_id"], ascending=[False, True]).iterrows():
        pool = free if not free.empty else controls
        cost = pd.DataFrame(
            {
                "gap": (pool["age"] - p["age"]).abs().to_numpy(),
                "other_sex": (pool["sex"] != p["sex"]).to_numpy().astype(int),
                "participant_id": pool["participant_id"].to_numpy(),
            },
            index=pool.index,
        )
        best = cost.sort_values(["gap", "other_sex", "participant_id"]).index[0]
        rows.append(
            {"participant_id": p["participant_id"], "age": p["age"], "control_id": pool.at[best, "participant_id"], "control_age": pool.at[best, "age"]}
        )
        if not free.empty:
            free = free.drop(index=best)
    return pd.DataFrame(rows, columns=columns)


class GroupMeans:
    """Running sums of saliency maps per group: memory is one map per group, not per subject."""

    def __init__(self, groups: Sequence[Group], shape: tuple[int, ...]):
        self.groups = list(groups)
        self.shape = tuple(shape)
        self._index: dict[str, list[int]] = {}
        for k, g in enumerate(self.groups):
            for pid in g.members:
                self._index.setdefault(pid, []).append(k)
        self._sum = np.zeros((len(self.groups), *self.shape), dtype=np.float64)
        self._n = np.zeros(len(self.groups), dtype=np.int64)

    def add(self, participant_id: str, saliency: np.ndarray) -> None:
        for k in self._index.get(participant_id, []):
            self._sum[k] += saliency
            self._n[k] += 1

    def means(self) -> dict[str, np.ndarray | None]:
        """Mean map per group id (float32); None for a group with no subject."""
        return {g.id: (self._sum[k] / self._n[k]).astype(np.float32) if self._n[k] else None for k, g in enumerate(self.groups)}

    def counts(self) -> dict[str, int]:
        return {g.id: int(self._n[k]) for k, g in enumerate(self.groups)}


# --------------------------------------------------------------------------------------
# AAL116 tables and the check against the simulator's truth
# --------------------------------------------------------------------------------------


def parcel_means(saliency: np.ndarray, atlas: np.ndarray, labels: pd.DataFrame) -> np.ndarray:
    """Mean of ``saliency`` in each region of ``atlas`` (same grid), ordered as ``labels.index``.

    A region with no voxel on this grid gets NaN.
    """
    if saliency.shape != atlas.shape:
        raise ValueError(f"saliency grid {saliency.shape} differs from atlas grid {atlas.shape}")
    idx = labels["index"].to_numpy().astype(np.int64)
    flat = atlas.reshape(-1).astype(np.int64)
    top = max(int(flat.max(initial=0)), int(idx.max())) + 1
    sums = np.bincount(flat, weights=saliency.reshape(-1).astype(np.float64), minlength=top)
    counts = np.bincount(flat, minlength=top)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts[idx] > 0, sums[idx] / np.maximum(counts[idx], 1), np.nan)


def parcel_table(
    saliency: np.ndarray, atlas: np.ndarray, labels: pd.DataFrame, threshold: float = 0.8, signed: bool = False
) -> pd.DataFrame:
    """AAL116 table of one (group) map: index, name, hemisphere, mean, mean_scaled, rank, above_threshold.

    ``mean`` is the region mean of the map. A mean of [0, 1] maps rarely reaches 0.8, so the
    study's "regions above 0.8" is read on ``mean_scaled``: the region means divided by their
    maximum (by the maximum absolute value for a ``signed`` difference map), i.e. relative to
    the most salient region. ``rank`` 1 is the most salient region (largest ``mean``).
    """
    means = parcel_means(saliency, atlas, labels)
    scale = np.nanmax(np.abs(means)) if signed else np.nanmax(means) if np.isfinite(means).any() else np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = means / scale if scale and np.isfinite(scale) and scale > 0 else np.zeros_like(means)
    table = labels[["index", "name", "hemisphere"]].copy().reset_index(drop=True)
    table["mean"] = means
    table["mean_scaled"] = scaled
    table["rank"] = pd.Series(means).rank(ascending=False, method="min").astype("Int64")
    table["above_threshold"] = np.nan_to_num(scaled, nan=-np.inf) > threshold
    return table


def precision_at_k(ranked_names: Sequence[str], relevant: Iterable[str], k: int = 10) -> float:
    """Share of the first ``k`` names of a ranking that are in ``relevant``."""
    relevant = set(relevant)
    top = list(ranked_names)[:k]
    return float(np.mean([name in relevant for name in top])) if top else float("nan")


def random_precision_at_k(n_regions: int, n_relevant: int, k: int, draws: int, seed: int) -> np.ndarray:
    """Precision at ``k`` of ``draws`` uniformly random rankings of ``n_regions`` regions."""
    rng = np.random.default_rng(seed)
    hits = np.array([(rng.permutation(n_regions)[:k] < n_relevant).sum() for _ in range(draws)])
    return hits / k


def truth_check(table: pd.DataFrame, relevant: Iterable[str], k: int = 10, draws: int = 10000, seed: int = 0) -> dict:
    """Precision at ``k`` of a group's AAL116 ranking against the regions the simulator changed.

    The baseline is the distribution over random rankings of the same regions; ``p_value``
    is the share of random rankings at least as precise (with the +1 correction). A map that
    is the same in every region (Grad-RAM 0 in every subject: the ReLU of a weighted sum that
    is negative everywhere) ranks nothing: ``precision`` and ``p_value`` are NaN, not the
    score of its ties broken by AAL index.
    """
    relevant = set(relevant)
    ranked = table.dropna(subset=["mean"]).sort_values(["rank", "index"])
    names = ranked["name"].tolist()
    n_relevant = len(relevant & set(names))
    if ranked["mean"].nunique() <= 1:
        nan = float("nan")
        return {"k": k, "n_relevant": n_relevant, "precision": nan, "random_mean": nan, "random_sd": nan,
                "p_value": nan, "top": ""}
    observed = precision_at_k(names, relevant, k)
    baseline = random_precision_at_k(len(names), n_relevant, k, draws, seed)
    return {
        "k": k,
        "n_relevant": n_relevant,
        "precision": observed,
        "random_mean": float(baseline.mean()),
        "random_sd": float(baseline.std(ddof=1)) if draws > 1 else float("nan"),
        "p_value": float((1 + np.sum(baseline >= observed)) / (1 + draws)),
        "top": ";".join(names[:k]),
    }


#: the simulator's effect (``effect`` column of results/cohort/truth/effects_aal116.tsv) each
#: group's ranking is checked against: healthy groups -> ageing; AD and PD (and their
#: difference maps against age-matched controls) -> all that the simulator changed in the
#: cohort's mean patient against an age-matched control: the disease's own atrophy plus the
#: ageing of its biological-age increment (the table's ``AD_specific`` and ``PD_specific``, the
#: atrophy alone, are reported by benchmarks/bench_saliency_truths.py: an age model's map of AD
#: ranks the regions of faster ageing first, not the MTL atrophy that no healthy brain shows)
TRUTH_EFFECT = {"HC": "ageing", "AD": "AD", "PD": "PD"}
#: how strongly the simulator changed a region: mean |signal change| of the simulator's mean
#: subject rendered on the template (relative to WM = 1; brainage.data.simulate.cohort.signal_change),
#: i.e. what the scanner sees change. The volume change of the deformation (``volume_change_pct``,
#: the measure before 2026-12-05) ranks small regions whose tissue was compressed without
#: changing the image much (vermis lobules, temporal pole) above the regions beside the growing
#: ventricles whose image changes most; even the voxelwise correlation of the preprocessed images
#: with age reaches only 0.4 of its top 10 on the demo (benchmarks/bench_saliency_truths.py).
#: Tables written before the column existed fall back to the volume change.
TRUTH_MEASURE = "signal_change"
TRUTH_FALLBACK = "volume_change_pct"

TRUTH_COLUMNS = ["group", "n", "effect", "k", "n_relevant", "precision", "random_mean", "random_sd", "p_value", "p_holm",
                 "top", "relevant"]


def read_effects(path: str | Path) -> pd.DataFrame:
    """The simulator's truth table (index, name, effect, cohort, signal_change, volume_change_pct, ...)."""
    effects = pd.read_csv(path, sep="\t")
    if TRUTH_MEASURE not in effects.columns and TRUTH_FALLBACK in effects.columns:
        log.warning("%s: no %s column (written by an older simulator): ranking by %s", path, TRUTH_MEASURE, TRUTH_FALLBACK)
        effects = effects.assign(**{TRUTH_MEASURE: effects[TRUTH_FALLBACK]})
    missing = {"name", "effect", TRUTH_MEASURE} - set(effects.columns)
    if missing:
        raise InputError(f"{path}: simulator truth table lacks column(s) {', '.join(sorted(missing))}")
    if "AD" in set(effects["effect"]) and "AD_specific" not in set(effects["effect"]):
        log.warning("%s: written by an older simulator: its AD and PD rows are the disease-specific atrophy alone, "
                    "without the biological-age increment (rerun simulate_cohort for the current truth)", path)
    return effects


def relevant_regions(effects: pd.DataFrame, effect: str, k: int, among: Iterable[str] | None = None) -> list[str]:
    """The ``k`` AAL116 regions the simulator changed most by ``effect``: largest |:data:`TRUTH_MEASURE`|.

    ``effects``: the simulator's truth table (one row per region and effect); ``among``: only
    these regions compete (those that have voxels on the saliency grid), so that a region the
    ranking cannot contain never counts against it. Ties go to the smaller AAL index.
    """
    rows = effects[effects["effect"] == effect]
    if rows.empty:
        raise ValueError(f"no effect {effect!r} in the simulator truth table (has: {', '.join(map(str, effects['effect'].unique()))})")
    if among is not None:
        rows = rows[rows["name"].isin(set(among))]
    order = rows.assign(_size=rows[TRUTH_MEASURE].abs())
    keys = ["_size", "index"] if "index" in rows else ["_size"]
    return order.sort_values(keys, ascending=[False, True][: len(keys)], kind="stable")["name"].head(k).tolist()


def truth_checks(aal_table: pd.DataFrame, effects: pd.DataFrame, k: int = 10, draws: int = 10000, seed: int = 0) -> pd.DataFrame:
    """Precision at ``k`` of every group's AAL116 ranking against the simulator's truth.

    ``aal_table``: the long table of :func:`run_saliency` (group, n, index, name, mean, rank);
    each group is compared with the top-``k`` regions of its effect (:data:`TRUTH_EFFECT` by
    the group's cohort: HC age and sex groups -> ``ageing``; ``AD``, ``AD-minus-HC`` -> ``AD``;
    ``PD``, ``PD-minus-HC`` -> ``PD``). Age-matched control groups are not checked (they are
    the difference maps' baseline). One row per group, columns :data:`TRUTH_COLUMNS`;
    ``p_holm`` is ``p_value`` Holm-corrected across the groups checked.
    """
    rows = []
    if aal_table.empty:
        return pd.DataFrame(rows, columns=TRUTH_COLUMNS)
    for group, table in aal_table.groupby("group", sort=False):
        if group.endswith("matchedHC"):
            continue
        cohort = group.split("_")[0].split("-")[0]
        effect = TRUTH_EFFECT.get(cohort)
        if effect is None or table["mean"].notna().sum() == 0:
            continue
        present = table.loc[table["mean"].notna(), "name"]
        relevant = relevant_regions(effects, effect, k, among=present)
        check = truth_check(table, relevant, k, draws, seed)
        n = int(table["n"].iloc[0]) if "n" in table else np.nan
        rows.append({"group": group, "n": n, "effect": effect, **check, "relevant": ";".join(relevant)})
    table = pd.DataFrame(rows, columns=TRUTH_COLUMNS)
    if len(table):
        # every group's ranking is one test: Holm's step-down over all of them (familywise error)
        from brainage.core.metrics import holm

        table["p_holm"] = holm(table["p_value"])
    return table


# --------------------------------------------------------------------------------------
# Files: NIfTI and PNG in template space
# --------------------------------------------------------------------------------------


#: stored saliency maps are [0, 1] quantised to int16 with this slope (NIfTI-1 has no float16;
#: 2 bytes per voxel like float16, with a finer step of 3e-5)
SALIENCY_SLOPE = 1.0 / 32767.0


def quantise_saliency(saliency: np.ndarray) -> np.ndarray:
    """The [0, 1] map as stored on disk: rounded to multiples of :data:`SALIENCY_SLOPE` (float32)."""
    q = np.round(np.clip(np.asarray(saliency, dtype=np.float64), 0.0, 1.0) / SALIENCY_SLOPE)
    return (q * SALIENCY_SLOPE).astype(np.float32)


def template_image(data: np.ndarray, affine: np.ndarray, quantised: bool = True) -> nib.Nifti1Image:
    """A template-space (MNI152, sform/qform code 4) NIfTI of ``data``.

    ``quantised``: a [0, 1] saliency map stored as int16 x :data:`SALIENCY_SLOPE` (half the
    size of float32); otherwise float32 (group means and signed difference maps).
    """
    if not quantised:
        return nifti_image(np.asarray(data, dtype=np.float32), affine)
    q = np.round(np.clip(np.asarray(data, dtype=np.float64), 0.0, 1.0) / SALIENCY_SLOPE).astype(np.int16)
    img = nifti_image(q, affine)
    img.header.set_slope_inter(SALIENCY_SLOPE, 0.0)
    return img


@contextlib.contextmanager
def gc_frozen() -> Iterator[None]:
    """Objects alive on entry are left out of garbage collection until exit (``gc.freeze``).

    nilearn calls ``gc.collect()`` each time it reads an image's data (``safe_get_data``: 12
    times per :func:`plot_group_map`); with torch and a network in the process each full
    collection walks ~400,000 objects, 0.3 s: 4.1 s per PNG, 0.9 s with them frozen
    (benchmarks/bench_saliency_png.py). The plots' own garbage is still collected.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def plot_group_map(
    img: nib.Nifti1Image, template: nib.Nifti1Image, brain_mask: np.ndarray, title: str, path: str | Path, signed: bool = False
) -> None:
    """PNG of a saliency map on the template: orthogonal slices through its most salient cluster and a glass brain.

    The map is shown inside the template brain mask only (Grad-RAM upsampled from a coarse
    block is non-zero in the background too, which would hide the anatomy), semi-transparent,
    with values below 5 % of the maximum left out. ``signed``: a difference map (blue-red,
    symmetric scale).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import plotting

    with gc_frozen():
        data = np.where(brain_mask, np.asarray(img.dataobj, dtype=np.float32), 0.0).astype(np.float32)
        vmax = float(np.nanmax(np.abs(data))) or 1.0
        shown = nib.Nifti1Image(data, img.affine)
        # centre of the largest high-saliency cluster: a peak on the brain's rim would give edge slices
        cut = plotting.find_xyz_cut_coords(nib.Nifti1Image(np.abs(data), img.affine))
        cmap = "RdBu_r" if signed else "hot"
        fig = plt.figure(figsize=(9, 6.4))
        top = fig.add_axes([0.0, 0.5, 1.0, 0.46])
        bottom = fig.add_axes([0.0, 0.02, 1.0, 0.46])
        plotting.plot_stat_map(
            shown, bg_img=template, display_mode="ortho", cut_coords=cut, axes=top, cmap=cmap, vmax=vmax,
            symmetric_cbar=signed, threshold=0.05 * vmax, transparency=0.7, title=title, colorbar=True,
            draw_cross=False, black_bg=False, annotate=True, dim=0,
        )
        plotting.plot_glass_brain(
            shown, display_mode="lyrz", axes=bottom, cmap=cmap, vmax=vmax, vmin=-vmax if signed else 0.0,
            plot_abs=False, symmetric_cbar=signed, colorbar=False, threshold=0.05 * vmax, black_bg=False,
        )
        save_figure(fig, path)
        plt.close(fig)


# --------------------------------------------------------------------------------------
# The rule ``saliency``: one model -> per-subject maps, group maps, PNGs, AAL116 tables
# --------------------------------------------------------------------------------------


def run_saliency(
    model_path: str | Path,
    participants_tsv: str | Path,
    splits_tsv: str | Path,
    cache_volumes: str | Path,
    cache_index: str | Path,
    resources: Mapping[str, str | Path],
    out: dict[str, str | Path],
    *,
    hc_splits: Sequence[str] = ("test",),
    method: str = "gradram",
    target_layer: str = "layer4",
    batch_size: int = 4,
    threshold: float = 0.8,
    top_k: int = 10,
    random_draws: int = 10000,
    truth_effects: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
) -> pd.DataFrame:
    """Saliency maps (``method``: :data:`METHODS`) of every subject of ``hc_splits`` and of AD and
    PD; group maps and tables.

    ``resources``: the ``template``, brain ``mask`` and ``aal`` atlas of the model's grid
    (brainage.data.atlases.resource_paths). ``out`` names the outputs: ``subjects`` and ``groups``
    (folders), ``groups_tsv``, ``aal116`` (long table: one row per group and region),
    ``matches`` (age-matched controls of AD and PD) and ``truth`` (precision at ``top_k`` of
    each HC, AD and PD group ranking against the regions the simulator changed most, read from
    ``truth_effects`` (results/cohort/truth/effects_aal116.tsv, see :func:`truth_checks`); a
    real cohort has no truth: None gives a table with the header only).
    """
    from brainage.data.cache import CachedVolumes
    from brainage.core.grids import template_grid
    from brainage.core.io import write_tsv
    from brainage.models.files import load_model, pick_device

    if method not in METHODS:
        raise InputError(f"explain.method {method!r}: one of {', '.join(METHODS)}")
    effects = read_effects(truth_effects) if truth_effects is not None else None  # bad truth file: fail before the work
    model, meta = load_model(model_path, map_location="cpu")
    name = meta.get("name") or Path(model_path).parent.name
    if meta.get("kind") == "classical":
        raise InputError(f"{model_path}: {name} is a classical model (no layers): Grad-RAM does not apply")
    grid = template_grid(float(meta["grid_res"]))
    dev = pick_device(device)
    model = model.to(dev).eval()
    cache = CachedVolumes(cache_volumes, cache_index)
    if tuple(cache.shape) != grid.shape:
        raise ValueError(f"cache {cache_volumes}: grid {cache.shape} differs from model {name}'s {grid.shape}")

    if method == "gradram" and target_layer == "auto":
        target_layer = auto_target_layer(model, grid.shape)
        log.info("model %s: target layer %s (maps of %s voxels on the %g mm grid)", name, target_layer,
                 "x".join(map(str, dict(block_shapes(model, grid.shape))[target_layer])), grid.res)
    subjects, groups, matches_table = _saliency_subjects(participants_tsv, splits_tsv, hc_splits)
    log.info("model %s: %s for %d subjects (%s, AD, PD)", name, f"Grad-RAM on {target_layer}" if method == "gradram"
             else "input-gradient saliency", len(subjects), "+".join(hc_splits))
    means, counts = _subject_maps(model, dev, cache, subjects["participant_id"].tolist(), groups, matches_table,
                                  grid, method, target_layer, batch_size, Path(out["subjects"]))
    for c in ("AD", "PD"):
        groups.append(Group(f"{c}-minus-HC", f"{c} minus age-matched HC", c))
    groups_table, aal_table = _group_outputs(name, groups, means, counts, grid, resources, threshold, Path(out["groups"]), method)
    if effects is None:
        truth_table = pd.DataFrame(columns=TRUTH_COLUMNS)
        log.info("real cohort (no simulator truth): precision at %d not computed", top_k)
    else:
        truth_table = truth_checks(aal_table, effects, top_k, random_draws, seed)
        for _, c in truth_table.iterrows():
            log.info("%s vs %s: precision@%d %.2f vs random %.2f +- %.2f (p=%.3g)", c["group"], c["effect"], top_k,
                     c["precision"], c["random_mean"], c["random_sd"], c["p_value"])
    write_tsv(out["matches"], matches_table)
    write_tsv(out["aal116"], aal_table)
    write_tsv(out["truth"], truth_table)
    write_tsv(out["groups_tsv"], groups_table)
    return groups_table


def _saliency_subjects(participants_tsv, splits_tsv, hc_splits: Sequence[str]) -> tuple[pd.DataFrame, list[Group], pd.DataFrame]:
    """Subjects of ``hc_splits``, AD and PD (sorted by id), their groups (the age-matched HC
    groups included) and the table of age-matched controls."""
    from brainage.data.splits import read_splits

    participants = read_participants(participants_tsv)
    split_of = read_splits(splits_tsv).set_index("participant_id")["split"]
    chosen = split_of[split_of.isin(list(hc_splits) + ["AD", "PD"])].index
    subjects = participants[participants["participant_id"].isin(chosen)].sort_values("participant_id").reset_index(drop=True)
    subjects["age"] = subjects["age"].astype(float)
    groups = saliency_groups(subjects)
    hc = subjects[subjects["cohort"] == "HC"]
    matches = []
    for cohort in ("AD", "PD"):
        pairs = match_controls_by_age(subjects[subjects["cohort"] == cohort], hc)
        pairs.insert(1, "cohort", pd.Series([cohort] * len(pairs), dtype=object))
        matches.append(pairs)
        groups.append(Group(f"{cohort}-matchedHC", f"HC age-matched to {cohort}", "HC", members=pairs["control_id"].tolist()))
    return subjects, groups, pd.concat(matches, ignore_index=True)


def _subject_maps(model, dev, cache, ids: list[str], groups: list[Group], matches_table: pd.DataFrame, grid,
                  method: str, target_layer: str, batch_size: int, subjects_dir: Path) -> tuple[dict, dict]:
    """Each subject's saliency map written (quantised) and accumulated: group means and counts,
    including the age-matched HC means and the AD/PD minus matched-HC differences."""
    from tqdm import tqdm

    from brainage.core.grids import res_label
    from brainage.models.files import iter_batches

    label = res_label(grid.res)
    # matched controls may repeat (with replacement): count each occurrence in the mean
    acc = GroupMeans([g for g in groups if not g.id.endswith("matchedHC")], grid.shape)
    matched_sum = {c: np.zeros(grid.shape, np.float64) for c in ("AD", "PD")}
    uses = {c: matches_table.loc[matches_table["cohort"] == c, "control_id"].value_counts() for c in ("AD", "PD")}
    subjects_dir.mkdir(parents=True, exist_ok=True)
    for chunk, volumes in tqdm(iter_batches(ids, cache.volume, batch_size), total=-(-len(ids) // batch_size), desc=method, mininterval=5):
        maps = saliency_maps(model, volumes.to(dev), method, target_layer).cpu().numpy()
        for pid, sal in zip(chunk, maps):
            stored = quantise_saliency(sal)  # what is stored is what is averaged
            save_nifti(template_image(stored, grid.affine), subjects_dir / saliency_file(label, participant_id=pid, method=method))
            acc.add(pid, stored)
            for c in ("AD", "PD"):
                if pid in uses[c].index:
                    matched_sum[c] += int(uses[c][pid]) * stored.astype(np.float64)
    means, counts = acc.means(), acc.counts()
    for c in ("AD", "PD"):
        n = int(uses[c].sum())
        counts[f"{c}-matchedHC"] = n
        means[f"{c}-matchedHC"] = (matched_sum[c] / n).astype(np.float32) if n else None
        diff_ok = means[c] is not None and n
        means[f"{c}-minus-HC"] = (means[c] - means[f"{c}-matchedHC"]) if diff_ok else None
        counts[f"{c}-minus-HC"] = counts[c] if diff_ok else 0
    return means, counts


def _group_outputs(name: str, groups: list[Group], means: dict, counts: dict, grid, resources: Mapping[str, str | Path],
                   threshold: float, groups_dir: Path, method: str = "gradram") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each group's mean map (NIfTI and PNG) and AAL116 table: (groups table, long AAL116 table)."""
    from brainage.data.atlases import aal_labels
    from brainage.core.grids import res_label

    label = res_label(grid.res)
    template = nib.load(str(resources["template"]))
    atlas = np.asanyarray(nib.load(str(resources["aal"])).dataobj).astype(np.int16)
    brain_mask = np.asanyarray(nib.load(str(resources["mask"])).dataobj) > 0
    labels = aal_labels()
    groups_dir.mkdir(parents=True, exist_ok=True)
    rows, tables = [], []
    for g in groups:
        mean = means.get(g.id)
        signed = g.id.endswith("minus-HC")
        row = {"group": g.id, "label": g.label, "cohort": g.cohort, "age_group": g.age_group, "sex": g.sex, "n": counts.get(g.id, 0)}
        if mean is not None:
            img = template_image(mean, grid.affine, quantised=False)
            save_nifti(img, groups_dir / saliency_file(label, group=g.id, method=method))
            plot_group_map(img, template, brain_mask, f"{name}, {METHOD_LABELS[method]}: {g.label} (n={row['n']})", groups_dir / f"group-{g.id}_saliency.png", signed=signed)
            table = parcel_table(mean, atlas, labels, threshold=threshold, signed=signed)
            above = table[table["above_threshold"]].sort_values("rank")
            row["regions_above_threshold"] = ";".join(above["name"])
            table.insert(0, "group", g.id)
            table.insert(1, "n", row["n"])
            tables.append(table)
        rows.append(row)
    groups_table = pd.DataFrame(rows)
    groups_table["threshold"] = threshold
    groups_table["method"] = method
    return groups_table, (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame())
