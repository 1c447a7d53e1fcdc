"""SynthSeg-style contrast randomisation (brainage.train.synth): the anatomy is kept, the contrast
is random in every order, the scale is the cache's, a draw is reproducible, and turning it on
leaves the study's augmentation draws as they were."""

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage

from brainage.train.augment import AugmentConfig, augment_volume, sample_params
from brainage.train.synth import gaussian_blur, synthesize

SHAPE = (24, 28, 24)


def _phantom() -> tuple[torch.Tensor, np.ndarray]:
    """Nested ellipsoids: WM (1.0) inside GM (0.6) inside CSF (0.25), background 0; and its labels
    (0 background, 1 CSF, 2 GM, 3 WM)."""
    g = np.indices(SHAPE).astype(np.float64)
    c = (np.array(SHAPE) - 1) / 2
    r = np.sqrt(sum(((g[a] - c[a]) / (0.45 * SHAPE[a])) ** 2 for a in range(3)))
    labels = np.select([r < 0.6, r < 0.85, r < 1.0], [3, 2, 1], 0)  # ~22, 40, 38 % of the brain
    volume = np.choose(labels, [0.0, 0.25, 0.6, 1.0]).astype(np.float32)
    return torch.from_numpy(volume)[None], labels


def test_blur_equals_scipy():
    rng = np.random.default_rng(0)
    v = rng.random(SHAPE).astype(np.float32)
    sds = (0.0, 0.7, 1.6)
    ours = gaussian_blur(torch.from_numpy(v), sds).numpy()
    ref = v.copy()
    for axis, sd in enumerate(sds):
        if sd > 0:
            ref = ndimage.gaussian_filter1d(ref, sd, axis=axis, mode="constant", truncate=3.0)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_anatomy_kept_contrast_random():
    """Without blur, bias and noise every tissue is one intensity (+- its texture, <= 10 %); over
    many draws all six orders of the three tissues occur, about equally often."""
    volume, labels = _phantom()
    orders = []
    for seed in range(120):
        img = synthesize(volume, seed, blur_vox=0, bias_sd=0, noise_sd=0)[0].numpy()
        means = []
        for lab in (1, 2, 3):
            values = img[labels == lab]
            assert values.std() <= 0.1 * values.mean() + 1e-6, (seed, lab)
            means.append(values.mean())
        assert np.all(img[labels == 0] == 0)
        orders.append(tuple(np.argsort(means)))
    counts = [orders.count(o) for o in itertools.permutations(range(3))]
    assert min(counts) >= 8, counts  # 20 expected for each order; the T1 order is not favoured


def test_scale_is_the_caches_and_draws_reproduce():
    volume, labels = _phantom()
    a = synthesize(volume, 7)
    b = synthesize(volume, 7)
    c = synthesize(volume, 8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    brain = a[0].numpy()[labels > 0]
    assert np.percentile(brain, 99.5) == pytest.approx(1.0, abs=1e-4)  # brainage.data.cache's scale
    assert np.all(a[0].numpy()[labels == 0] == 0) and brain.min() >= 0


def test_synth_draw_leaves_the_study_draws_alone():
    """Turning synth on adds a draw after the others: translation, rotation, crop and noise of a
    seed are those of the study's augmentation; synth 0 never synthesises."""
    plain, synth = AugmentConfig(p=0.5), AugmentConfig(p=0.5, synth=1.0)
    for seed in range(20):
        a = sample_params(plain, SHAPE, np.random.default_rng(seed))
        b = sample_params(synth, SHAPE, np.random.default_rng(seed))
        assert (a.translate, a.rotate, a.crop, a.noise_seed) == (b.translate, b.rotate, b.crop, b.noise_seed)
        assert a.synth_seed is None and b.synth_seed is not None
    half = [sample_params(AugmentConfig(synth=0.5), SHAPE, np.random.default_rng(s)).synth_seed for s in range(200)]
    assert 70 <= sum(s is not None for s in half) <= 130


def test_augment_volume_synthesises_then_transforms():
    volume, labels = _phantom()
    cfg = AugmentConfig(p=0.0, synth=1.0)  # no study transform: the output is the synthesised image
    params = sample_params(cfg, SHAPE, np.random.default_rng(3))
    out = augment_volume(volume, params, cfg)
    torch.testing.assert_close(out, synthesize(volume, params.synth_seed))
    assert not torch.allclose(out, volume)
