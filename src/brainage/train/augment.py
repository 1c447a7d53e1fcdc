"""The study's data augmentation, with the spatial transforms folded into one resampling.

Each transform is applied with probability ``p`` (0.5 in the study), independently:

- translation: uniform in [-10, 10] voxels per axis;
- rotation: per axis an angle of magnitude uniform in [0.1, 0.5] rad and random sign;
- random crop: per axis a size uniform in [ceil(0.7 n), n] voxels at a uniform position, resized
  back to the full grid (trilinear);
- Gaussian noise: mean 0, sd 0.025 (on intensities normalised to ~[0, 1], see brainage.data.cache).

Beyond the study: ``synth`` (default 0, off), a SynthSeg-style random contrast drawn before the
spatial transforms (:mod:`brainage.train.synth`).

The study's transforms are MONAI's (``Affine``, ``Rotate``, ``SpatialCrop``, ``Resize``). Applied
one after the other (``folded=False``, the baseline), each spatial transform resamples the
volume: three interpolations, three passes over memory, and blur accumulating. With
``folded=True`` (the default) :func:`voxel_matrix` composes the three maps into one map
from output voxel indices to input voxel indices, written to reproduce MONAI's conventions
(translation ``in = out + t``; rotation ``create_rotate(angles)`` about the centre
``(n - 1) / 2``; crop-and-resize as ``F.interpolate(align_corners=False)``: ``in = start +
(out + 0.5) * size / n - 0.5``, clamped to the crop as interpolate clamps), and the volume is
resampled once, trilinear with zero padding. The sampling grid is the matrix applied to the
voxel coordinates; since the map is affine per axis it is the sum of three per-axis terms
broadcast over the volume (no 4x4 matmul over every voxel and no
``affine_grid``, which was half the time of MONAI's lazy mode on CPU); without rotation the
map is axis-aligned and the single trilinear resampling is done as three 1-D interpolations. Each single transform
equals MONAI's own to < 1e-6; the composition differs from the sequential baseline only by the
blur of the two extra interpolations (tests/test_augment.py). Noise is added last, after the
single resampling. Tensors stay on their device, so on a GPU the augmentation runs
there (the training loop augments after the host-to-device copy).

Randomness: :func:`sample_params` draws everything from a NumPy generator the caller seeds
(per subject, epoch and view in training), so augmentation is reproducible and independent of
DataLoader workers and of where a resumed run restarts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# Imported at module load (not inside the functions): DataLoader workers forked from the training
# process then inherit MONAI instead of paying its multi-second import on their first volume.
from monai.transforms import Affine, Compose, Resize, Rotate, SpatialCrop
from monai.transforms.utils import create_rotate

from brainage.train.synth import synthesize

__all__ = [
    "AugmentConfig", "AugmentParams", "sample_params", "spatial_transforms", "voxel_matrix", "resample_affine",
    "augment_volume", "augment_batch",
]  # fmt: skip


@dataclass(frozen=True)
class AugmentConfig:
    """The study's augmentation settings (config ``training.augment``)."""

    p: float = 0.5
    translate_vox: float = 10.0
    rotate_rad: tuple[float, float] = (0.1, 0.5)
    noise_sd: float = 0.025
    crop_min_scale: float = 0.7
    #: SynthSeg-style random contrast (brainage.train.synth): the probability that a view is
    #: synthesised (0: never, the study's augmentation), and its blur, bias and noise ranges
    synth: float = 0.0
    synth_blur_vox: float = 1.0
    synth_bias_sd: float = 0.3
    synth_noise_sd: float = 0.05

    @classmethod
    def from_dict(cls, d: dict | None) -> "AugmentConfig":
        d = dict(d or {})
        if "rotate_rad" in d:
            d["rotate_rad"] = tuple(float(v) for v in d["rotate_rad"])
        return cls(**d)


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the augmentation; ``None`` means that transform is not applied."""

    translate: tuple[float, float, float] | None
    rotate: tuple[float, float, float] | None
    crop: tuple[tuple[int, int, int], tuple[int, int, int]] | None  # (start, end), end exclusive
    noise_seed: int | None
    synth_seed: int | None = None


def sample_params(cfg: AugmentConfig, shape: tuple[int, int, int], rng: np.random.Generator) -> AugmentParams:
    """Draw which transforms apply and their parameters for a volume of spatial ``shape``."""
    apply = rng.random(4) < cfg.p
    translate = tuple(float(v) for v in rng.uniform(-cfg.translate_vox, cfg.translate_vox, 3)) if apply[0] else None
    rotate = None
    if apply[1]:
        lo, hi = cfg.rotate_rad
        rotate = tuple(float(v) for v in rng.uniform(lo, hi, 3) * rng.choice([-1.0, 1.0], 3))
    crop = None
    if apply[2]:
        sizes = [int(rng.integers(math.ceil(cfg.crop_min_scale * n), n + 1)) for n in shape]
        starts = [int(rng.integers(0, n - s + 1)) for n, s in zip(shape, sizes)]
        crop = (tuple(starts), tuple(st + s for st, s in zip(starts, sizes)))
    noise_seed = int(rng.integers(2**31 - 1)) if apply[3] else None
    synth_seed = None
    if cfg.synth > 0 and rng.random() < cfg.synth:  # drawn last: synth 0 leaves every other draw as it was
        synth_seed = int(rng.integers(2**31 - 1))
    return AugmentParams(translate, rotate, crop, noise_seed, synth_seed)  # type: ignore[arg-type]


def spatial_transforms(params: AugmentParams, shape: tuple[int, int, int]) -> list:
    """The study's spatial transforms for ``params``, in the study's order, as MONAI transforms."""
    out: list = []
    if params.translate is not None:
        out.append(Affine(translate_params=params.translate, padding_mode="zeros", image_only=True))
    if params.rotate is not None:
        out.append(Rotate(angle=params.rotate, padding_mode="zeros"))
    if params.crop is not None:
        out.append(SpatialCrop(roi_start=params.crop[0], roi_end=params.crop[1]))
        out.append(Resize(spatial_size=tuple(shape), mode="trilinear"))
    return out


def _translation(t) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = t
    return m


def voxel_matrix(params: AugmentParams, shape: tuple[int, int, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The study's spatial transforms composed into one map from output voxels to input voxels.

    Returns ``(matrix, coords)``: output voxel ``(i, j, k)`` samples the input at
    ``matrix @ (coords[0][i], coords[1][j], coords[2][k], 1)``. ``coords`` (float64, length n per
    axis) is crop-and-resize, which is axis-aligned: ``start + (o + 0.5) * size / n - 0.5`` clamped
    to ``[start, end - 1]`` as ``F.interpolate`` clamps (``arange(n)`` without crop); ``matrix``
    (4, 4) float64 is translation then rotation. In the study's order translate -> rotate ->
    crop-and-resize the output of the last samples the one before it, so the maps compose as
    ``T_translate @ T_rotate @ crop``.
    """
    n = np.asarray(shape, dtype=np.float64)
    a = np.eye(4)
    if params.translate is not None:
        a = a @ _translation(params.translate)  # MONAI Affine: out[i] = in[i + t]
    if params.rotate is not None:
        centre = (n - 1) / 2  # MONAI Rotate turns about the centre of the index grid
        rot = np.asarray(create_rotate(3, params.rotate), dtype=np.float64)
        a = a @ _translation(centre) @ rot @ _translation(-centre)
    coords = [np.arange(k, dtype=np.float64) for k in shape]
    if params.crop is not None:
        coords = [
            np.clip(start + (o + 0.5) * (end - start) / k - 0.5, start, end - 1)
            for o, k, start, end in zip(coords, shape, params.crop[0], params.crop[1])
        ]
    return a, coords


