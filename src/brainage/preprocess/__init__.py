"""Preprocessing of one raw T1w scan: brain mask, N4, 12-dof affine to MNI152NLin2009cAsym.

The package's face. Engines side by side: :mod:`.native` (deepbet + ANTsPy, in-process) and
:mod:`.minc` (the study's MINC Toolkit chain); what they share is in :mod:`.finish`, the QC in
:mod:`.qc`, the command line in :mod:`.cli`.

:func:`preprocess_t1w` is the one entry point, used by the Snakemake rule (``rule preprocess``),
by ``brainage preprocess`` and by the tests. The native engine (:mod:`.native`) runs:

1. input checks (unreadable, 4D, NaN/Inf, all-zero, absurd voxel sizes -> :class:`InputError`);
2. deepbet brain mask in native space;
3. N4 bias-field correction fitted inside the mask (on the brain's bounding box);
4. affine registration of the N4-corrected brain to the ICBM 2009c brain template: centres of
   mass, rigid, similarity, 12-dof affine; global correlation (NCC) metric, 8/4/2 mm pyramid
   (:func:`.native.register_affine_to_template`);
5. B-spline (order 3) resampling onto the 1 mm template grid (193 x 229 x 193) as the study's
   chain -- or straight onto the finest configured grid when the scan is no finer than it
   (:func:`base_resolution`); intensities normalised inside the brain
   (:func:`.native.normalise_in_brain`);
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

import logging
from pathlib import Path

from brainage.core.grids import check_grids
from brainage.core.io import InputError, atomic_dir
from brainage.core.paths import preprocess_outputs
from brainage.preprocess.finish import (  # noqa: F401  (the package's face)
    DETERMINANT_RANGE,
    base_resolution,
    downsample_grid,
    finish_from_base,
    load_t1w,
    load_template,
    settings_from_config,
    write_excluded,
)

log = logging.getLogger("brainage.preprocess")


def preprocess_t1w(
    t1w_path: str | Path, out_dir: str | Path, participant_id: str, grids: list[float],
    engine: str = "native", resources_root: str | Path | None = None, settings: dict | None = None,
    threads: int = 2, template: str | Path | None = None,
) -> dict:
    """Preprocess one raw T1w scan into ``out_dir``; return its QC dict (``ncc``, ``brain_volume_ml``,
    ``passed``, ...). ``settings``: the ``preprocess`` config section (defaults when omitted).

    ``template``: the 1 mm template brain NIfTI (default: ``resources_root``'s res-1 template when
    it exists, else the packaged one; its brain mask is the template's non-zero voxels).
    """
    from brainage.data.manifest import check_participant_id

    check_participant_id(participant_id)  # it names every file: no path may leave out_dir
    grids = check_grids(grids)
    if engine not in ("native", "minc"):
        raise ValueError(f"unknown preprocessing engine {engine!r} (native | minc)")
    # every output goes to a temporary folder moved into out_dir at the end, the QC json last:
    # a failure or a kill leaves no partial set that a rerun would take for finished
    with atomic_dir(out_dir, last=preprocess_outputs(out_dir, participant_id, grids)["qc_json"].name) as tmp:
        if engine == "minc":
            from brainage.preprocess.minc import preprocess_t1w_minc

            return preprocess_t1w_minc(t1w_path, tmp, participant_id, grids, settings=settings, template=template)
        from brainage.preprocess.native import run_native

        return run_native(t1w_path, tmp, participant_id, grids, resources_root, settings, threads, template)


def preprocess_or_exclude(t1w_path: str | Path, out_dir: str | Path, participant_id: str, grids: list[float],
                          **kwargs) -> dict:
    """The pipeline's entry (rule ``preprocess``): :func:`preprocess_t1w`, or, when the scan is
    bad input (:class:`InputError`: unreadable, truncated, NaN, absurd voxels, no brain found,
    failed registration), the subject's output set marking it excluded (:func:`write_excluded`),
    so that the cohort QC table lists it in ``results/qc/excluded.tsv`` with the reason and every
    other subject goes on.
    """
    try:
        return preprocess_t1w(t1w_path, out_dir, participant_id, grids, **kwargs)
    except InputError as err:
        reason = str(err).splitlines()[0]
        log.warning("%s: excluded: %s", participant_id, reason)
        return write_excluded(out_dir, participant_id, t1w_path, grids, reason, engine=kwargs.get("engine", "native"))



def main(argv: list[str] | None = None) -> int:
    """``brainage preprocess`` (see :mod:`.cli`)."""
    from brainage.preprocess.cli import main as cli_main

    return cli_main(argv)


def _id_from_name(path: str) -> str:
    from brainage.preprocess.cli import _id_from_name as from_name

    return from_name(path)
