"""The simulator's anatomy: a whole head in template space, its labels and the effect fields.

Built once per cohort (rule ``simulate_anatomy``) from packaged data only, saved as one
uncompressed ``.npz`` that every ``simulate_subject`` job memory-maps in a fraction of a
second (building it takes ~10 s: distance transforms and smoothing at 1 mm).

Grids. The head lives on an *extended* 1 mm grid (216 x 252 x 256, MNI152NLin2009cAsym
world coordinates, x -108..107, y -144..107, z -141..114): the template grid padded by
12 mm on every side and 63 mm below, so that the raw scans have a neck. The effect fields
live on the same field of view at 2 mm (108 x 126 x 128).

Tissues. CSF, GM and WM come from 3-class k-means of the template intensities inside its
brain mask (centres near 30, 66 and 87 template units). Ventricles are the CSF voxels of
the central box connected to the lateral ventricles; sulcal CSF is the remaining CSF of the
brain mask plus a 2.5 mm layer of extra-cerebral CSF around it. Outside that, by distance
from the brain mask: inner table of the skull (1 mm, bone: dark), diploe (3 mm, marrow:
bright), outer table (1.5 mm), galea/temporal muscle (2 mm), subcutaneous fat (4 mm,
bright), skin (1.5 mm); below the brain a neck and lower face (with a nose) of soft tissue
with fat texture under a subcutaneous fat layer, two eyes (dark vitreous in bright orbital
fat), the airway and maxillary sinuses (air), the cervical spine (marrow in cortical bone) and
the spinal canal (CSF around the cord).

Labels (int16): 1-116 AAL116; 150 ventricles (lateral and third); 151 midbrain (an
ellipsoid around MNI (0, -26, -10) mm in the unlabelled brain stem); 152 other brain
(white matter, deep CSF and brain-mask voxels without AAL label); 200 extra-cerebral CSF,
201 bone, 202 marrow, 203 muscle, 204 fat, 205 skin, 206 neck/face soft tissue, 207 eye,
208 air (airway, sinuses), 209 spinal cord, 210 spinal CSF.
The true brain mask is ``1 <= label < 200``.

Effect bases (each a displacement field (3, 108, 126, 128) in mm per unit weight, used as
``sample_point = x + sum_i w_i * basis_i(x)``, i.e. pulled back): each is the gradient of
a Gaussian-smoothed region indicator, normalised so that a weight ``w`` changes the volume
of its region by about ``w`` to first order (``-mean(div u) = w`` over the region):
``ventricles`` and ``sulcal_csf`` expand their CSF, ``mtl`` (hippocampus + amygdala),
``parahippocampal``, ``temporal`` (superior/middle/inferior temporal gyri and poles),
``subcortical`` (caudate, putamen, pallidum, thalamus, midbrain) and ``frontal`` (prefrontal
gyri: AAL 3-16, 23-28, the cortex that thins fastest with age) shrink their grey matter; ``brain_shrink`` is a radial contraction of the brain inside a fixed skull
(displacement ``w (x - c) s(x)`` with ``s`` = 1 inside the brain, falling smoothly to 0 at
8 mm outside it, i.e. across the extra-cerebral CSF and the skull), so that ``w`` = 0.04
shrinks the brain's linear size by about 4 % (volume ~11 %) and widens the extra-cerebral CSF.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from brainage.data.atlases import load_aal_1mm, load_template_1mm
from brainage.core.grids import TEMPLATE_AFFINE_1MM, TEMPLATE_SHAPE_1MM, resample_labels, template_grid
from brainage.core.io import atomic_path

log = logging.getLogger(__name__)

#: extended 1 mm head grid: template grid padded (12, 12, 63) voxels before and after as below
HEAD_SHAPE: tuple[int, int, int] = (216, 252, 256)
HEAD_OFFSET: tuple[int, int, int] = (12, 12, 63)  # template voxel (0,0,0) in head-grid voxels
HEAD_AFFINE = TEMPLATE_AFFINE_1MM.copy()
HEAD_AFFINE[:3, 3] -= HEAD_OFFSET
#: effect fields: the head grid at 2 mm (voxel centres at the centres of 2x2x2 blocks)
FIELD_STEP = 2
FIELD_SHAPE: tuple[int, int, int] = tuple(n // FIELD_STEP for n in HEAD_SHAPE)  # type: ignore[assignment]
FIELD_AFFINE = HEAD_AFFINE.copy()
FIELD_AFFINE[:3, :3] *= FIELD_STEP
FIELD_AFFINE[:3, 3] += (FIELD_STEP - 1) / 2.0

LABEL_VENTRICLES, LABEL_MIDBRAIN, LABEL_OTHER_BRAIN = 150, 151, 152
LABEL_EXTRA_CSF, LABEL_BONE, LABEL_MARROW, LABEL_MUSCLE = 200, 201, 202, 203
LABEL_FAT, LABEL_SKIN, LABEL_SOFT, LABEL_EYE = 204, 205, 206, 207
LABEL_AIR, LABEL_CORD, LABEL_SPINAL_CSF = 208, 209, 210
BRAIN_LABEL_MAX = 199

#: AAL116 indices of the regions that the effect bases act on
MTL_LABELS = (37, 38, 41, 42)  # hippocampus, amygdala
PARAHIPPOCAMPAL_LABELS = (39, 40)
TEMPORAL_LABELS = tuple(range(81, 91))  # superior, middle, inferior temporal gyri + poles
SUBCORTICAL_LABELS = (71, 72, 73, 74, 75, 76, 77, 78)  # caudate, putamen, pallidum, thalamus
PREFRONTAL_LABELS = tuple(range(3, 17)) + tuple(range(23, 29))  # frontal gyri, orbital, medial, rectus

#: template-unit intensities of the non-brain tissues (T1-weighted: fat and marrow bright,
#: cortical bone and vitreous dark, muscle and skin intermediate)
NONBRAIN_INTENSITY: dict[int, float] = {
    LABEL_BONE: 6.0,
    LABEL_MARROW: 72.0,
    LABEL_MUSCLE: 40.0,
    LABEL_FAT: 100.0,
    LABEL_SKIN: 55.0,
    LABEL_SOFT: 45.0,
    LABEL_EYE: 14.0,
    LABEL_AIR: 1.0,
    LABEL_CORD: 78.0,
    LABEL_SPINAL_CSF: 22.0,
}
#: the scalp layers, as (label, outer distance from the brain mask in mm)
SHELLS: tuple[tuple[int, float], ...] = (
    (LABEL_EXTRA_CSF, 2.5),
    (LABEL_BONE, 3.5),
    (LABEL_MARROW, 6.5),
    (LABEL_BONE, 8.0),
    (LABEL_MUSCLE, 10.0),
    (LABEL_FAT, 14.0),
    (LABEL_SKIN, 15.5),
)
BASIS_NAMES = ("ventricles", "sulcal_csf", "brain_shrink", "mtl", "parahippocampal", "temporal", "subcortical", "frontal")
#: bases of large local effects, exponentiated together (scaling and squaring) so that
#: doubling a ventricle does not fold the map; the others are small and simply added
REGIONAL_BASES = ("ventricles", "mtl", "parahippocampal", "temporal", "subcortical")


@dataclass
class Anatomy:
    """The simulator's template-space head.

    ``head``: (216, 252, 256) float32 template-unit intensities, anti-aliased for the raw
    voxel size; ``labels``: same shape, int16 (module docstring); ``bases``: name ->
    (3, 108, 126, 128) float32 displacement in mm per unit weight; ``tissue_means``: template
    units of csf, gm, wm (k-means centres); ``voxel_mm``: raw voxel size it was smoothed for.
    """

    head: np.ndarray
    labels: np.ndarray
    bases: dict[str, np.ndarray]
    tissue_means: dict[str, float]
    voxel_mm: float
    region_volumes_ml: dict[str, float] = field(default_factory=dict)

    @functools.cached_property
    def regional_box(self) -> tuple[slice, slice, slice]:
        """Field-grid box holding the support of the :data:`REGIONAL_BASES` (plus a margin)."""
        support = np.zeros(FIELD_SHAPE, dtype=bool)
        for name in REGIONAL_BASES:
            support |= np.abs(self.bases[name]).max(axis=0) > 1e-3
        return tuple(
            slice(max(int(ix.min()) - 2, 0), min(int(ix.max()) + 3, n))
            for ix, n in zip(np.nonzero(support), FIELD_SHAPE)
        )  # type: ignore[return-value]

    def save(self, path: str | Path) -> None:
        arrays = {"head": self.head.astype(np.float32), "labels": self.labels}
        arrays.update({f"basis_{k}": v.astype(np.float32) for k, v in self.bases.items()})
        arrays["tissue_means"] = np.array([self.tissue_means[k] for k in ("csf", "gm", "wm")])
        arrays["voxel_mm"] = np.array(self.voxel_mm)
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "Anatomy":
        with np.load(path) as data:
            bases = {k[len("basis_"):]: data[k] for k in data.files if k.startswith("basis_")}
            means = dict(zip(("csf", "gm", "wm"), (float(v) for v in data["tissue_means"])))
            return cls(
                head=data["head"],
                labels=data["labels"],
                bases=bases,
                tissue_means=means,
                voxel_mm=float(data["voxel_mm"]),
            )


def kmeans_1d(values: np.ndarray, centres: tuple[float, ...], iterations: int = 30) -> np.ndarray:
    """Centres of a 1D k-means (Lloyd) started from ``centres``; deterministic."""
    c = np.asarray(centres, dtype=np.float64)
    for _ in range(iterations):
        assign = np.argmin(np.abs(values[:, None] - c[None, :]), axis=1)
        c = np.array([values[assign == k].mean() for k in range(len(c))])
    return c


def _pad_to_head(volume: np.ndarray, fill=0) -> np.ndarray:
    out = np.full(HEAD_SHAPE, fill, dtype=volume.dtype)
    o = HEAD_OFFSET
    out[o[0] : o[0] + volume.shape[0], o[1] : o[1] + volume.shape[1], o[2] : o[2] + volume.shape[2]] = volume
    return out


def _world_coords(shape, affine) -> list[np.ndarray]:
    """World (MNI mm) coordinate of every voxel along each axis, broadcastable: 3 x (n,1,1)..."""
    axes = []
    for d in range(3):
        idx = np.arange(shape[d], dtype=np.float32)
        c = affine[d, d] * idx + affine[d, 3]
        axes.append(c.reshape([-1 if i == d else 1 for i in range(3)]))
    return axes


def _block_mean(volume: np.ndarray) -> np.ndarray:
    f = FIELD_STEP
    s = FIELD_SHAPE
    return volume[: s[0] * f, : s[1] * f, : s[2] * f].reshape(s[0], f, s[1], f, s[2], f).mean(axis=(1, 3, 5))


def _gradient_basis(indicator_1mm: np.ndarray, sigma_mm: float, sign: float) -> tuple[np.ndarray, float]:
    """Displacement (3, *FIELD_SHAPE) = sign * grad(G_sigma * indicator) / c on the 2 mm grid.

    ``c`` makes the mean divergence over the region equal to -sign (first-order relative
    volume change +1 for sign +1, expansion, or -1 for sign -1, shrinkage): pulling sample
    points up the gradient of a region's smoothed indicator makes the region grow.
    """
    coarse = _block_mean(indicator_1mm.astype(np.float32))
    phi = ndimage.gaussian_filter(coarse, sigma=sigma_mm / FIELD_STEP)
    grad = np.stack(np.gradient(phi, FIELD_STEP)).astype(np.float32)
    div = sum(np.gradient(grad[d], FIELD_STEP, axis=d) for d in range(3))
    region = coarse >= 0.5
    scale = -float(div[region].mean())
    return (sign * grad / scale).astype(np.float32), scale


def _effect_bases(labels: np.ndarray, sulcal_head: np.ndarray, inside_dist: np.ndarray,
                  outside_dist: np.ndarray) -> dict[str, np.ndarray]:
    """Displacement bases of the ageing and disease effects on the 2 mm field grid: gradients of
    smoothed region masks (ventricles and sulci grow, MTL, temporal and subcortical regions
    shrink) and the radial contraction of the brain inside a fixed skull."""
    sulcal_h = sulcal_head | (labels == LABEL_EXTRA_CSF)
    bases: dict[str, np.ndarray] = {}
    bases["ventricles"], _ = _gradient_basis(labels == LABEL_VENTRICLES, 5.0, +1.0)
    bases["sulcal_csf"], _ = _gradient_basis(sulcal_h, 2.0, +1.0)
    bases["mtl"], _ = _gradient_basis(np.isin(labels, MTL_LABELS), 3.0, -1.0)
    bases["parahippocampal"], _ = _gradient_basis(np.isin(labels, PARAHIPPOCAMPAL_LABELS), 3.0, -1.0)
    bases["temporal"], _ = _gradient_basis(np.isin(labels, TEMPORAL_LABELS), 4.0, -1.0)
    sub = np.isin(labels, SUBCORTICAL_LABELS) | (labels == LABEL_MIDBRAIN)
    bases["subcortical"], _ = _gradient_basis(sub, 3.0, -1.0)
    # prefrontal cortical thinning: small, added (not exponentiated), so it widens no box
    bases["frontal"], _ = _gradient_basis(np.isin(labels, PREFRONTAL_LABELS), 3.0, -1.0)
    # radial contraction of the brain inside a fixed skull
    signed = _block_mean((outside_dist - inside_dist).astype(np.float32))
    s = np.clip((8.0 - signed) / 8.0, 0.0, 1.0)
    s = s * s * (3 - 2 * s)  # smoothstep: no kink in the displacement
    Xf, Yf, Zf = _world_coords(FIELD_SHAPE, FIELD_AFFINE)
    centre = (0.0, -18.0, 10.0)
    bases["brain_shrink"] = np.stack(
        [(Xf - centre[0]) * s, (Yf - centre[1]) * s, (Zf - centre[2]) * s]
    ).astype(np.float32)
    return bases


def _neck_and_face_structures(labels: np.ndarray, lower: np.ndarray, xyz) -> None:
    """Carve what a real head has below the brain into the neck and face soft tissue (in place):
    a subcutaneous fat layer under the skin, the airway (nasal cavity, nasopharynx, pharynx) and
    maxillary sinuses (air: dark), the cervical spine (vertebral bodies of bright marrow in a
    dark cortical rim) and the spinal canal (CSF around the cord). Positions are MNI mm, from
    the anatomy of the ICBM 2009c head; without them a brain extraction meets a uniform grey
    block below the brain, far easier than a real neck and face."""
    X, Y, Z = xyz
    soft = labels == LABEL_SOFT
    depth = ndimage.distance_transform_edt(lower)
    labels[soft & (depth > 2) & (depth <= 7)] = LABEL_FAT
    carve = (labels == LABEL_SOFT) | (labels == LABEL_FAT)

    def tube(y0: float, r: float) -> np.ndarray:  # a vertical cylinder about x = 0
        return (X**2 + (Y - y0) ** 2) <= r * r

    air = tube(4.0, 7.0) & (Z < -48) & (Z > -125)
    air |= (np.abs(X) < 9) & (Y > -2) & (Y < 66) & (Z > -64) & (Z < -40)
    for side in (-1, 1):
        air |= ((X - 25 * side) / 11.0) ** 2 + ((Y - 34) / 14.0) ** 2 + ((Z + 58) / 12.0) ** 2 <= 1
    labels[carve & air] = LABEL_AIR
    vertebra = tube(-22.0, 10.0) & (Z < -66)
    labels[carve & vertebra] = LABEL_BONE
    labels[carve & vertebra & tube(-22.0, 8.0)] = LABEL_MARROW
    canal = tube(-45.0, 7.5) & (Z < -58)
    labels[carve & canal] = LABEL_SPINAL_CSF
    labels[carve & canal & tube(-45.0, 4.5)] = LABEL_CORD


def _brain_labels(template: np.ndarray, brain: np.ndarray, aal: np.ndarray, csf_gm: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Brain labels on the template grid (AAL, ventricles, midbrain, other brain) and the sulcal
    CSF mask: the CSF class (intensity below ``csf_gm``) outside the ventricles."""
    x, y, z = _world_coords(TEMPLATE_SHAPE_1MM, TEMPLATE_AFFINE_1MM)
    csf = brain & (template < csf_gm)
    box = (np.abs(x) < 32) & (y > -48) & (y < 34) & (z > -8) & (z < 36)
    comps, n = ndimage.label(csf & box)
    sizes = ndimage.sum_labels(np.ones_like(comps), comps, index=np.arange(1, n + 1))
    ventricles = np.isin(comps, 1 + np.flatnonzero(sizes >= 400))
    ventricles = ndimage.binary_closing(ventricles, iterations=1) & csf
    midbrain = brain & (aal == 0) & (((x / 11.0) ** 2 + ((y + 26) / 11.0) ** 2 + ((z + 10) / 9.0) ** 2) <= 1)
    labels_t = np.where(brain, LABEL_OTHER_BRAIN, 0).astype(np.int16)
    labels_t[brain & (aal > 0)] = aal[brain & (aal > 0)]
    labels_t[midbrain & ~ventricles] = LABEL_MIDBRAIN
    labels_t[ventricles] = LABEL_VENTRICLES
    return labels_t, csf & ~ventricles