def resample_affine(volume: torch.Tensor, matrix: np.ndarray, coords: list[np.ndarray] | None = None) -> torch.Tensor:
    """Resample ``volume (1, D, H, W)`` once: ``out[i, j, k] = volume[matrix @ (c0[i], c1[j], c2[k], 1)]``
    (trilinear, zero outside; ``coords`` default to the voxel indices) -> ``(1, D, H, W)`` float32
    on the volume's device.

    The grid of ``F.grid_sample`` (align_corners=True: normalised -1..1 = index 0..n-1) is
    ``G @ (c0[i], c1[j], c2[k], 1)`` for the normalised matrix G; being affine in each axis's
    coordinate, it is built as the sum of three per-axis (n_k, 3) terms broadcast to
    (D, H, W, 3): one add per voxel and coordinate.
    """
    shape = tuple(volume.shape[1:])
    coords = coords if coords is not None else [np.arange(k, dtype=np.float64) for k in shape]
    n = np.asarray(shape, dtype=np.float64)
    to_norm = np.diag([*(2.0 / np.maximum(n - 1, 1)), 1.0])
    to_norm[:3, 3] = -1.0
    g = (to_norm @ matrix)[[2, 1, 0]]  # grid_sample's last dim is (x, y, z) = (W, H, D) axes
    dev = volume.device
    terms = [torch.from_numpy(c[:, None] * g[:, axis][None]).float().to(dev) for axis, c in enumerate(coords)]
    offset = torch.from_numpy(g[:, 3]).float().to(dev)
    grid = (terms[0] + offset)[:, None, None, :] + terms[1][None, :, None, :] + terms[2][None, None, :, :]
    out = F.grid_sample(volume[None].float(), grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0]


