"""Preprocessing of one raw T1w scan: brain mask, N4, 12-dof affine to MNI152NLin2009cAsym.

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

Outputs (BIDS derivatives, under ``out_dir``; see :func:`brainage.paths.preprocess_outputs`)::

    <sub>_space-MNI152NLin2009cAsym_res-<r>_desc-preproc_T1w.nii.gz   one per grid
    <sub>_desc-brain_mask.nii.gz                                      native space
    <sub>_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.mat          ITK/ANTs affine
    <sub>_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.json         the same as 4 x 4 RAS matrices
    <sub>_desc-qc.json, <sub>_desc-qc.png                             QC metrics and figure
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from brainage import TEMPLATE_SPACE
from brainage.grids import (
    TEMPLATE_AFFINE_1MM,
    TEMPLATE_SHAPE_1MM,
    check_grids,
    downsample_from_1mm,
    res_label,
    template_grid,
)
from brainage.io import InputError, atomic_dir, atomic_path, nifti_image, save_nifti, write_json
from brainage.paths import preprocess_outputs
from brainage.preprocess.qc import QCThresholds, affine_summary, ncc, qc_failures, qc_figure
# one rule for what a usable scan is, with `brainage manifest --check` (VOXEL_MM_RANGE: a voxel
# size outside it is a broken header, not a scan)
from brainage.scans import MIN_AXIS_VOXELS, VOXEL_MM_RANGE, header_problem

log = logging.getLogger("brainage.preprocess")

#: a registration whose affine shrinks or stretches the head beyond these determinants failed
DETERMINANT_RANGE = (0.2, 5.0)


def settings_from_config(section: dict | None) -> dict[str, Any]:
    """Settings objects from the ``preprocess`` config section (missing keys: defaults)."""
    from brainage.preprocess.native import N4Settings, RegistrationSettings

    section = section or {}
    native = section.get("native", {}) or {}

    def build(cls, values: dict):
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"config preprocess: unknown {cls.__name__} keys {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    qc = dict(section.get("qc", {}) or {})
    qc.pop("on_fail", None)
    return {
        "n4": build(N4Settings, native.get("n4", {}) or {}),
        "registration": build(RegistrationSettings, native.get("registration", {}) or {}),
        "qc": build(QCThresholds, qc),
    }


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

    From 1 mm: :func:`brainage.grids.downsample_from_1mm`. From a coarser grid: exact block means,
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
    out_dir: str | Path, grids: list[float], template_1mm: np.ndarray, template_mask_1mm: np.ndarray,
    thresholds: QCThresholds, extra_qc: dict | None = None, transform_file: str | Path | None = None,
    started: float | None = None,
) -> dict:
    """Write every output from a registered volume on the ``base_res`` template grid; return QC.

    Both engines end here. ``volume``: the brain on the ``base_res`` grid (1 mm: 193 x 229 x 193),
    not yet normalised; ``brain``: bool brain mask on that grid; ``template_to_native``: RAS
    4 x 4; ``native_mask``: bool mask on the raw scan's grid (``native_affine``).
    """
    started = time.perf_counter() if started is None else started
    paths = preprocess_outputs(out_dir, participant_id, grids)
    volume = _normalise(volume, brain)
    native_to_template = np.linalg.inv(template_to_native)
    summary = affine_summary(native_to_template)
    if not DETERMINANT_RANGE[0] <= summary["determinant"] <= DETERMINANT_RANGE[1]:
        raise InputError(f"{participant_id}: {t1w_path}: registration failed (affine determinant "
                         f"{summary['determinant']:.3g} outside {DETERMINANT_RANGE})")
    qc_res = max(QC_NCC_RES, base_res)
    tpl_qc = downsample_from_1mm(template_1mm, qc_res)
    mask_qc = downsample_from_1mm(template_mask_1mm.astype(np.float32), qc_res) >= 0.5
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
            from brainage.preprocess.native import write_ants_affine

            write_ants_affine(template_to_native, tmp)
    write_json(paths["xfm_json"], {
        "template_to_native_ras": template_to_native,
        "native_to_template_ras": native_to_template,
        "convention": f"RAS+ mm; template_to_native maps an {TEMPLATE_SPACE} point to the T1w scanner "
                      "point resampled onto it (ITK/ANTs file stores the same in LPS)",
    })
    title = (f"{participant_id}  NCC {metrics['ncc']:.3f}  brain {metrics['brain_volume_ml']:.0f} ml  "
             f"{'passed' if not reasons else 'FAILED: ' + '; '.join(reasons)}")
    mask_base = downsample_grid(template_mask_1mm.astype(np.float32), 1.0, base_res) >= 0.5
    qc_figure(volume, mask_base, template_grid(base_res).affine, title, paths["qc_png"])
    metrics["runtime_s"] = round(time.perf_counter() - started, 2)
    write_json(paths["qc_json"], metrics)  # last: its presence means every output is complete
    return metrics


def _normalise(volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    from brainage.preprocess.native import normalise_in_brain

    return normalise_in_brain(volume, brain)


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
    from brainage.manifest import check_participant_id

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
        return _preprocess_native(t1w_path, tmp, participant_id, grids, resources_root, settings, threads, template)


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
        template_mask = downsample_from_1mm(load_template()[1].astype(np.float32), finest.res) >= 0.5
        qc_figure(np.zeros(finest.shape, np.float32), template_mask, finest.affine,
                  f"{participant_id}  EXCLUDED: {reason[:120]}", tmp_paths["qc_png"])
        write_json(tmp_paths["qc_json"], metrics)
    return metrics


def load_template(resources_root: str | Path | None = None, template: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 1 mm template brain (float32) and its brain mask (bool) on the 193 x 229 x 193 grid."""
    from scipy import ndimage

    from brainage.atlases import load_template_1mm, resource_paths

    if template is None and resources_root is not None and resource_paths(resources_root, 1)["template"].exists():
        template = resource_paths(resources_root, 1)["template"]
    if template is None:
        return load_template_1mm()
    img = nib.load(str(template))
    if img.shape != TEMPLATE_SHAPE_1MM or not np.allclose(img.affine, TEMPLATE_AFFINE_1MM):
        raise ValueError(f"{template}: not on the 1 mm template grid {TEMPLATE_SHAPE_1MM}")
    data = np.asarray(img.dataobj, dtype=np.float32)
    return data, ndimage.binary_fill_holes(data > 0)


