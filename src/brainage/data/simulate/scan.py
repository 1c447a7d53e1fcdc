"""One simulated raw T1w scan: all deformations composed into one resampling of the head.

For every raw voxel ``v`` (site grid, affine ``A`` to native mm) the template-space point it
shows is ``z = y + u(y)`` with ``y = P A v`` (``P``: native-to-MNI affine, the inverse of the
subject's pose and head size) and ``u`` the subject's displacement field on the 2 mm field
grid: the ageing/disease effect bases weighted by :func:`effect_weights` plus an
individual random smooth warp. The head image and the labels are sampled once at ``z``
(linear / nearest); then the subject's tissue contrast, a smooth multiplicative bias field
and Rician noise are applied, and the scan is stored as int16 NIfTI in the site's axis order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import nibabel as nib
import numpy as np
from scipy import ndimage

from brainage.data.simulate.anatomy import (
    BRAIN_LABEL_MAX,
    FIELD_AFFINE,
    FIELD_STEP,
    FIELD_SHAPE,
    HEAD_AFFINE,
    LABEL_EXTRA_CSF,
    LABEL_MIDBRAIN,
    LABEL_VENTRICLES,
    NONBRAIN_INTENSITY,
    LABEL_BONE,
    LABEL_FAT,
    PARAHIPPOCAMPAL_LABELS,
    SUBCORTICAL_LABELS,
    TEMPORAL_LABELS,
    REGIONAL_BASES,
    Anatomy,
)
from brainage.data.simulate.model import SITES, SimulationModel, ageing_load, subject_rng

#: the largest weight of an expanding basis: beyond it the pulled-back map would fold
MAX_EXPANSION_WEIGHT = 0.75
#: the largest radial brain shrinkage: the 8 mm ramp to the fixed skull must not fold
MAX_SHRINK_WEIGHT = 0.08
#: native-space centre of every site's field of view (mm): the head including the neck
FOV_CENTRE = np.array([0.0, -15.0, -12.0])
_DIRECTIONS = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}

#: native-space regional volumes reported per subject: name -> label values
REGIONS: dict[str, tuple[int, ...]] = {
    "ventricles": (LABEL_VENTRICLES,),
    "hippocampus": (37, 38),
    "amygdala": (41, 42),
    "parahippocampal": PARAHIPPOCAMPAL_LABELS,
    "temporal": TEMPORAL_LABELS,
    "subcortical": SUBCORTICAL_LABELS + (LABEL_MIDBRAIN,),
}


@dataclass
class SimulatedScan:
    """``image``: raw T1w (int16, site grid); ``mask``: true brain mask on the same grid (uint8);
    ``native_to_mni``: 4x4 affine mapping native (scanner) mm to MNI mm (before the nonlinear
    part); ``weights``: effect weights used; ``volumes_ml``: true native-space volumes."""

    image: nib.Nifti1Image
    mask: nib.Nifti1Image
    native_to_mni: np.ndarray
    weights: dict[str, float]
    volumes_ml: dict[str, float]


def _saturate(w: float) -> float:
    """Soft cap of an additive expansion weight below :data:`MAX_EXPANSION_WEIGHT`."""
    return float(MAX_EXPANSION_WEIGHT * np.tanh(w / MAX_EXPANSION_WEIGHT))


def exponentiate(velocity: np.ndarray, steps: int = 4) -> np.ndarray:
    """Displacement of the flow of a stationary velocity field (scaling and squaring).

    ``velocity``: (3, X, Y, Z) in voxels; returns the displacement (3, X, Y, Z) in voxels of
    its time-1 flow, a diffeomorphism however large the velocity (Arsigny et al. 2006).
    """
    u = velocity / np.float32(2**steps)
    grid = np.indices(velocity.shape[1:], dtype=np.float32)
    for _ in range(steps):
        coords = grid + u
        u = u + np.stack([ndimage.map_coordinates(u[d], coords, order=1, mode="nearest") for d in range(3)])
    return u


def effect_weights(row: Mapping, model: SimulationModel) -> dict[str, float]:
    """Weights of the anatomy's effect bases for one subject (see :class:`SimulationModel`)."""
    load = ageing_load(float(row["biological_age"]), model)
    s = float(row["severity"])
    ad = s if row["cohort"] == "AD" else 0.0
    pd_ = s if row["cohort"] == "PD" else 0.0
    # the individual ageing rate scales every ageing effect; rows planned before it have none
    aged = load * float(row.get("atrophy_rate", 1.0))
    vent = model.ventricle_growth_80 * aged + float(row["ventricle_offset"]) + model.ad_ventricle_growth * ad
    sulcal = model.sulcal_widening_80 * aged + float(row.get("sulcal_offset", 0.0))
    return {
        "ventricles": vent,
        "sulcal_csf": _saturate(max(sulcal, -0.2)),
        "brain_shrink": float(MAX_SHRINK_WEIGHT * np.tanh(model.brain_shrink_80 * aged / MAX_SHRINK_WEIGHT)),
        "mtl": model.mtl_atrophy_80 * aged + model.ad_mtl_atrophy * ad,
        "frontal": model.frontal_thinning_80 * aged,
        "parahippocampal": model.ad_parahippocampal_atrophy * ad,
        "temporal": model.ad_temporal_atrophy * ad,
        "subcortical": model.pd_subcortical_atrophy * pd_,
    }