def _lerp_axis(v: torch.Tensor, axis: int, x: np.ndarray) -> torch.Tensor:
    """Linear interpolation of ``v`` along ``axis`` at float positions ``x`` (zero outside 0..n-1)."""
    n = v.shape[axis]
    pad = [0, 0] * v.ndim
    pad[2 * (v.ndim - 1 - axis) : 2 * (v.ndim - 1 - axis) + 2] = [1, 1]
    padded = F.pad(v, pad)  # index q of v is q + 1 here; 0 and n + 1 are zeros
    lo = np.floor(x)
    i0 = torch.from_numpy(np.clip(lo + 1, 0, n + 1).astype(np.int64)).to(v.device)
    i1 = torch.from_numpy(np.clip(lo + 2, 0, n + 1).astype(np.int64)).to(v.device)
    w = torch.from_numpy((x - lo).astype(np.float32)).to(v.device)
    shape = [1] * v.ndim
    shape[axis] = len(x)
    a, b = padded.index_select(axis, i0), padded.index_select(axis, i1)
    return torch.lerp(a, b, w.view(shape))


def augment_volume(
    volume: torch.Tensor, params: AugmentParams, cfg: AugmentConfig, folded: bool = True
) -> torch.Tensor:
    """Augment one volume ``(1, D, H, W)`` (any device) -> ``(1, D, H, W)`` float32 tensor.

    ``folded=True`` resamples once (:func:`voxel_matrix`, :func:`resample_affine`);
    ``folded=False`` applies MONAI's transforms one after the other (the study's way, the baseline).
    """
    if params.synth_seed is not None:  # a new contrast first, then the study's transforms on it
        volume = synthesize(volume, params.synth_seed, cfg.synth_blur_vox, cfg.synth_bias_sd, cfg.synth_noise_sd)
    shape = tuple(volume.shape[1:])
    out = volume
    if folded:
        if params.translate is not None or params.rotate is not None or params.crop is not None:
            matrix, coords = voxel_matrix(params, shape)  # type: ignore[arg-type]
            if params.rotate is None:
                # axis-aligned (translation and/or crop): trilinear = three 1-D linear
                # interpolations, ~4x cheaper than grid_sample on CPU; same values
                out = volume.float()
                for axis in range(3):
                    out = _lerp_axis(out, axis + 1, coords[axis] + matrix[axis, 3])
            else:
                out = resample_affine(volume, matrix, coords)
    else:
        transforms = spatial_transforms(params, shape)  # type: ignore[arg-type]
        if transforms:
            out = Compose(transforms)(volume)
            out = out.as_tensor() if hasattr(out, "as_tensor") else out
    out = out.float()
    if params.noise_seed is not None:
        gen = torch.Generator(device=out.device).manual_seed(params.noise_seed)
        out = out + cfg.noise_sd * torch.randn(out.shape, generator=gen, device=out.device, dtype=out.dtype)
    return out


def augment_batch(
    volumes: torch.Tensor, params: list[AugmentParams], cfg: AugmentConfig, folded: bool = True
) -> torch.Tensor:
    """Augment a batch ``(B, 1, D, H, W)`` with one parameter draw per volume (same device)."""
    if len(params) != volumes.shape[0]:
        raise ValueError(f"augment_batch: {len(params)} parameter draws for {volumes.shape[0]} volumes")
    return torch.stack([augment_volume(v, p, cfg, folded) for v, p in zip(volumes, params)])
