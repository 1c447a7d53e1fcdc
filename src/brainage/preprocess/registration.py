"""The native engine's registration: the 12-dof affine of the N4-corrected brain to the template
brain (antsRegistration through ANTsPy, in-process), its fixed side made once per process, and
the resampling of the scan through the fitted affine onto a template grid. Affine and array
conventions: :mod:`brainage.preprocess.transforms`."""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainage.core.grids import TEMPLATE_AFFINE_1MM
from brainage.preprocess.finish import Template
from brainage.preprocess.settings import RegistrationSettings
from brainage.preprocess.transforms import ants_image, read_ants_affine


@dataclass
class RegistrationResult:
    """The fitted affine (``template_to_native`` RAS 4 x 4, see :mod:`.transforms`) and its files."""

    template_to_native: np.ndarray
    transform_file: Path
    levels_mm: list[float] = field(default_factory=list)

    @property
    def native_to_template(self) -> np.ndarray:
        return np.linalg.inv(self.template_to_native)


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
    initial = _initial_transform(moving, fixed, target, settings, voxel_mm, workdir)

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


def _initial_transform(moving, fixed, target: RegistrationTarget, settings: RegistrationSettings,
                       voxel_mm: float, workdir: Path) -> str:
    """antsRegistration's ``--initial-moving-transform`` for :func:`register_affine_to_template`:
    the file of a rotation search on coarse copies (antsAI), which survives arbitrary poses, or
    the centres of mass of ``fixed`` and ``moving`` (pointer strings: the caller keeps both alive)."""
    import ants
    from ants.internal import get_pointer_string

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
        return str(init_file)
    if settings.init == "moments":
        return f"[{get_pointer_string(fixed)},{get_pointer_string(moving)},1]"
    raise ValueError(f"unknown registration init {settings.init!r} (search | moments)")


def resample_to_template(moving, template, transform_file: str | Path, interpolator: str = "bSpline") -> np.ndarray:
    """``moving`` (ANTs image) on the grid of ``template`` through the affine: ``(X, Y, Z)`` float32."""
    import ants

    out = ants.apply_transforms(fixed=template, moving=moving, transformlist=[str(transform_file)],
                                interpolator=interpolator, defaultvalue=0)
    return out.numpy().astype(np.float32)