def _preprocess_native(t1w_path, out_dir, participant_id, grids, resources_root, settings, threads, template) -> dict:
    from scipy import ndimage

    from brainage.preprocess import native

    started = time.perf_counter()
    native.set_threads(threads)
    cfg = settings_from_config(settings)
    img = load_t1w(t1w_path, participant_id)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    mask = native.brain_mask_deepbet(img)
    timings["brain_mask"] = time.perf_counter() - t
    if mask.sum() * abs(np.linalg.det(img.affine[:3, :3])) < 100_000:  # < 100 ml: no brain found
        raise InputError(f"{participant_id}: {t1w_path}: brain extraction found no brain "
                         f"({mask.sum()} voxels); is this a T1w head scan?")

    data = np.asarray(img.dataobj, dtype=np.float32)
    data = data - min(0.0, float(data.min()))  # N4 works on positive intensities
    image = native.ants_image(data, img.affine)
    mask_img = native.ants_image(mask.astype(np.float32), img.affine)
    head_box, mask_box = native.crop_to_mask(image, mask_img)

    t = time.perf_counter()
    corrected, n4_info = native.n4_in_mask(head_box, mask_box, cfg["n4"])
    brain = corrected * mask_box
    timings["n4"] = time.perf_counter() - t

    tpl, tpl_mask = load_template(resources_root, template)
    tpl_img = native.ants_image(tpl, TEMPLATE_AFFINE_1MM)
    # a 5 mm rim around the template brain lets the brain outline drive the fit
    reg_mask = ndimage.binary_dilation(tpl_mask, iterations=5)
    reg_mask_img = native.ants_image(reg_mask.astype(np.float32), TEMPLATE_AFFINE_1MM)
    voxel_mm = float(max(np.linalg.norm(img.affine[:3, :3], axis=0)))
    base_res = base_resolution(grids, voxel_mm)
    base_grid = template_grid(base_res)
    base_img = native.ants_image(np.zeros(base_grid.shape, np.float32), base_grid.affine)

    with tempfile.TemporaryDirectory(prefix="brainage-reg-") as work:
        t = time.perf_counter()
        try:
            reg = native.register_affine_to_template(brain, tpl_img, reg_mask_img, cfg["registration"], workdir=work)
        except RuntimeError as err:
            raise InputError(f"{participant_id}: {t1w_path}: registration failed ({err})") from None
        if not np.isfinite(reg.template_to_native).all():
            raise InputError(f"{participant_id}: {t1w_path}: registration failed (non-finite affine)")
        timings["registration"] = time.perf_counter() - t

        t = time.perf_counter()
        volume = native.resample_to_template(brain, base_img, reg.transform_file, "bSpline")
        brain_base = native.resample_to_template(mask_box, base_img, reg.transform_file, "linear") >= 0.5
        timings["resample"] = time.perf_counter() - t
        extra = {
            "engine": "native",
            "n4": n4_info,
            "registration": {"metric": cfg["registration"].metric, "levels_mm": reg.levels_mm,
                             "init": cfg["registration"].init},
            "timings_s": {k: round(v, 2) for k, v in timings.items()},
        }
        metrics = finish_from_base(
            volume, brain_base, base_res, reg.template_to_native, mask, img.affine, participant_id, t1w_path,
            out_dir, grids, tpl, tpl_mask, cfg["qc"], extra, transform_file=reg.transform_file, started=started,
        )
    log.info("%s: NCC %.3f, brain %.0f ml, %s in %.1f s", participant_id, metrics["ncc"],
             metrics["brain_volume_ml"], "passed" if metrics["passed"] else "FAILED QC", metrics["runtime_s"])
    return metrics


