"""The native preprocessing engine: deepbet brain mask, N4 in the mask, 12-dof affine to MNI.

Everything runs in-process with packaged weights and templates (deepbet, ANTsPy), so the chain
works wherever the package installs. Each step is one function on arrays or ANTs images; the
orchestration (files, QC, names) is in :mod:`brainage.preprocess`.

Conventions
-----------
* Volumes are ``(X, Y, Z)`` arrays in the voxel order of their NIfTI file (ANTsPy's ``.numpy()``
  and nibabel's ``dataobj`` agree on it).
* Affines are 4 x 4 matrices in RAS+ millimetres. ``template_to_native`` maps a template (MNI)
  point to the native scanner point that lands on it -- the mapping used to resample the scan
  onto the template grid, and what ANTs/ITK store in the ``..._xfm.mat`` file (there in LPS).
  ``native_to_template`` is its inverse: its scales are the template-to-head size ratios.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from brainage.core.grids import TEMPLATE_AFFINE_1MM, template_grid
from brainage.core.io import InputError
from brainage.preprocess.finish import (
    Template,
    base_resolution,
    finish_from_base,
    load_t1w,
    load_template,
    settings_from_config,
)

log = logging.getLogger("brainage.preprocess")

#: RAS <-> LPS (ITK) sign flip, applied on both sides of a 4 x 4 matrix
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class BrainMaskSettings:
    """deepbet brain extraction.

    ``shape``: the cube (voxels per side) deepbet's segmentation network runs on, the head's
    bounding box resampled to it; its cost grows with ``shape**3``. deepbet's own is 256, made
    for ~1 mm scans; ``auto`` keeps 256 for scans finer than ``coarse_mm`` and takes 192 for
    coarser ones (the demo's 2 mm scans: their bounding box, about 90 voxels per side, needs no
    more): about half deepbet's time, brain-mask Dice within 0.003 of 256 on simulated 2 mm
    heads, 0.08 lower at 128 (benchmarks/bench_demo.py units).
    """

    shape: int | str = "auto"
    coarse_mm: float = 1.5

    def cube(self, voxel_mm: float) -> int:
        """Voxels per side of deepbet's cube for a scan of ``voxel_mm`` (its largest spacing)."""
        if self.shape == "auto":
            return 192 if voxel_mm >= self.coarse_mm else 256
        return int(self.shape)


@dataclass(frozen=True)
class N4Settings:
    """N4 non-uniformity correction (Tustison 2010) as ANTs' N4BiasFieldCorrection runs it.

    ``shrink_mm``: the bias field is fitted on the image shrunk to about this spacing (the
    field is smooth on a 200 mm mesh, so fitting it at 6 mm loses nothing and is ~200x cheaper
    than at 1 mm).
    ``iterations``: per fitting level (each level doubles the B-spline mesh), stopped early at
    ``tolerance`` (coefficient of variation of the field update). ``spline_distance_mm``: the
    B-spline mesh spacing of the first level (ANTs' ``-b [200]``, as fMRIPrep).
    """

    shrink_mm: float = 6.0
    iterations: tuple[int, ...] = (25, 25, 25)
    tolerance: float = 1e-6
    spline_distance_mm: float = 200.0


@dataclass(frozen=True)
class RegistrationSettings:
    """Multi-resolution 12-dof affine registration of the brain to the template brain.

    ``levels_mm``: effective voxel size of each pyramid level, coarse to fine; levels finer than
    the scan's own voxel size are dropped (a 2 mm scan stops at 2 mm: matching it at 1 mm would
    only interpolate). ``smoothing_mm`` is the Gaussian sigma per level. The rigid and
    similarity stages run on the coarse levels only (``init_levels``), the affine stage on all.
    ``metric``: ``GC`` (global normalised correlation, the study's NCC) or ``CC`` (local).
    ``init``: ``search`` = ants' antsAffineInitializer rotation search on 8 mm images (survives
    any starting pose within ``search_arc_deg``), ``moments`` = centres of mass only.
    """

    metric: str = "GC"
    levels_mm: tuple[float, ...] = (8.0, 4.0, 2.0)
    smoothing_mm: tuple[float, ...] = (4.0, 2.0, 1.0)
    iterations: tuple[int, ...] = (200, 100, 50)
    init_levels: int = 2
    sampling: float = 0.25
    init: str = "moments"
    search_step_deg: float = 15.0
    search_arc_deg: float = 45.0
    convergence_tol: float = 1e-5
    stop_at_voxel: bool = True
    seed: int = 42