def native_to_mni(row: Mapping) -> np.ndarray:
    """4x4 affine native mm -> MNI mm: inverse of ``native = R S mni + t`` (pose of the row)."""
    angles = np.deg2rad([float(row["rot_x_deg"]), float(row["rot_y_deg"]), float(row["rot_z_deg"])])
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    forward = np.eye(4)
    forward[:3, :3] = rz @ ry @ rx @ np.diag([float(row[f"scale_{a}"]) for a in "xyz"])
    forward[:3, 3] = [float(row[f"trans_{a}_mm"]) for a in "xyz"]
    return np.linalg.inv(forward)


def raw_grid(dataset: str, voxel_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and voxel-to-native affine of a site's raw scans (its axis order and voxel size)."""
    site = SITES[dataset]
    direction = np.array([_DIRECTIONS[c] for c in site.axcodes], dtype=float).T  # columns = axes
    vox = np.array(site.voxel, dtype=float) * float(voxel_mm)
    fov = np.abs(direction.T) @ np.array(site.fov_mm, dtype=float)  # extent along each stored axis
    shape = tuple(int(np.ceil(f / v)) for f, v in zip(fov, vox))
    affine = np.eye(4)
    affine[:3, :3] = direction * vox
    affine[:3, 3] = FOV_CENTRE - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return shape, affine  # type: ignore[return-value]


def _random_warp(rng: np.random.Generator, sd_mm: float, smooth_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Individual smooth displacement on a coarse grid: (3, *coarse) in mm, and the per-axis
    factor mapping field-grid indices to coarse indices (corners aligned). SD ``sd_mm``."""
    step = max(smooth_mm / 2.0, 2.0)
    coarse_shape = tuple(int(np.ceil(n * FIELD_AFFINE[0, 0] / step)) + 1 for n in FIELD_SHAPE)
    noise = rng.standard_normal((3, *coarse_shape)).astype(np.float32)
    out = np.empty_like(noise)
    for d in range(3):
        smooth = ndimage.gaussian_filter(noise[d], sigma=smooth_mm / step / 2.0, mode="wrap")
        out[d] = smooth * (sd_mm / max(float(smooth.std()), 1e-6))
    factor = np.array([(c - 1) / (f - 1) for c, f in zip(coarse_shape, FIELD_SHAPE)], dtype=np.float32)
    return out, factor


def _bias_field(rng: np.random.Generator, shape, low: float, high: float) -> np.ndarray:
    """Smooth multiplicative field in [low', high'] within (low, high): a random quadratic."""
    axes = [np.linspace(-1, 1, n, dtype=np.float32).reshape([-1 if i == d else 1 for i in range(3)]) for d, n in enumerate(shape)]
    x, y, z = axes
    terms = [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    c = rng.normal(0.0, 1.0, len(terms)).astype(np.float32)
    field = sum(ci * t for ci, t in zip(c, terms))
    field = np.broadcast_to(field, shape)
    span = float(field.max() - field.min()) or 1.0
    amplitude = rng.uniform(0.5, 1.0)  # share of the allowed range this subject uses
    lo = 1.0 - (1.0 - low) * amplitude
    hi = 1.0 + (high - 1.0) * amplitude
    return (lo + (field - field.min()) * ((hi - lo) / span)).astype(np.float32)


def intensity_knots(row: Mapping, anatomy: Anatomy, model: SimulationModel) -> tuple[np.ndarray, np.ndarray]:
    """Monotone template-unit -> signal (relative to WM = 1) mapping of the subject's contrast."""
    site = SITES[row["dataset"]]
    csf, gm, wm, fat = site.contrast
    load = max(ageing_load(float(row["biological_age"]), model), 0.0)
    wm_s = wm * (1.0 - model.wm_darkening_80 * load)
    gm_s = min(gm * (1.0 + model.gm_brightening_80 * load) * float(row.get("gm_signal", 1.0)), 0.97 * wm_s)
    csf = min(csf * float(row.get("csf_signal", 1.0)), 0.8 * gm_s)
    t = anatomy.tissue_means
    bone = NONBRAIN_INTENSITY[LABEL_BONE]
    fat_t = NONBRAIN_INTENSITY[LABEL_FAT]
    x = np.array([0.0, bone, t["csf"], t["gm"], t["wm"], fat_t, 2 * fat_t])
    y = np.array([0.0, 0.04, csf, gm_s, wm_s, fat, 2 * fat])
    # the individual non-linearity of the intensity scale (signal relative to WM, raised to gamma)
    return x, y ** float(row.get("intensity_gamma", 1.0))


def effect_fields(anatomy: Anatomy, weights: Mapping[str, float]) -> np.ndarray:
    """Displacement (3, *field grid) in mm of ``weights`` (no individual warp), as in a scan."""
    field = np.zeros_like(anatomy.bases["ventricles"])
    box = anatomy.regional_box
    velocity = np.zeros((3, *[b.stop - b.start for b in box]), dtype=np.float32)
    for name, w in weights.items():
        if not w:
            continue
        if name in REGIONAL_BASES:
            velocity += np.float32(w) * anatomy.bases[name][(slice(None), *box)]
        else:
            field += np.float32(w) * anatomy.bases[name]
    field[(slice(None), *box)] += exponentiate(velocity / np.float32(FIELD_STEP)) * np.float32(FIELD_STEP)
    return field


@dataclass
class SubjectDeformation:
    """The nonlinear part of a subject's template-to-scan map: ``z = y + u(y)``, ``y`` in MNI mm.

    ``field``: (3, *FIELD_SHAPE) mm, the age/disease effects (:func:`effect_fields`);
    ``warp``: (3, *coarse) mm, the individual random warp on its coarse grid; ``warp_factor``:
    (3,) field-grid index -> coarse index; ``weights``: the effect weights used.
    """

    field: np.ndarray
    warp: np.ndarray
    warp_factor: np.ndarray
    weights: dict[str, float]

    def sample(self, field_idx: np.ndarray) -> np.ndarray:
        """``u`` (3, N) mm at field-grid indices ``field_idx`` (3, N) float32 (linear interpolation)."""
        disp = np.stack([ndimage.map_coordinates(self.field[d], field_idx, order=1, mode="constant", cval=0.0)
                         for d in range(3)])
        # the individual warp is sampled straight from its coarse grid (cheaper than upsampling it)
        coarse_pts = field_idx * self.warp_factor[:, None]
        for d in range(3):
            disp[d] += ndimage.map_coordinates(self.warp[d], coarse_pts, order=1, mode="nearest")
        return disp

    def at_mni(self, points: np.ndarray) -> np.ndarray:
        """``u`` (3, N) mm at MNI points ``points`` (3, N) mm."""
        to_field = np.linalg.inv(FIELD_AFFINE)
        idx = (to_field[:3, :3] @ points + to_field[:3, 3:4]).astype(np.float32)
        return self.sample(idx).astype(np.float64)


def subject_deformation(row: Mapping, anatomy: Anatomy, model: SimulationModel,
                        rng: np.random.Generator) -> SubjectDeformation:
    """The subject's displacement field; draws the individual warp from ``rng`` (the scan stream)."""
    weights = effect_weights(row, model)
    warp, warp_factor = _random_warp(rng, model.warp_sd_mm, model.warp_smoothness_mm)
    return SubjectDeformation(effect_fields(anatomy, weights), warp, warp_factor, weights)


def true_template_to_native(row: Mapping, anatomy: Anatomy, seed: int, points: np.ndarray,
                            model: SimulationModel | None = None, iterations: int = 16) -> np.ndarray:
    """The full true map (pose and every deformation) of MNI points ``points`` (3, N) mm to the
    native (scanner) points (3, N) mm that show them in the subject's raw scan.

    A native point ``x`` shows template point ``z = y + u(y)``, ``y = P x`` (:func:`simulate_scan`);
    ``y`` is found by the damped fixed-point iteration ``y <- y + (z - y - u(y)) / 2``, then
    ``x = inv(P) y``. Damped, because the plain ``y <- z - u(y)`` oscillates where the
    atrophy fields compress by more than 2x (``I + grad u`` eigenvalues up to ~3); 16 steps
    leave a mean residual ``|y + u(y) - z|`` of ~0.01 mm over the brain (a few points in a
    thousand, at the edges of the regional fields, stay off by up to a few mm).
    """
    model = model or SimulationModel()
    deformation = subject_deformation(row, anatomy, model, subject_rng(seed, str(row["participant_id"]), "scan"))
    z = np.asarray(points, dtype=np.float64)
    y = z.copy()
    for _ in range(iterations):
        y += 0.5 * (z - y - deformation.at_mni(y))
    from_mni = np.linalg.inv(native_to_mni(row))
    return from_mni[:3, :3] @ y + from_mni[:3, 3:4]


def best_affine_template_to_native(row: Mapping, anatomy: Anatomy, seed: int, points: np.ndarray,
                                   model: SimulationModel | None = None) -> tuple[np.ndarray, float]:
    """Least-squares 12-dof affine (4 x 4, MNI mm -> native mm) closest to the full true map over
    ``points`` (3, N) MNI mm (e.g. the template brain): the best any affine registration can do.

    Returns the affine and the mean distance (mm) left between it and the true map over the
    points: the nonlinear part no affine can represent.
    """
    target = true_template_to_native(row, anatomy, seed, points, model)
    design = np.c_[np.asarray(points, dtype=np.float64).T, np.ones(points.shape[1])]
    coef, *_ = np.linalg.lstsq(design, target.T, rcond=None)
    affine = np.eye(4)
    affine[:3, :] = coef.T
    residual = float(np.linalg.norm(design @ coef - target.T, axis=1).mean())
    return affine, residual


def simulate_scan(row: Mapping, anatomy: Anatomy, seed: int, model: SimulationModel | None = None) -> SimulatedScan:
    """Simulate the raw T1w scan of one planned subject (a row of :func:`plan_cohort`)."""
    model = model or SimulationModel()
    pid = str(row["participant_id"])
    rng = subject_rng(seed, pid, "scan")
    voxel_mm = float(row.get("voxel_mm", anatomy.voxel_mm))
    shape, affine = raw_grid(str(row["dataset"]), voxel_mm)
    to_mni = native_to_mni(row)

    # the subject's displacement field on the 2 mm field grid
    deformation = subject_deformation(row, anatomy, model, rng)

    # MNI point of each raw voxel (raw voxel -> native -> MNI is one affine), then pulled back
    vox_to_field = np.linalg.inv(FIELD_AFFINE) @ to_mni @ affine
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    pts = (vox_to_field[:3, :3].astype(np.float32) @ idx) + vox_to_field[:3, 3:4].astype(np.float32)
    del idx
    disp = deformation.sample(pts)
    # field-grid index -> head-grid index: both are axis-aligned on the same world frame
    head_from_field = np.linalg.inv(HEAD_AFFINE) @ FIELD_AFFINE
    scale = np.float32(head_from_field[0, 0])
    pts *= scale
    pts += head_from_field[:3, 3:4].astype(np.float32)
    pts += disp / np.float32(HEAD_AFFINE[0, 0])
    del disp
    template_units = ndimage.map_coordinates(anatomy.head, pts, order=1, mode="constant", cval=0.0)
    labels = ndimage.map_coordinates(anatomy.labels, pts, order=0, mode="constant", cval=0).reshape(shape)
    del pts

    # contrast, bias field, Rician noise
    site = SITES[str(row["dataset"])]
    knots_x, knots_y = intensity_knots(row, anatomy, model)
    signal = np.interp(template_units, knots_x, knots_y).astype(np.float32).reshape(shape)
    level = np.float32(site.scale * float(row["intensity_scale"]))
    signal *= level * _bias_field(rng, shape, *model.bias_range)
    sigma = np.float32(site.noise * level)
    real = signal + sigma * rng.standard_normal(shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(shape, dtype=np.float32)
    magnitude = np.sqrt(real * real + imag * imag)
    data = np.clip(np.round(magnitude), 0, 32767).astype(np.int16)

    brain = (labels >= 1) & (labels <= BRAIN_LABEL_MAX)
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=256)
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    volumes = {name: float(counts[list(vals)].sum() * voxel_ml) for name, vals in REGIONS.items()}
    volumes["brain"] = float(brain.sum() * voxel_ml)
    volumes["intracranial"] = volumes["brain"] + float(counts[LABEL_EXTRA_CSF] * voxel_ml)
    return SimulatedScan(
        image=_nifti(data, affine, "brainage simulate: raw T1w"),
        mask=_nifti(brain.astype(np.uint8), affine, "brainage simulate: true brain mask"),
        native_to_mni=to_mni,
        weights=deformation.weights,
        volumes_ml=volumes,
    )


def _nifti(data: np.ndarray, affine: np.ndarray, description: str) -> nib.Nifti1Image:
    """A NIfTI-1 image with every header field set from the arguments (byte-identical reruns)."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)  # 1 = scanner anatomical
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = description.encode()[:79]
    img.header.set_slope_inter(1.0, 0.0)
    return img
