"""The preprocess settings: the native engine's steps (brain mask, N4, registration) and the QC
thresholds, as frozen dataclasses, and :func:`settings_from_config` that builds them from the
``preprocess`` config section. Its own module so that the engines, the shared finishing and the
command line all read the settings from one place below them."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from brainage.preprocess.qc import QCThresholds


#: ITK's threads (N4, registration, resampling), whatever the job's: N4's B-spline fit and the
#: registration metric add up per-thread partial sums, so with 2 threads the same scan got
#: another affine (rotation 24.04 vs 24.09 degrees on a real IXI head) and, downstream, an age
#: about 0.1 y apart. One thread gives a scan the same outputs on a laptop and in a 4-CPU
#: cluster job (tests/test_preprocess.py); the job's threads go to deepbet (torch), whose mask
#: does not change with them. None: ITK on the job's threads (benchmarks/bench_preprocess_threads.py).
ITK_THREADS: int | None = 1


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


def settings_from_config(section: dict | None) -> dict[str, Any]:
    """Settings objects from the ``preprocess`` config section (missing keys: defaults)."""
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
        "brain_mask": build(BrainMaskSettings, native.get("brain_mask", {}) or {}),
        "n4": build(N4Settings, native.get("n4", {}) or {}),
        "registration": build(RegistrationSettings, native.get("registration", {}) or {}),
        "qc": build(QCThresholds, qc),
    }