@dataclass
class RegistrationResult:
    """The fitted affine (``template_to_native`` RAS 4 x 4, see module docstring) and its files."""

    template_to_native: np.ndarray
    transform_file: Path
    levels_mm: list[float] = field(default_factory=list)

    @property
    def native_to_template(self) -> np.ndarray:
        return np.linalg.inv(self.template_to_native)


def set_threads(threads: int) -> None:
    """Cap the threads of ITK (ANTs) and torch (deepbet) for this process."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(max(1, threads))


def brain_mask_deepbet(img, use_gpu: bool | None = None, settings: BrainMaskSettings | None = None) -> np.ndarray:
    """deepbet brain mask of a nibabel image, in the image's own voxel order: ``(X, Y, Z)`` bool.

    deepbet (Fisch et al. 2024) ships its weights in the wheel, finds the head's bounding box,
    segments it on a cube of :meth:`BrainMaskSettings.cube` voxels per side (without ``settings``:
    deepbet's own 256) and keeps the largest connected component with holes filled.
    """
    import torch

    if use_gpu is None:
        use_gpu = torch.cuda.is_available()
    cube = 256 if settings is None else settings.cube(float(max(img.header.get_zooms()[:3])))
    _, mask_img, _ = _deepbet(bool(use_gpu), cube).run(img)
    return np.asarray(mask_img.dataobj).astype(bool)


@functools.lru_cache(maxsize=4)
def _deepbet(use_gpu: bool, cube: int):
    """deepbet's extractor segmenting on a ``cube``-voxel cube, its two networks loaded once per
    process (the subjects of a batch share it; its only state, the last bounding box, is set
    afresh by every run)."""
    import deepbet

    extractor = deepbet.BrainExtraction(no_gpu=not use_gpu)
    if cube != 256:  # deepbet's own
        run_model = extractor.run_model
        extractor.run_model = lambda x: run_model(x, shape=(cube,) * 3)
    return extractor


@contextlib.contextmanager
def _capture_fd_stdout() -> Iterator[list[str]]:
    """Collect what C++ code writes to file descriptor 1 (ANTs' verbose output) as lines."""
    import sys

    lines: list[str] = []
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield lines
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().splitlines())


def n4_in_mask(image, mask, settings: N4Settings = N4Settings()):
    """N4 bias-field correction of ``image`` fitted inside ``mask`` (ANTs images, same grid).

    Returns ``(corrected, info)``; ``info`` records, per fitting level, the iterations run and the
    last convergence value (whether it reached ``tolerance``), parsed from N4's verbose output.
    """
    import ants

    spacing = float(min(image.spacing))
    shrink = max(1, int(round(settings.shrink_mm / spacing)))
    with _capture_fd_stdout() as lines:
        corrected = ants.n4_bias_field_correction(
            image, mask=mask, shrink_factor=shrink, spline_param=int(settings.spline_distance_mm),
            convergence={"iters": list(settings.iterations), "tol": settings.tolerance}, verbose=True,
        )
    levels: list[dict] = []
    for line in lines:
        if line.startswith("Current level"):
            levels.append({"iterations": 0, "convergence": None})
        match = re.search(r"Iteration (\d+) \(of \d+\)\.\s+Current convergence value = ([0-9.eE+-]+)", line)
        if match and levels:
            levels[-1]["iterations"] = int(match.group(1))
            levels[-1]["convergence"] = float(match.group(2))
    converged = bool(levels) and levels[-1]["convergence"] is not None and levels[-1]["convergence"] <= settings.tolerance
    info = {
        "shrink_factor": shrink, "levels": levels, "converged": converged,
        "tolerance": settings.tolerance, "spline_distance_mm": settings.spline_distance_mm,
    }
    return corrected, info


def crop_to_mask(image, mask, margin_mm: float = 10.0):
    """Crop ANTs ``image`` and ``mask`` to the mask's bounding box plus ``margin_mm``.

    A whole-head scan with neck is 2-4x the brain's box; N4 and registration only need the box.
    """
    import ants

    m = mask.numpy() > 0
    idx = np.argwhere(m)
    margin = np.ceil(margin_mm / np.asarray(image.spacing)).astype(int)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, np.asarray(m.shape))
    return (
        ants.crop_indices(image, lo.tolist(), hi.tolist()),
        ants.crop_indices(mask, lo.tolist(), hi.tolist()),
    )


