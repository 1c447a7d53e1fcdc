"""SynthSeg-style contrast randomisation: a new image of the same anatomy with a random contrast.

Synthetic-to-real training (SynthSeg, Billot et al. 2023; SynthBA, Puglisi et al. 2024) draws
every training image from a label map with a random intensity per tissue, a random bias field,
noise and a random resolution, so that a network learns anatomy and not one scanner's
contrast. Here the label map is the volume's own soft CSF/GM/WM map (the three-means of
:class:`brainage.models.networks.TissueInput`, the maps the classical model and ``inputs:
tissue`` read; on a simulated head these are the simulator's tissue classes, on a real one
their estimate). One draw (:func:`synthesize`):

1. a mean intensity per tissue, uniform in [0.1, 1], in any order (GM may come out brighter than
   WM, CSF brighter than both), and a within-tissue texture (per tissue an independent Gaussian
   field with SD uniform in [0, 0.1] of that mean);
2. the image: the tissue probabilities times their intensities, summed (partial volume mixes);
3. resolution: a Gaussian blur with an SD per axis uniform in [0, ``blur_vox``] voxels (thick
   slices or a coarse scan);
4. a smooth multiplicative bias field ``exp(s * f)``, ``f`` a 4 x 4 x 4 standard-normal grid
   upsampled trilinearly, ``s`` uniform in [0, ``bias_sd``];
5. Gaussian noise with an SD uniform in [0, ``noise_sd``] of the brain's scale;
6. outside the brain (0 in the input) stays 0, and the result is scaled as the cache scales
   every volume (its brain's 99.5th percentile to 1, :func:`brainage.data.cache.intensity_scale`).

Every random number is drawn on the CPU from a generator seeded by the draw's seed, so a draw is
the same on any device and in any DataLoader worker (then moved to the volume's device).
Training turns it on per model with ``augment: {synth: P}`` (the probability that a view is
synthesised; 0, the default, changes nothing): for intensity-input networks, e.g. pretraining on
the simulated cohort (``config/pretrain_synth.yaml``). It runs before the spatial transforms and
the study's noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from brainage.data.cache import intensity_scale
from brainage.models.networks import TissueInput

__all__ = ["synthesize", "gaussian_blur"]

_TISSUES = TissueInput()


def _kernel(sd: float) -> torch.Tensor:
    if sd <= 1e-3:
        return torch.ones(1, dtype=torch.float32)
    radius = max(1, int(round(3 * sd)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sd) ** 2)
    return k / k.sum()


def gaussian_blur(volume: torch.Tensor, sds: tuple[float, float, float]) -> torch.Tensor:
    """(D, H, W) -> (D, H, W): a separable Gaussian blur, SD ``sds[a]`` voxels along axis ``a``,
    zero outside the volume (as ``scipy.ndimage.gaussian_filter(..., mode="constant")``)."""
    out = volume[None, None]
    for axis, sd in enumerate(sds):
        k = _kernel(float(sd)).to(volume.device, volume.dtype)
        if k.numel() == 1:
            continue
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = k.numel() // 2
        out = F.conv3d(F.pad(out, pad), k.reshape(shape))
    return out[0, 0]


def synthesize(volume: torch.Tensor, seed: int, blur_vox: float = 1.0, bias_sd: float = 0.3,
               noise_sd: float = 0.05) -> torch.Tensor:
    """One random-contrast image of ``volume`` (1, D, H, W), brain > 0 and scaled ~[0, 1]:
    (1, D, H, W) float32 on its device; the same ``seed`` gives the same image."""
    x = volume.float()
    brain = x[0] > 0
    if not bool(brain.any()):
        return x
    shape = tuple(x.shape[1:])
    gen = torch.Generator().manual_seed(int(seed))
    means = 0.1 + 0.9 * torch.rand(3, generator=gen)
    texture = means * 0.1 * torch.rand(3, generator=gen)
    blur = (blur_vox * torch.rand(3, generator=gen)).tolist()
    bias = float(bias_sd * torch.rand(1, generator=gen))
    noise = float(noise_sd * torch.rand(1, generator=gen))
    fields = torch.randn((3, *shape), generator=gen)
    coarse = torch.randn((1, 1, 4, 4, 4), generator=gen)
    white = torch.randn(shape, generator=gen)
    device = x.device
    p = _TISSUES(x[None].cpu())[0].to(device)  # (3, D, H, W) CSF, GM, WM
    tissue = (means[:, None, None, None] + texture[:, None, None, None] * fields).to(device)
    image = gaussian_blur((p * tissue).sum(0), tuple(blur))
    field = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0, 0].to(device)
    image = image * torch.exp(bias * field) + noise * white.to(device)
    image = torch.where(brain, image.clamp_min(0), torch.zeros((), device=device))
    return (image / intensity_scale(image.cpu().numpy()))[None]  # the cache's own scaling
