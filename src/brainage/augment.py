"""The study's data augmentation, with the spatial transforms folded into one resampling.

Each transform is applied with probability ``p`` (0.5 in the study), independently:

- translation: uniform in [-10, 10] voxels per axis;
- rotation: per axis an angle of magnitude uniform in [0.1, 0.5] rad and random sign;
- random crop: per axis a size uniform in [ceil(0.7 n), n] voxels at a uniform position, resized
  back to the full grid (trilinear);
- Gaussian noise: mean 0, sd 0.025 (on intensities normalised to ~[0, 1], see brainage.cache).

The transforms are MONAI's (``Affine``, ``Rotate``, ``SpatialCrop``, ``Resize``). Applied one
after the other (``folded=False``), each spatial transform resamples the volume: three
interpolations, three passes over memory, and blur accumulating. With ``folded=True`` they run in
MONAI's lazy mode, which composes their affines into one matrix and resamples once. Noise is
added last, after the single resampling (noise is not spatial and would otherwise force the
pending affine to be applied). Tensors stay on their device, so on a GPU the augmentation runs
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

# Imported at module load (not inside the functions): DataLoader workers forked from the training
# process then inherit MONAI instead of paying its multi-second import on their first volume.
from monai.transforms import Affine, Compose, Resize, Rotate, SpatialCrop

__all__ = ["AugmentConfig", "AugmentParams", "sample_params", "spatial_transforms", "augment_volume", "augment_batch"]


@dataclass(frozen=True)
class AugmentConfig:
    """The study's augmentation settings (config ``training.augment``)."""

    p: float = 0.5
    translate_vox: float = 10.0
    rotate_rad: tuple[float, float] = (0.1, 0.5)
    noise_sd: float = 0.025
    crop_min_scale: float = 0.7

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
    return AugmentParams(translate, rotate, crop, noise_seed)  # type: ignore[arg-type]


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


def augment_volume(
    volume: torch.Tensor, params: AugmentParams, cfg: AugmentConfig, folded: bool = True
) -> torch.Tensor:
    """Augment one volume ``(1, D, H, W)`` (any device) -> ``(1, D, H, W)`` float32 tensor.

    ``folded=True`` resamples once (MONAI lazy resampling of the composed affine);
    ``folded=False`` applies the transforms one after the other (the study's way, the baseline).
    """
    shape = tuple(volume.shape[1:])
    transforms = spatial_transforms(params, shape)  # type: ignore[arg-type]
    out = volume
    if transforms:
        out = Compose(transforms, lazy=folded)(volume)
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