def ants_image(data: np.ndarray, affine: np.ndarray):
    """An ANTs image from a RAS voxel-to-world affine (NIfTI convention) and an ``(X, Y, Z)`` array."""
    import ants

    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    direction_ras = affine[:3, :3] / zooms
    direction_lps = _LPS[:3, :3] @ direction_ras
    origin_lps = _LPS[:3, :3] @ affine[:3, 3]
    return ants.from_numpy(
        np.ascontiguousarray(data, dtype=np.float32), origin=origin_lps.tolist(),
        spacing=zooms.tolist(), direction=direction_lps,
    )


def read_ants_affine(path: str | Path) -> np.ndarray:
    """An ITK/ANTs affine transform file as a RAS 4 x 4 matrix (fixed/template -> moving/native)."""
    import ants

    tx = ants.read_transform(str(path))
    params = np.asarray(tx.parameters, dtype=np.float64)
    centre = np.asarray(tx.fixed_parameters, dtype=np.float64)
    matrix = params[:9].reshape(3, 3)
    translation = params[9:12]
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = translation + centre - matrix @ centre
    return _LPS @ lps @ _LPS


def write_ants_affine(template_to_native: np.ndarray, path: str | Path) -> None:
    """Write a RAS 4 x 4 ``template_to_native`` as an ITK affine file (``.mat`` or ``.txt``)."""
    import ants

    lps = _LPS @ template_to_native @ _LPS
    tx = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=lps[:3, :3], offset=lps[:3, 3].tolist()
    )
    ants.write_transform(tx, str(path))


def _levels_for(settings: RegistrationSettings, voxel_mm: float) -> list[int]:
    """Indices of the pyramid levels used for a scan of ``voxel_mm`` (none finer than the scan)."""
    floor = voxel_mm if settings.stop_at_voxel else 0.0
    keep = [i for i, lv in enumerate(settings.levels_mm) if lv >= floor - 1e-3]
    if not keep:  # a scan coarser than every level: use the coarsest level alone
        keep = [0]
    return keep


class RegistrationTarget:
    """The fixed side of :func:`register_affine_to_template`: the 1 mm template brain and its
    registration mask (the brain mask with a 5 mm rim, so that the brain outline drives the fit),
    as ANTs images, and their smoothed and resampled copies per pyramid level, each made once per
    process: about 1.5 s of a subject's registration when every subject of a batch made them
    anew. Get it from :func:`registration_target`."""

    def __init__(self, template: Template):
        from scipy import ndimage

        self.image = ants_image(template.brain, TEMPLATE_AFFINE_1MM)
        self.mask = ants_image(ndimage.binary_dilation(template.mask, iterations=5).astype(np.float32),
                               TEMPLATE_AFFINE_1MM)
        self._levels: dict[float, tuple] = {}
        self._coarse: dict[float, object] = {}

    def at(self, finest: float) -> tuple:
        """Template and mask (unsigned char, as antsRegistration reads masks) for a pyramid whose
        finest level is ``finest`` mm: smoothed (sigma ``(finest - 1) / 2`` mm) and resampled to
        it once, so that shrink factors are integers and ANTs never smooths a 1 mm image per level."""
        import ants

        finest = float(finest)
        if finest not in self._levels:
            fixed, fixed_mask = self.image, self.mask
            if finest > 1.0 + 1e-3:
                smoothed = ants.smooth_image(self.image, (finest - 1.0) / 2.0, sigma_in_physical_coordinates=True)
                fixed = ants.resample_image(smoothed, (finest,) * 3, use_voxels=False, interp_type=0)
                fixed_mask = ants.resample_image(self.mask, (finest,) * 3, use_voxels=False, interp_type=1)
            self._levels[finest] = (fixed, fixed_mask != 0)
        return self._levels[finest]

    def coarse(self, mm: float):
        """The template smoothed (sigma ``mm / 2``) and resampled to ``mm``: the rotation search's."""
        import ants

        mm = float(mm)
        if mm not in self._coarse:
            smoothed = ants.smooth_image(self.image, mm / 2.0, sigma_in_physical_coordinates=True)
            self._coarse[mm] = ants.resample_image(smoothed, (mm,) * 3, use_voxels=False, interp_type=0)
        return self._coarse[mm]


@functools.lru_cache(maxsize=2)
def registration_target(template: Template) -> RegistrationTarget:
    """The :class:`RegistrationTarget` of a :func:`~brainage.preprocess.finish.load_template`
    template, made once per process."""
    return RegistrationTarget(template)


