"""The realism measurements (benchmarks/realism.py) against volumes and features whose answer is set by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import realism  # noqa: E402  (benchmark-only code, outside the library)


def _tissue_volume(csf: float, gm: float, shape=(20, 20, 20)) -> tuple[np.ndarray, np.ndarray]:
    """A brain of exactly ``csf`` CSF (30), ``gm`` GM (60) and the rest WM (90), in a zero background."""
    n = int(np.prod(shape))
    values = np.full(n, 90.0)
    values[: round(csf * n)] = 30.0
    values[round(csf * n) : round((csf + gm) * n)] = 60.0
    rng = np.random.default_rng(0)
    brain = rng.permutation(values).reshape(shape)
    data = np.zeros(tuple(s + 4 for s in shape))
    data[2:-2, 2:-2, 2:-2] = brain
    return data, data > 0


def test_global_features_of_a_brain_with_a_set_csf_fraction():
    data, mask = _tissue_volume(csf=0.2, gm=0.5)
    feats = realism.global_features(data, mask, voxel_ml=0.008)
    assert list(feats) == list(realism.FEATURES)
    assert feats["mask_volume_ml"] == pytest.approx(8000 * 0.008)
    # sorted: CSF up to the 20th percentile, GM to the 70th, WM above; the median is GM (60)
    assert feats["p5_over_median"] == pytest.approx(0.5)
    assert feats["p10_over_median"] == pytest.approx(0.5)
    assert feats["p25_over_median"] == pytest.approx(1.0)
    assert feats["p75_over_median"] == pytest.approx(1.5)
    assert feats["p95_over_median"] == pytest.approx(1.5)
    # CSF is exactly half the median: not below 0.5 x median, below 0.7 x median
    assert feats["dark_below_0.5_median"] == 0.0
    assert feats["dark_below_0.7_median"] == pytest.approx(0.2)
    more = realism.global_features(*_tissue_volume(csf=0.35, gm=0.4), voxel_ml=0.008)
    assert more["dark_below_0.7_median"] == pytest.approx(0.35)


def test_global_features_reject_an_empty_mask():
    with pytest.raises(ValueError, match="empty brain mask"):
        realism.global_features(np.ones((4, 4, 4)), np.zeros((4, 4, 4), bool), 1.0)


def test_probe_reads_age_from_a_feature_that_carries_it_and_not_from_noise():
    rng = np.random.default_rng(1)
    ages = rng.uniform(20, 86, 200)
    noise = pd.DataFrame(rng.standard_normal((200, 9)), columns=realism.FEATURES)
    blind = realism.global_feature_probe(noise, ages)
    assert blind["ratio"] > 0.95
    # baseline: uniform ages over 66 years, MAE of the mean about 66 / 4
    assert blind["mae_mean_age"] == pytest.approx(66 / 4, rel=0.1)
    informed = noise.copy()
    informed["dark_below_0.5_median"] = ages / 66 + rng.normal(0, 0.05, 200)  # ~3.3 y of noise
    seen = realism.global_feature_probe(informed, ages)
    assert seen["ratio"] < 0.25 and seen["r"] > 0.95
    assert seen["n"] == 200 and seen["predicted"].shape == (200,)


def test_age_trend_recovers_a_set_slope_and_scatter():
    rng = np.random.default_rng(2)
    ages = rng.uniform(20, 80, 4000)
    values = 1500.0 - 2.5 * ages + rng.normal(0, 40, ages.size)
    trend = realism.age_trend(values, ages)
    assert trend["slope"] == pytest.approx(-25.0, rel=0.05)
    assert trend["sd"] == pytest.approx(40.0, rel=0.05)


def test_template_measures_of_a_three_tissue_brain():
    volume = np.zeros((96, 114, 96), np.float32)
    rng = np.random.default_rng(3)
    brain = np.zeros_like(volume, bool)
    brain[20:76, 20:94, 20:76] = True
    volume[brain] = rng.choice([0.25, 0.6, 0.85], size=int(brain.sum()), p=[0.1, 0.45, 0.45])
    qc = {"affine": {"determinant": 2.0}, "brain_volume_ml": 1400.0, "ncc": 0.6}
    out = realism.template_measures(volume, qc)
    assert (out["csf_peak"], out["gm_peak"], out["wm_peak"]) == pytest.approx((0.25, 0.6, 0.85), abs=1e-6)
    assert out["gm_wm_contrast"] == pytest.approx(0.25 / 1.45)
    # about 10 % of the ventricle region is dark; half its volume in native space (determinant 2)
    region_ml = (realism.ventricle_region_2mm() & brain).sum() * 8e-3
    assert out["ventricles_ml"] == pytest.approx(0.1 * region_ml / 2, rel=0.2)
    assert out["hist"].shape == (len(realism.HIST_BINS) - 1,)
