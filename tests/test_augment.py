"""Augmentation: the folded single resampling equals the study's transforms applied one by one,
the composed matrix reproduces MONAI's transforms and its lazy composition, translation matches an
exact voxel shift, and each transform's probability and range hold."""

import math

import numpy as np
import pytest
import torch

from brainage.train.augment import AugmentConfig, AugmentParams, augment_volume, sample_params

SHAPE = (40, 46, 40)


def _smooth_volume() -> torch.Tensor:
    """A smooth compact 'brain' (zero near the borders, so no content leaves the field of view)."""
    g = np.indices(SHAPE).astype(np.float32)
    c = (np.array(SHAPE) / 2)[:, None, None, None]
    r2 = (((g - c) / np.array([12, 14, 12])[:, None, None, None]) ** 2).sum(0)
    vol = np.where(r2 < 1, np.cos(np.pi / 2 * np.sqrt(np.minimum(r2, 1))) ** 2, 0) * (1 + 0.2 * np.sin(g[0] / 4))
    return torch.from_numpy(vol.astype(np.float32))[None]


@pytest.mark.parametrize("seed", range(5))
def test_folded_equals_sequential(seed):
    vol = _smooth_volume()
    cfg = AugmentConfig(p=1.0)
    p = sample_params(cfg, SHAPE, np.random.default_rng(seed))
    p = AugmentParams(p.translate, p.rotate, p.crop, None)
    folded = augment_volume(vol, p, cfg, folded=True)
    sequential = augment_volume(vol, p, cfg, folded=False)
    assert folded.shape == sequential.shape == vol.shape
    # the only difference is the extra interpolation blur of three resamplings vs one
    peak = float(vol.max())
    assert float((folded - sequential).abs().max()) < 0.04 * peak
    assert float((folded - sequential).abs().mean()) < 0.002 * peak
    assert float(torch.corrcoef(torch.stack([folded.flatten(), sequential.flatten()]))[0, 1]) > 0.999
    # and the transform did something
    assert float((folded - vol).abs().mean()) > 0.01 * peak


@pytest.mark.parametrize("seed", range(3))
def test_folded_matrix_matches_monai(seed):
    """The composed map reproduces MONAI's conventions: each transform alone equals MONAI's
    transform, and the composition equals MONAI's own lazy (single-resample) composition except
    in the outermost slice of each axis, where the lazy mode reads zeros beyond the crop while
    Resize (the study's sequential path, and ours) clamps to the crop's edge."""
    from monai.transforms import Compose

    from brainage.train.augment import spatial_transforms

    vol = _smooth_volume()
    cfg = AugmentConfig(p=1.0)
    p = sample_params(cfg, SHAPE, np.random.default_rng(100 + seed))
    p = AugmentParams(p.translate, p.rotate, p.crop, None)
    lazy = Compose(spatial_transforms(p, SHAPE), lazy=True)(vol).as_tensor()
    inner = (slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(augment_volume(vol, p, cfg, folded=True)[inner], lazy[inner], rtol=0, atol=1e-5)
    for only in ("translate", "rotate", "crop"):
        q = AugmentParams(*(getattr(p, k) if k == only else None for k in ("translate", "rotate", "crop")), None)
        torch.testing.assert_close(augment_volume(vol, q, cfg, folded=True), augment_volume(vol, q, cfg, folded=False),
                                   rtol=0, atol=1e-5)


def test_integer_translation_is_an_exact_shift():
    vol = _smooth_volume()
    p = AugmentParams((3.0, -2.0, 4.0), None, None, None)
    out = augment_volume(vol, p, AugmentConfig(), folded=True)
    expected = np.roll(vol.numpy()[0], (-3, 2, -4), axis=(0, 1, 2))  # content is far from the borders
    np.testing.assert_allclose(out.numpy()[0], expected, atol=1e-5)


def test_probabilities_and_ranges_honoured():
    cfg = AugmentConfig()
    n = 4000
    draws = [sample_params(cfg, SHAPE, np.random.default_rng([1, i])) for i in range(n)]
    se = math.sqrt(0.25 / n)
    for name in ("translate", "rotate", "crop", "noise_seed"):
        frac = np.mean([getattr(d, name) is not None for d in draws])
        assert abs(frac - 0.5) < 4 * se, (name, frac)
    t = np.array([d.translate for d in draws if d.translate is not None])
    assert np.abs(t).max() <= 10 and np.abs(t).max() > 9.5 and abs(t.mean()) < 0.5
    r = np.abs(np.array([d.rotate for d in draws if d.rotate is not None]))
    assert r.min() >= 0.1 and r.max() <= 0.5 and r.min() < 0.11 and r.max() > 0.49
    for start, end in (d.crop for d in draws if d.crop is not None):
        for s, e, n_ax in zip(start, end, SHAPE):
            assert 0 <= s < e <= n_ax and (e - s) >= math.ceil(0.7 * n_ax)
    # noise: sd 0.025 added after the resampling
    vol = torch.zeros(1, *SHAPE)
    out = augment_volume(vol, AugmentParams(None, None, None, 123), cfg)
    assert abs(float(out.std()) - 0.025) < 0.001 and abs(float(out.mean())) < 0.001


def test_p_zero_is_identity():
    vol = _smooth_volume()
    p = sample_params(AugmentConfig(p=0.0), SHAPE, np.random.default_rng(0))
    assert torch.equal(augment_volume(vol, p, AugmentConfig()), vol)


@pytest.mark.parametrize("seed", range(4))
def test_axis_aligned_path_equals_grid_sample(seed):
    """Without rotation the folded path interpolates axis by axis; it equals trilinear grid_sample
    of the same map (zero outside), including translations that move content out of the grid."""
    from brainage.train.augment import resample_affine, voxel_matrix

    vol = torch.rand(1, *SHAPE)  # non-zero up to the borders: padding is exercised
    p = sample_params(AugmentConfig(p=1.0), SHAPE, np.random.default_rng(200 + seed))
    p = AugmentParams(p.translate, None, p.crop if seed % 2 else None, None)
    expected = resample_affine(vol, *voxel_matrix(p, SHAPE))
    torch.testing.assert_close(augment_volume(vol, p, AugmentConfig()), expected, rtol=0, atol=1e-5)