def register_affine_to_template(
    moving, target: RegistrationTarget, settings: RegistrationSettings = RegistrationSettings(),
    workdir: str | Path | None = None,
) -> RegistrationResult:
    """12-dof affine from the skull-stripped ``moving`` brain (an ANTs image) to the template brain
    of ``target`` (:func:`registration_target`).

    Stages, each multi-resolution (``settings.levels_mm``): initialisation (rotation search or centres of
    mass), rigid, similarity (the coarse levels), then affine on every level -- the
    antsRegistrationSyN 'a' recipe with a correlation metric and an extra similarity stage so
    the 12-dof stage starts close. The finest level is the finest configured level no finer
    than the scan (default 2 mm: a 12-parameter fit over ~10^5 brain samples is already
    sub-millimetre); template and scan are smoothed and resampled to it once, so that shrink
    factors are integers and ANTs never smooths a 1 mm image per level.
    """
    import ants
    from ants.internal import get_lib_fn, get_pointer_string

    workdir = Path(workdir or tempfile.mkdtemp(prefix="brainage-reg-"))
    workdir.mkdir(parents=True, exist_ok=True)
    voxel_mm = float(max(moving.spacing))
    keep = _levels_for(settings, voxel_mm)
    levels = [settings.levels_mm[i] for i in keep]
    sigmas = [settings.smoothing_mm[i] for i in keep]
    iters = [settings.iterations[i] for i in keep]
    finest = levels[-1]
    fixed, fixed_mask = target.at(finest)
    if voxel_mm < finest - 1e-3:
        # ANTs smooths the full moving image at every level of every stage; a scan finer than
        # the finest level is only ever sampled at that level, so smooth and shrink it once
        sigma = 0.5 * float(np.sqrt(finest**2 - voxel_mm**2))
        moving = ants.resample_image(ants.smooth_image(moving, sigma, sigma_in_physical_coordinates=True),
                                     (finest,) * 3, use_voxels=False, interp_type=0)
    shrink = [max(1, int(round(lv / finest))) for lv in levels]
    n_init = max(1, min(settings.init_levels, len(levels)))

    # Initialisation: a rotation search on coarse copies survives arbitrary poses (antsAI).
    init_file = workdir / "init.mat"
    if settings.init == "search":
        coarse = max(8.0, voxel_mm)
        fixed_c = target.coarse(coarse)
        moving_c = ants.resample_image(ants.smooth_image(moving, coarse / 2.0, sigma_in_physical_coordinates=True),
                                       (coarse,) * 3, use_voxels=False, interp_type=0)
        ants.affine_initializer(
            fixed_c, moving_c, search_factor=settings.search_step_deg,
            radian_fraction=settings.search_arc_deg / 180.0, use_principal_axis=False,
            local_search_iterations=10, txfn=str(init_file),
        )
        initial = str(init_file)
    elif settings.init == "moments":
        initial = f"[{get_pointer_string(fixed)},{get_pointer_string(moving)},1]"
    else:
        raise ValueError(f"unknown registration init {settings.init!r} (search | moments)")

    f, m = get_pointer_string(fixed), get_pointer_string(moving)
    fm = get_pointer_string(fixed_mask)
    metric = settings.metric.upper()
    sampling = "None,1" if settings.sampling >= 1 else f"Regular,{settings.sampling}"
    if metric == "GC":
        metric_arg = f"GC[{f},{m},1,1,{sampling}]"
    elif metric == "CC":
        metric_arg = f"CC[{f},{m},1,2,{sampling}]"
    else:
        raise ValueError(f"unknown registration metric {settings.metric!r} (GC | CC)")

    def stage(transform: str, n: int) -> list[str]:
        its = "x".join(str(i) for i in iters[:n])
        return [
            "--metric", metric_arg, "--transform", transform,
            "--convergence", f"[{its},{settings.convergence_tol},10]",
            "--shrink-factors", "x".join(str(s) for s in shrink[:n]),
            "--smoothing-sigmas", "x".join(f"{s:g}" for s in sigmas[:n]) + "mm",
            "--masks", f"[{fm},NA]",
        ]

    prefix = workdir / "reg_"
    args = ["--dimensionality", "3", "--float", "1", "--collapse-output-transforms", "1",
            "--initial-moving-transform", initial, "--random-seed", str(settings.seed),
            "--winsorize-image-intensities", "[0.005,0.995]"]
    args += stage("Rigid[0.1]", n_init) + stage("Similarity[0.1]", n_init) + stage("Affine[0.1]", len(levels))
    args += ["--output", f"[{prefix}]"]
    # keep the pointer-owning images alive until the call returns
    _alive = (fixed, moving, fixed_mask)
    status = get_lib_fn("antsRegistration")(args)
    del _alive
    out = Path(f"{prefix}0GenericAffine.mat")
    if status != 0 or not out.exists():
        raise RuntimeError(f"antsRegistration failed (exit status {status})")
    return RegistrationResult(template_to_native=read_ants_affine(out), transform_file=out, levels_mm=levels)