def build_anatomy(voxel_mm: float) -> Anatomy:
    """Build the head, labels and effect bases (module docstring) for raw scans of ``voxel_mm``."""
    template, brain = load_template_1mm()
    aal, aal_affine = load_aal_1mm()
    aal = resample_labels(aal, aal_affine, template_grid(1.0))
    csf_c, gm_c, wm_c = kmeans_1d(template[brain][::7].astype(np.float64), (25.0, 65.0, 88.0))
    csf_gm = (csf_c + gm_c) / 2.0
    log.info("tissue means (template units): csf %.1f gm %.1f wm %.1f", csf_c, gm_c, wm_c)

    labels_t, sulcal = _brain_labels(template, brain, aal, csf_gm)
    labels = _pad_to_head(labels_t)
    brain_h = labels > 0
    head = _pad_to_head(np.where(brain, template, 0).astype(np.float32))

    # --- scalp and skull shells by distance from the brain, neck and face below
    inside_dist = ndimage.distance_transform_edt(brain_h)  # mm inside the brain (1 mm grid)
    outside_dist = ndimage.distance_transform_edt(~brain_h)
    X, Y, Z = _world_coords(HEAD_SHAPE, HEAD_AFFINE)
    neck = ((X / 50.0) ** 2 + ((Y + 25) / 52.0) ** 2 <= 1) & (Z < -40)
    face = (X / 62.0) ** 2 + ((Y - 18) / 70.0) ** 2 + ((Z + 52) / 52.0) ** 2 <= 1
    face |= (X / 11.0) ** 2 + ((Y - 80) / 16.0) ** 2 + ((Z + 50) / 17.0) ** 2 <= 1  # nose
    lower = ndimage.gaussian_filter((neck | face).astype(np.float32), 4.0) > 0.5
    lower &= outside_dist > 0
    inner = 0.0
    for label, outer in SHELLS:
        shell = (outside_dist > inner) & (outside_dist <= outer)
        labels[shell] = label
        inner = outer
    # below the skull base the scalp shells give way to the neck and face
    soft = lower & (outside_dist > 2.5) & ((Z < -45) | (outside_dist > SHELLS[-1][1]))
    labels[soft] = LABEL_SOFT
    skin_rim = lower & ~ndimage.binary_erosion(lower, iterations=2) & (labels == LABEL_SOFT)
    labels[skin_rim] = LABEL_SKIN
    for side in (-1, 1):
        eye = ((X - 32 * side) ** 2 + (Y - 48) ** 2 + (Z + 38) ** 2) <= 12.0**2
        fat = ((X - 32 * side) ** 2 + (Y - 42) ** 2 + (Z + 38) ** 2) <= 18.0**2
        labels[fat & (labels == LABEL_SOFT)] = LABEL_FAT
        labels[eye & ~brain_h] = LABEL_EYE
    _neck_and_face_structures(labels, lower, (X, Y, Z))

    # non-brain intensities with a fixed smooth texture (fat lobules, muscle fibres), so that
    # the scalp is not a cartoon; fixed seed: the texture is part of the model, not the subject
    texture = ndimage.gaussian_filter(np.random.default_rng(20090).standard_normal(HEAD_SHAPE).astype(np.float32), 1.2)
    texture /= texture.std()
    for label, value in NONBRAIN_INTENSITY.items():
        sel = labels == label
        head[sel] = value * (1.0 + 0.08 * texture[sel])
    head[labels == LABEL_EXTRA_CSF] = csf_c * 0.8
    nonbrain = labels >= LABEL_EXTRA_CSF
    # soften the jagged 1 mm boundaries of the synthetic tissues (the brain stays untouched)
    head = np.where(nonbrain, ndimage.gaussian_filter(head, 0.6), head)
    # anti-alias for the raw voxel size (a box-ish point spread function of width voxel_mm)
    sigma = 0.42 * np.sqrt(max(float(voxel_mm) ** 2 - 1.0, 0.0))
    if sigma > 0:
        head = ndimage.gaussian_filter(head, sigma)

    bases = _effect_bases(labels, _pad_to_head(sulcal), inside_dist, outside_dist)
    vox_ml = 1e-3
    volumes = {
        "ventricles": float((labels == LABEL_VENTRICLES).sum() * vox_ml),
        "mtl": float(np.isin(labels, MTL_LABELS).sum() * vox_ml),
        "brain": float(((labels > 0) & (labels <= BRAIN_LABEL_MAX)).sum() * vox_ml),
    }
    log.info("template volumes (ml): %s", volumes)
    return Anatomy(
        head=head.astype(np.float32),
        labels=labels,
        bases=bases,
        tissue_means={"csf": float(csf_c), "gm": float(gm_c), "wm": float(wm_c)},
        voxel_mm=float(voxel_mm),
        region_volumes_ml=volumes,
    )


@functools.lru_cache(maxsize=2)
def cached_anatomy(voxel_mm: float) -> Anatomy:
    """:func:`build_anatomy`, once per process (tests, the command line)."""
    return build_anatomy(voxel_mm)
