"""The rule ``saliency``: one model -> per-subject maps, group maps, PNGs, AAL116 tables
(what workflow/scripts/saliency.py calls)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import nibabel as nib
import numpy as np
import pandas as pd

from brainage.apply.explain.groups import Group, GroupMeans, match_controls_by_age, saliency_groups
from brainage.apply.explain.parcels import TRUTH_COLUMNS, parcel_table, read_effects, truth_checks
from brainage.apply.explain.plots import plot_group_map, quantise_saliency, template_image
from brainage.apply.explain.saliency import auto_target_layer, block_shapes, saliency_maps
from brainage.core.io import InputError, read_participants, save_nifti
from brainage.models.kinds import kind_named
from brainage.core.paths import SALIENCY_METHODS as METHODS, SALIENCY_METHOD_LABELS as METHOD_LABELS, saliency_file

if TYPE_CHECKING:  # annotations only: at run time these load lazily, inside the functions
    import torch
    from torch import nn

    from brainage.core.grids import Grid
    from brainage.data.cache import CachedVolumes

# the logger of the module this code came from: the pipeline's log lines name it
log = logging.getLogger("brainage.apply.explain")


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
    if not kind_named(str(meta.get("kind")), str(model_path)).saliency:
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


def _saliency_subjects(participants_tsv: str | Path, splits_tsv: str | Path,
                       hc_splits: Sequence[str]) -> tuple[pd.DataFrame, list[Group], pd.DataFrame]:
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


def _subject_maps(model: nn.Module, dev: torch.device, cache: CachedVolumes, ids: list[str], groups: list[Group],
                  matches_table: pd.DataFrame, grid: Grid, method: str, target_layer: str, batch_size: int,
                  subjects_dir: Path) -> tuple[dict, dict]:
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


def _group_outputs(name: str, groups: list[Group], means: dict, counts: dict, grid: Grid, resources: Mapping[str, str | Path],
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
