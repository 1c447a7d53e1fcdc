"""What both engines share: reading a raw scan, the template, the grid arithmetic, and the
finishing of an engine's result on its base grid into the pipeline's outputs (intensities
normalised in the brain, every configured grid, native mask, affine files, QC json and figure)
-- or the outputs of a subject whose scan is bad input (:func:`write_excluded`). The settings
are in :mod:`.settings`."""

from __future__ import annotations

import functools
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np

from brainage import TEMPLATE_SPACE
from brainage.core.grids import (
    TEMPLATE_AFFINE_1MM,
    TEMPLATE_SHAPE_1MM,
    downsample_from_1mm,
    res_label,
    template_grid,
)
from brainage.core.io import InputError, atomic_dir, atomic_path, nifti_image, save_nifti, write_json
from brainage.core.paths import preprocess_outputs
from brainage.preprocess.qc import QCThresholds, affine_summary, ncc, qc_failures, qc_figure
from brainage.preprocess.transforms import write_ants_affine
# one rule for what a usable scan is, with `brainage manifest --check` (VOXEL_MM_RANGE: a voxel
# size outside it is a broken header, not a scan)
from brainage.core.scans import MIN_AXIS_VOXELS, VOXEL_MM_RANGE, header_problem

log = logging.getLogger("brainage.preprocess")


#: a registration whose affine shrinks or stretches the head beyond these determinants failed
DETERMINANT_RANGE = (0.2, 5.0)