def main(argv: list[str] | None = None) -> int:
    """``brainage preprocess --t1w FILE --out-dir DIR``: preprocess one T1w scan."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="brainage preprocess", description=main.__doc__)
    parser.add_argument("--t1w", required=True, help="raw T1-weighted NIfTI")
    parser.add_argument("--out-dir", required=True, help="output folder")
    parser.add_argument("--engine", choices=["native", "minc"], default="native")
    parser.add_argument("--grids", default="1,2", help="comma-separated template grids in mm (default 1,2)")
    parser.add_argument("--participant-id", default=None, help="subject id, sub-<letters and digits> (default: from the file name)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", default=None, help="YAML config whose 'preprocess' section sets the chain")
    args = parser.parse_args(argv)
    try:
        sub, grids, settings = _checked_arguments(args)
        qc = preprocess_t1w(args.t1w, args.out_dir, sub, grids, engine=args.engine, settings=settings,
                            threads=args.threads)
    except InputError as err:
        print(f"brainage preprocess: {err}", file=sys.stderr)
        return 1
    print(f"{sub}: ncc={qc['ncc']:.3f} brain_volume_ml={qc['brain_volume_ml']:.0f} passed={qc['passed']} "
          f"-> {args.out_dir}")
    return 0


def _checked_arguments(args) -> tuple[str, list[float], dict | None]:
    """Participant id, grids and settings of ``brainage preprocess``, every argument checked
    before any work (InputError, one line): scan, id, grids, threads, config, output folder."""
    import yaml

    from brainage.io import check_output_dir
    from brainage.manifest import check_image, check_participant_id

    sub = check_participant_id(args.participant_id if args.participant_id is not None else _id_from_name(args.t1w))
    problem = check_image(args.t1w)
    if problem:
        raise InputError(f"{sub}: --t1w {problem}")
    grids = check_grids([g.strip() for g in args.grids.split(",") if g.strip()])
    if args.threads < 1:
        raise InputError(f"--threads {args.threads} must be at least 1")
    settings = None
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise InputError(f"--config {path}: no such file")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise InputError(f"--config {path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(loaded, dict) or not isinstance(loaded.get("preprocess"), dict):
            raise InputError(f"--config {path}: no 'preprocess' section (see config/config.yaml)")
        settings = loaded["preprocess"]
        try:
            settings_from_config(settings)
        except (TypeError, ValueError) as err:
            raise InputError(f"--config {path}: {err}") from None
    check_output_dir(args.out_dir, "--out-dir")
    return sub, grids, settings


def _id_from_name(path: str) -> str:
    name = Path(path).name.split(".")[0]
    stem = name.split("_")[0] if name.startswith("sub-") else name
    return stem if stem.startswith("sub-") else f"sub-{''.join(c for c in stem if c.isalnum())}"
