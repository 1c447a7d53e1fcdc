"""The native preprocessing engine: deepbet brain mask, N4 in the mask, 12-dof affine to MNI.

Everything runs in-process with packaged weights and templates (deepbet, ANTsPy), so the chain
works wherever the package installs. Each step is one function on arrays or ANTs images: the
brain mask and N4 here, the registration and resampling in :mod:`.registration`, the settings in
:mod:`.settings`; the orchestration (files, QC, names) is in :mod:`brainage.preprocess`. Array and
affine conventions: :mod:`.transforms`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import tempfile
import time
from typing import Iterator

import numpy as np

from brainage.core.grids import template_grid
from brainage.core.io import InputError
from brainage.preprocess.finish import base_resolution, finish_from_base, load_t1w, load_template
from brainage.preprocess.registration import register_affine_to_template, registration_target, resample_to_template
from brainage.preprocess import settings as preprocess_settings
from brainage.preprocess.settings import BrainMaskSettings, N4Settings, settings_from_config
from brainage.preprocess.transforms import ants_image

log = logging.getLogger("brainage.preprocess")


def set_threads(threads: int) -> None:
    """Threads of this process: ITK (ANTs) always :data:`.settings.ITK_THREADS`, torch (deepbet) ``threads``."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(preprocess_settings.ITK_THREADS or threads)
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


# --------------------------------------------------------------------------------------
# The engine: the steps above and those of brainage.preprocess.registration on one scan,
# finished by brainage.preprocess.finish


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