def load_t1w(path: str | Path, participant_id: str) -> nib.Nifti1Image:
    """Read and check a raw T1w scan; bad input raises :class:`InputError` (one line)."""
    where = f"{participant_id}: {path}"
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises many types for broken files
        raise InputError(f"{where}: cannot read image ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{where}: expected a 3D T1w image, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise InputError(f"{where}: image contains {int((~np.isfinite(data)).sum())} NaN/Inf voxels")
    if not np.any(data):
        raise InputError(f"{where}: image is all zeros")
    if float(data.max() - data.min()) <= 0:
        raise InputError(f"{where}: image is constant")
    zooms = np.linalg.norm(img.affine[:3, :3], axis=0)
    if not np.all((zooms >= VOXEL_MM_RANGE[0]) & (zooms <= VOXEL_MM_RANGE[1])):
        raise InputError(f"{where}: absurd voxel size {tuple(round(float(z), 3) for z in zooms)} mm "
                         f"(expected {VOXEL_MM_RANGE[0]}-{VOXEL_MM_RANGE[1]} mm)")
    if min(data.shape) < MIN_AXIS_VOXELS:
        raise InputError(f"{where}: field of view too small, shape {data.shape}")
    problem = header_problem(img)  # orientation, and anything else --check refuses
    if problem:
        raise InputError(f"{where}: {problem}")
    out = nib.Nifti1Image(data, img.affine, img.header)
    out.set_data_dtype(np.float32)
    return out


def _save_volume(data: np.ndarray, affine: np.ndarray, path: Path, dtype=np.float32, mni: bool = True) -> None:
    save_nifti(nifti_image(data.astype(dtype), affine, "mni" if mni else "scanner"), path)


#: grid (mm) on which the QC NCC is computed, whatever the grids written: one threshold for all
QC_NCC_RES = 2.0


def base_resolution(grids: list[float], voxel_mm: float) -> float:
    """The grid the scan is resampled onto with B-splines; every configured grid is block-averaged from it.

    The coarsest whole-millimetre grid that is no coarser than the scan's voxels and of which
    every configured grid is an integer multiple: 1 mm for 1 mm scans (the study's chain), 2 mm
    for the demo's 2 mm scans with grids 2 and 4. B-spline resampling straight onto a grid no
    finer than the scan loses nothing (the scan has no detail finer than the grid to alias)
    and saves resampling 8.5 M voxels at 1 mm.
    """
    finest = min(float(g) for g in grids)
    for r in range(int(np.floor(finest + 1e-6)), 1, -1):
        if r <= voxel_mm + 1e-3 and all(abs(g / r - round(g / r)) < 1e-6 for g in grids):
            return float(r)
    return 1.0


def downsample_grid(volume: np.ndarray, src_res: float, res: float) -> np.ndarray:
    """Anti-aliased copy of a template-grid volume at ``src_res`` mm on the ``res`` mm grid.

    From 1 mm: :func:`brainage.core.grids.downsample_from_1mm`. From a coarser grid: exact block means,
    valid because grid ``k * r`` voxel centres are the centres of ``k^3`` blocks of grid ``r``.
    """
    if float(src_res) == 1.0:
        return downsample_from_1mm(volume, res)
    factor = res / src_res
    if abs(factor - round(factor)) > 1e-6 or factor < 1:
        raise ValueError(f"grid {res} mm is not an integer multiple of {src_res} mm")
    f = int(round(factor))
    shape = template_grid(res).shape
    if f == 1:
        return volume.astype(np.float32, copy=True)
    cropped = volume[: shape[0] * f, : shape[1] * f, : shape[2] * f].astype(np.float64)
    return cropped.reshape(shape[0], f, shape[1], f, shape[2], f).mean(axis=(1, 3, 5)).astype(np.float32)


def finish_from_base(
    volume: np.ndarray, brain: np.ndarray, base_res: float, template_to_native: np.ndarray,
    native_mask: np.ndarray, native_affine: np.ndarray, participant_id: str, t1w_path: str | Path,
    out_dir: str | Path, grids: list[float], template: Template, thresholds: QCThresholds,
    extra_qc: dict | None = None, transform_file: str | Path | None = None, started: float | None = None,
) -> dict:
    """Write every output from a registered volume on the ``base_res`` template grid; return QC.

    Both engines end here. ``volume``: the brain on the ``base_res`` grid (1 mm: 193 x 229 x 193),
    not yet normalised; ``brain``: bool brain mask on that grid; ``template_to_native``: RAS
    4 x 4; ``native_mask``: bool mask on the raw scan's grid (``native_affine``); ``template``:
    :func:`load_template`'s.
    """
    started = time.perf_counter() if started is None else started
    paths = preprocess_outputs(out_dir, participant_id, grids)
    volume = normalise_in_brain(volume, brain)
    native_to_template = np.linalg.inv(template_to_native)
    summary = affine_summary(native_to_template)
    if not DETERMINANT_RANGE[0] <= summary["determinant"] <= DETERMINANT_RANGE[1]:
        raise InputError(f"{participant_id}: {t1w_path}: registration failed (affine determinant "
                         f"{summary['determinant']:.3g} outside {DETERMINANT_RANGE})")
    qc_res = max(QC_NCC_RES, base_res)
    tpl_qc, mask_qc = template.on_grid(qc_res)
    voxel_ml = float(abs(np.linalg.det(native_affine[:3, :3]))) / 1000.0
    metrics = {
        "participant_id": participant_id,
        "t1w": str(t1w_path),
        "ncc": ncc(downsample_grid(volume, base_res, qc_res), tpl_qc, mask_qc),
        "ncc_grid_mm": qc_res,
        "brain_volume_ml": float(native_mask.sum()) * voxel_ml,
        "affine": summary,
        "base_grid_mm": base_res,
        **(extra_qc or {}),
    }
    reasons = qc_failures(metrics, thresholds)
    metrics.update(passed=not reasons, reasons=reasons, thresholds=asdict(thresholds))

    for r in grids:
        _save_volume(downsample_grid(volume, base_res, r), template_grid(r).affine, paths[f"res{res_label(r)}"])
    _save_volume(native_mask.astype(np.uint8), native_affine, paths["mask"], dtype=np.uint8, mni=False)
    with atomic_path(paths["xfm"]) as tmp:
        if transform_file is not None:
            shutil.copyfile(transform_file, tmp)
        else:
            write_ants_affine(template_to_native, tmp)
    write_json(paths["xfm_json"], {
        "template_to_native_ras": template_to_native,
        "native_to_template_ras": native_to_template,
        "convention": f"RAS+ mm; template_to_native maps an {TEMPLATE_SPACE} point to the T1w scanner "
                      "point resampled onto it (ITK/ANTs file stores the same in LPS)",
    })
    title = (f"{participant_id}  NCC {metrics['ncc']:.3f}  brain {metrics['brain_volume_ml']:.0f} ml  "
             f"{'passed' if not reasons else 'FAILED: ' + '; '.join(reasons)}")
    qc_figure(volume, template.on_grid(base_res)[1], template_grid(base_res).affine, title, paths["qc_png"])
    metrics["runtime_s"] = round(time.perf_counter() - started, 2)
    write_json(paths["qc_json"], metrics)  # last: its presence means every output is complete
    return metrics


def normalise_in_brain(volume: np.ndarray, brain: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Robust min-max intensity normalisation inside the brain: ``(X, Y, Z)`` float32 in [0, 1].

    ``v' = clip((v - p_low) / (p_high - p_low), 0, 1)`` with the percentiles taken over the brain
    voxels (``brain`` bool), and 0 outside the brain. Percentiles rather than min/max make the
    scale immune to B-spline overshoot and to a few bright vessels; the upper one sits in white
    matter, so white matter is about 1 in every subject whatever the scanner gain.
    """
    values = volume[brain]
    if values.size == 0:
        raise ValueError("empty brain mask: nothing to normalise")
    lo, hi = np.percentile(values, [low_pct, high_pct])
    scale = hi - lo if hi > lo else 1.0
    out = np.clip((volume - lo) / scale, 0.0, 1.0).astype(np.float32)
    out[~brain] = 0.0
    return out


def write_excluded(out_dir: str | Path, participant_id: str, t1w_path: str | Path, grids: list[float],
                   reason: str, engine: str = "native") -> dict:
    """The outputs of a subject whose scan could not be preprocessed: every file the rule
    declares, empty volumes (zeros on each template grid: no data of this subject downstream,
    where the splits leave excluded subjects out), and the QC json with ``passed: false``,
    ``excluded: true`` and the reason (the QC figure shows it). Returns the QC dict."""
    grids = [float(g) for g in grids]
    paths = preprocess_outputs(out_dir, participant_id, grids)
    finest = template_grid(min(grids))
    metrics = {
        "participant_id": participant_id, "t1w": str(t1w_path), "engine": engine, "passed": False,
        "excluded": True, "reasons": [f"bad input: {reason}"], "ncc": None, "brain_volume_ml": None,
        "affine": None,
    }
    with atomic_dir(out_dir, last=paths["qc_json"].name) as tmp:
        tmp_paths = preprocess_outputs(tmp, participant_id, grids)
        for r in grids:
            grid = template_grid(r)
            _save_volume(np.zeros(grid.shape, np.float32), grid.affine, tmp_paths[f"res{res_label(r)}"])
        _save_volume(np.zeros(finest.shape, np.uint8), finest.affine, tmp_paths["mask"], dtype=np.uint8)
        write_json(tmp_paths["xfm_json"], {"excluded": reason})
        tmp_paths["xfm"].write_text(f"# {participant_id} excluded, no transform: {reason}\n")
        qc_figure(np.zeros(finest.shape, np.float32), load_template().on_grid(finest.res)[1], finest.affine,
                  f"{participant_id}  EXCLUDED: {reason[:120]}", tmp_paths["qc_png"])
        write_json(tmp_paths["qc_json"], metrics)
    return metrics


class Template:
    """The 1 mm template brain (float32) and its brain mask (bool) on the 193 x 229 x 193 grid,
    read-only, with their copies on coarser template grids made once (:meth:`on_grid`): a batch
    of subjects in one process (config preprocess.subjects_per_job) shares them."""

    def __init__(self, brain: np.ndarray, mask: np.ndarray):
        if brain.shape != TEMPLATE_SHAPE_1MM or mask.shape != TEMPLATE_SHAPE_1MM:
            raise ValueError(f"template and mask must be on the 1 mm template grid {TEMPLATE_SHAPE_1MM}")
        self.brain = _read_only(brain.astype(np.float32, copy=False))
        self.mask = _read_only(mask.astype(bool, copy=False))
        self._grids: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def on_grid(self, res: float) -> tuple[np.ndarray, np.ndarray]:
        """The brain (:func:`brainage.core.grids.downsample_from_1mm`) and its mask (block share of
        brain >= 0.5) on the ``res`` mm template grid, read-only."""
        res = float(res)
        if res not in self._grids:
            self._grids[res] = (
                _read_only(downsample_from_1mm(self.brain, res)),
                _read_only(downsample_from_1mm(self.mask.astype(np.float32), res) >= 0.5),
            )
        return self._grids[res]


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def load_template(resources_root: str | Path | None = None, template: str | Path | None = None) -> Template:
    """The 1 mm template: ``template`` (a NIfTI on the 1 mm grid; its brain mask is its non-zero
    voxels, holes filled), else ``resources_root``'s res-1 template when it exists, else the
    packaged one. Read once per process and file: every subject of a batch gets the same
    (read-only) :class:`Template`."""
    from brainage.data.atlases import resource_paths

    if template is None and resources_root is not None and resource_paths(resources_root, 1)["template"].exists():
        template = resource_paths(resources_root, 1)["template"]
    return _load_template(None if template is None else str(Path(template).resolve()))


@functools.lru_cache(maxsize=2)
def _load_template(template: str | None) -> Template:
    from scipy import ndimage

    from brainage.data.atlases import load_template_1mm

    if template is None:
        return Template(*load_template_1mm())
    img = nib.load(template)
    if img.shape != TEMPLATE_SHAPE_1MM or not np.allclose(img.affine, TEMPLATE_AFFINE_1MM):
        raise ValueError(f"{template}: not on the 1 mm template grid {TEMPLATE_SHAPE_1MM}")
    data = np.asarray(img.dataobj, dtype=np.float32)
    return Template(data, ndimage.binary_fill_holes(data > 0))