def resample_to_template(moving, template, transform_file: str | Path, interpolator: str = "bSpline") -> np.ndarray:
    """``moving`` (ANTs image) on the grid of ``template`` through the affine: ``(X, Y, Z)`` float32."""
    import ants

    out = ants.apply_transforms(fixed=template, moving=moving, transformlist=[str(transform_file)],
                                interpolator=interpolator, defaultvalue=0)
    return out.numpy().astype(np.float32)


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


# --------------------------------------------------------------------------------------
# The engine: the steps above on one scan, finished by brainage.preprocess.finish


def run_native(t1w_path, out_dir, participant_id, grids, resources_root, settings, threads, template) -> dict:
    """The native engine on one scan, its outputs written into ``out_dir`` (see
    :func:`brainage.preprocess.preprocess_t1w`); returns the QC dict."""
    started = time.perf_counter()
    set_threads(threads)
    cfg = settings_from_config(settings)
    img = load_t1w(t1w_path, participant_id)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    mask = brain_mask_deepbet(img, settings=cfg["brain_mask"])
    timings["brain_mask"] = time.perf_counter() - t
    if mask.sum() * abs(np.linalg.det(img.affine[:3, :3])) < 100_000:  # < 100 ml: no brain found
        raise InputError(f"{participant_id}: {t1w_path}: brain extraction found no brain "
                         f"({mask.sum()} voxels); is this a T1w head scan?")

    data = np.asarray(img.dataobj, dtype=np.float32)
    data = data - min(0.0, float(data.min()))  # N4 works on positive intensities
    image = ants_image(data, img.affine)
    mask_img = ants_image(mask.astype(np.float32), img.affine)
    head_box, mask_box = crop_to_mask(image, mask_img)

    t = time.perf_counter()
    corrected, n4_info = n4_in_mask(head_box, mask_box, cfg["n4"])
    brain = corrected * mask_box
    timings["n4"] = time.perf_counter() - t

    tpl = load_template(resources_root, template)
    voxel_mm = float(max(np.linalg.norm(img.affine[:3, :3], axis=0)))
    base_res = base_resolution(grids, voxel_mm)
    base_grid = template_grid(base_res)
    base_img = ants_image(np.zeros(base_grid.shape, np.float32), base_grid.affine)

    with tempfile.TemporaryDirectory(prefix="brainage-reg-") as work:
        t = time.perf_counter()
        try:
            reg = register_affine_to_template(brain, registration_target(tpl), cfg["registration"], workdir=work)
        except RuntimeError as err:
            raise InputError(f"{participant_id}: {t1w_path}: registration failed ({err})") from None
        if not np.isfinite(reg.template_to_native).all():
            raise InputError(f"{participant_id}: {t1w_path}: registration failed (non-finite affine)")
        timings["registration"] = time.perf_counter() - t

        t = time.perf_counter()
        volume = resample_to_template(brain, base_img, reg.transform_file, "bSpline")
        brain_base = resample_to_template(mask_box, base_img, reg.transform_file, "linear") >= 0.5
        timings["resample"] = time.perf_counter() - t
        extra = {
            "engine": "native",
            "n4": n4_info,
            "registration": {"metric": cfg["registration"].metric, "levels_mm": reg.levels_mm,
                             "init": cfg["registration"].init},
            "brain_mask_cube": cfg["brain_mask"].cube(voxel_mm),
            "timings_s": {k: round(v, 2) for k, v in timings.items()},
        }
        metrics = finish_from_base(
            volume, brain_base, base_res, reg.template_to_native, mask, img.affine, participant_id, t1w_path,
            out_dir, grids, tpl, cfg["qc"], extra, transform_file=reg.transform_file, started=started,
        )
    log.info("%s: NCC %.3f, brain %.0f ml, %s in %.1f s", participant_id, metrics["ncc"],
             metrics["brain_volume_ml"], "passed" if metrics["passed"] else "FAILED QC", metrics["runtime_s"])
    return metrics

