"""The entry points of one scan's preprocessing: :func:`preprocess_t1w` (either engine, every
output written into a temporary folder moved into place) and :func:`preprocess_or_exclude` (the
pipeline's, which turns bad input into an excluded subject). Their own module, below the command
line (:mod:`.cli`) and the package's face (``brainage.preprocess``), which both import them."""

from __future__ import annotations

import logging
from pathlib import Path

from brainage.core.grids import check_grids
from brainage.core.io import InputError, atomic_dir
from brainage.core.paths import preprocess_outputs
from brainage.preprocess.finish import write_excluded

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
