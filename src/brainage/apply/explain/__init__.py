"""Grad-RAM saliency: which parts of the brain drive a model's age estimate.

Grad-RAM (gradient-weighted regression activation map) is Grad-CAM for a regression output:
the gradient of the predicted age with respect to the activations of the last convolutional
block, channel weights = spatial mean of that gradient, ReLU of the weighted channel sum,
trilinear upsampling to the input grid, min-max normalisation to [0, 1] per subject.

The maps are then averaged per group (HC age group x sex, AD, PD), differenced against
age-matched healthy controls, and summarised per AAL116 region (Figures 4, 5 and 7 of the
study). On the simulated cohort the region ranking is checked against the regions the
simulator changed most (precision at k against random rankings; see :func:`relevant_regions`).

The package's face; the work is in :mod:`.saliency` (Grad-RAM and input-gradient maps of a
batch), :mod:`.groups` (age group x sex x cohort, age-matched controls, running group means),
:mod:`.parcels` (AAL116 tables and the check against the simulator's truth), :mod:`.plots`
(quantised NIfTI maps and PNGs in template space) and :mod:`.run` (the rule ``saliency``).
"""

from __future__ import annotations

from brainage.apply.explain.groups import (
    AGE_GROUPS, SEXES, Group, GroupMeans, age_group, match_controls_by_age, saliency_groups,
)
from brainage.apply.explain.parcels import (
    TRUTH_COLUMNS, TRUTH_EFFECT, TRUTH_FALLBACK, TRUTH_MEASURE, parcel_means, parcel_table, precision_at_k,
    random_precision_at_k, read_effects, relevant_regions, truth_check, truth_checks,
)
from brainage.apply.explain.plots import SALIENCY_SLOPE, gc_frozen, plot_group_map, quantise_saliency, template_image
from brainage.apply.explain.run import run_saliency
from brainage.apply.explain.saliency import (
    MIN_MAP_VOXELS, auto_target_layer, block_shapes, find_layer, grad_ram, input_gradient, minmax_per_subject,
    saliency_maps,
)
from brainage.core.paths import SALIENCY_METHODS as METHODS, SALIENCY_METHOD_LABELS as METHOD_LABELS, saliency_file

__all__ = [
    "AGE_GROUPS", "SEXES", "Group", "GroupMeans", "age_group", "match_controls_by_age", "saliency_groups",
    "TRUTH_COLUMNS", "TRUTH_EFFECT", "TRUTH_FALLBACK", "TRUTH_MEASURE", "parcel_means", "parcel_table",
    "precision_at_k", "random_precision_at_k", "read_effects", "relevant_regions", "truth_check", "truth_checks",
    "SALIENCY_SLOPE", "gc_frozen", "plot_group_map", "quantise_saliency", "template_image",
    "run_saliency",
    "MIN_MAP_VOXELS", "auto_target_layer", "block_shapes", "find_layer", "grad_ram", "input_gradient",
    "minmax_per_subject", "saliency_maps",
    "METHODS", "METHOD_LABELS", "saliency_file",
]
