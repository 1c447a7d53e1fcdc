"""Batched predictions and the validation-only age-bias correction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from monai.networks.nets import resnet18
from torch import nn

from brainage.apply.infer import fit_age_bias, predict_ages, predictions_table
from brainage.models.files import iter_batches

SHAPE = (8, 10, 8)


class MeanIntensityAge(nn.Module):
    """A model whose prediction is known by hand: age = 100 x the mean voxel value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, D, H, W) -> (B,)
        return 100.0 * x.mean(dim=(1, 2, 3, 4))


def _cohort(seed: int = 0):
    rng = np.random.default_rng(seed)
    n = 24
    ids = [f"sub-{k:03d}" for k in range(n)]
    cohort = ["HC"] * 16 + ["AD"] * 4 + ["PD"] * 4
    split = ["train"] * 6 + ["val"] * 5 + ["test"] * 5 + ["AD"] * 4 + ["PD"] * 4
    age = rng.uniform(25, 85, n).round(1)
    participants = pd.DataFrame(
        {
            "participant_id": ids, "dataset": "sim", "cohort": cohort, "age": age,
            "sex": rng.choice(["F", "M"], n),
            "adas_cog11": [np.nan] * 16 + [12.0, 20.0, 31.0, 9.0] + [np.nan] * 4,
            "updrs3": [np.nan] * 20 + [22.0, 35.0, 17.0, 40.0],
            "hoehn_yahr": [np.nan] * 20 + [2.0, 3.0, 1.0, 2.5],
        }
    )
    # predicted age = a biased, noisy function of age (the regression-to-the-mean pattern)
    predicted = 0.7 * age + 15 + rng.normal(0, 3, n)
    volumes = {pid: np.full(SHAPE, p / 100.0, dtype=np.float32) for pid, p in zip(ids, predicted)}
    splits = pd.DataFrame({"participant_id": ids, "split": split})
    return participants, splits, volumes, dict(zip(ids, predicted))


def test_bias_fit_equals_numpy_polyfit():
    rng = np.random.default_rng(1)
    age = rng.uniform(20, 90, 50)
    bag = -0.3 * age + 18 + rng.normal(0, 2, 50)
    bias = fit_age_bias(age, bag)
    slope, intercept = np.polyfit(age, bag, 1)
    assert bias.slope == pytest.approx(slope, rel=1e-10)
    assert bias.intercept == pytest.approx(intercept, rel=1e-10)
    np.testing.assert_allclose(bias.correct(age, bag), bag - np.polyval([slope, intercept], age), atol=1e-9)


def test_bias_fit_needs_two_distinct_ages():
    with pytest.raises(ValueError, match="2 validation subjects"):
        fit_age_bias(np.array([50.0, 50.0]), np.array([1.0, 2.0]))


def test_predictions_table_by_hand_and_bias_fitted_on_val_only():
    participants, splits, volumes, predicted = _cohort()
    table, info = predictions_table(
        MeanIntensityAge(), participants, splits, volumes.__getitem__, batch_size=3, bias_correction=True, model_name="m"
    )
    # rows: test split, then AD, then PD; never train or val
    assert list(table["split"]) == ["test"] * 5 + ["AD"] * 4 + ["PD"] * 4
    expected_pred = np.array([predicted[p] for p in table["participant_id"]])
    np.testing.assert_allclose(table["predicted_age"], expected_pred, atol=1e-4)
    people = participants.set_index("participant_id").loc[table["participant_id"]]
    np.testing.assert_allclose(table["bag"], expected_pred - people["age"].to_numpy(), atol=1e-4)
    # the correction line is numpy's fit on the five validation subjects only
    val = participants.set_index("participant_id").loc[splits.loc[splits["split"] == "val", "participant_id"]]
    val_bag = np.array([predicted[p] for p in val.index]) - val["age"].to_numpy()
    slope, intercept = np.polyfit(val["age"].to_numpy(), val_bag, 1)
    assert info["slope"] == pytest.approx(slope, abs=1e-5) and info["n_val"] == 5
    np.testing.assert_allclose(table["bag_corrected"], table["bag"] - (slope * table["age"] + intercept), atol=1e-4)
    # clinical scores are carried from the manifest
    np.testing.assert_allclose(table["adas_cog11"].to_numpy(dtype=float), people["adas_cog11"].to_numpy(dtype=float))
    np.testing.assert_allclose(table["updrs3"].to_numpy(dtype=float), people["updrs3"].to_numpy(dtype=float))
    assert {"participant_id", "cohort", "dataset", "sex", "age", "predicted_age", "bag", "split"} <= set(table)


def test_changing_test_subjects_does_not_change_the_bias_fit():
    participants, splits, volumes, _ = _cohort()
    _, before = predictions_table(MeanIntensityAge(), participants, splits, volumes.__getitem__, bias_correction=True)
    shifted = {pid: v + (0.3 if pid in set(splits.loc[splits["split"] != "val", "participant_id"]) else 0.0) for pid, v in volumes.items()}
    _, after = predictions_table(MeanIntensityAge(), participants, splits, shifted.__getitem__, bias_correction=True)
    assert before["slope"] == pytest.approx(after["slope"]) and before["intercept"] == pytest.approx(after["intercept"])


def test_no_bias_column_by_default():
    participants, splits, volumes, _ = _cohort()
    table, info = predictions_table(MeanIntensityAge(), participants, splits, volumes.__getitem__)
    assert "bag_corrected" not in table and info["bias_correction"] is False


def test_batched_resnet_predictions_do_not_depend_on_batch_size():
    torch.manual_seed(0)
    encoder = resnet18(spatial_dims=3, n_input_channels=1, feed_forward=False, widen_factor=0.25)
    model = nn.Sequential(encoder, nn.Linear(128, 1), nn.Flatten(0))
    rng = np.random.default_rng(0)
    vols = {f"s{k}": rng.normal(size=(24, 28, 24)).astype(np.float32) for k in range(5)}
    ids = list(vols)
    one = predict_ages(model, iter_batches(ids, vols.__getitem__, 1))
    three = predict_ages(model, iter_batches(ids, vols.__getitem__, 3))
    assert list(one.index) == ids
    np.testing.assert_allclose(one.to_numpy(), three.to_numpy(), atol=1e-5)
    with torch.no_grad():
        direct = model.eval()(torch.from_numpy(vols["s2"])[None, None]).item()
    assert one["s2"] == pytest.approx(direct, abs=1e-5)
