"""Preprocessing of one raw T1w scan: brain mask, N4, 12-dof affine to MNI152NLin2009cAsym.

The package's face. Engines side by side: :mod:`.native` (deepbet + ANTsPy, in-process; its
registration in :mod:`.registration`, ANTs images and affine files in :mod:`.transforms`) and
:mod:`.minc` (the study's MINC Toolkit chain); what they share is in :mod:`.finish`, the settings
in :mod:`.settings`, the QC in :mod:`.qc`, the entry points in :mod:`.run`, the command line in
:mod:`.cli`.

:func:`preprocess_t1w` is the one entry point, used by the Snakemake rule (``rule preprocess``),
by ``brainage preprocess`` and by the tests. The native engine (:mod:`.native`) runs:

1. input checks (unreadable, 4D, NaN/Inf, all-zero, absurd voxel sizes -> :class:`InputError`);
2. deepbet brain mask in native space;
3. N4 bias-field correction fitted inside the mask (on the brain's bounding box);
4. affine registration of the N4-corrected brain to the ICBM 2009c brain template: centres of
   mass, rigid, similarity, 12-dof affine; global correlation (NCC) metric, 8/4/2 mm pyramid
   (:func:`.registration.register_affine_to_template`);
5. B-spline (order 3) resampling onto the 1 mm template grid (193 x 229 x 193) as the study's
   chain -- or straight onto the finest configured grid when the scan is no finer than it
   (:func:`base_resolution`); intensities normalised inside the brain
   (:func:`.finish.normalise_in_brain`);
6. every configured grid from that volume, anti-aliased (:func:`downsample_grid`, block means);
   only the configured grids are written.

The MINC engine (:mod:`.minc`) runs the study's MINC Toolkit chain in a container (Snakemake
``container:`` rules) and hands its 1 mm result to :func:`finish_from_base` for the same outputs.

Outputs (BIDS derivatives, under ``out_dir``; see :func:`brainage.core.paths.preprocess_outputs`)::

    <sub>_space-MNI152NLin2009cAsym_res-<r>_desc-preproc_T1w.nii.gz   one per grid
    <sub>_desc-brain_mask.nii.gz                                      native space
    <sub>_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.mat          ITK/ANTs affine
    <sub>_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.json         the same as 4 x 4 RAS matrices
    <sub>_desc-qc.json, <sub>_desc-qc.png                             QC metrics and figure
"""

from __future__ import annotations

# the package's face: its public names, wherever they live
from brainage.preprocess.cli import _id_from_name, main  # noqa: F401
from brainage.preprocess.finish import (  # noqa: F401
    DETERMINANT_RANGE,
    base_resolution,
    downsample_grid,
    finish_from_base,
    load_t1w,
    load_template,
    write_excluded,
)
from brainage.preprocess.run import preprocess_or_exclude, preprocess_t1w  # noqa: F401
from brainage.preprocess.settings import settings_from_config  # noqa: F401
