"""Splits: participant-level, exact 80/10/10, stratified by age bin and dataset, patients never trained."""

import numpy as np
import pandas as pd
import pytest

from brainage.data.splits import make_splits


def _participants(n_hc=400, n_ad=30, n_pd=30, seed=0):
    rng = np.random.default_rng(seed)
    n = n_hc + n_ad + n_pd
    return pd.DataFrame({
        "participant_id": [f"sub-{i:04d}" for i in range(n)],
        "dataset": rng.choice(["ixi", "adni", "ppmi"], n),
        "cohort": ["HC"] * n_hc + ["AD"] * n_ad + ["PD"] * n_pd,
        "age": rng.uniform(20, 90, n),
        "sex": rng.choice(["F", "M"], n),
    })


def test_every_participant_in_exactly_one_split_and_patients_never_trained():
    table = _participants()
    splits = make_splits(table, seed=3, excluded={"sub-0001", "sub-0420"})
    assert splits["participant_id"].is_unique
    assert set(splits["participant_id"]) == set(table["participant_id"]) - {"sub-0001", "sub-0420"}
    cohort = table.set_index("participant_id")["cohort"]
    for _, row in splits.iterrows():
        if cohort[row.participant_id] == "HC":
            assert row.split in ("train", "val", "test")
        else:
            assert row.split == cohort[row.participant_id]  # AD/PD never in train/val/test
    hc = splits[splits["cohort"] == "HC"]
    counts = hc["split"].value_counts()
    assert counts["train"] == pytest.approx(0.8 * len(hc), abs=1)
    assert counts["val"] == pytest.approx(0.1 * len(hc), abs=1)
    assert counts["test"] == pytest.approx(0.1 * len(hc), abs=1)


def test_stratified_by_age_bin_and_dataset():
    splits = make_splits(_participants(n_hc=600), seed=7)
    hc = splits[splits["cohort"] == "HC"].copy()
    hc["bin"] = (hc["age"] // 10).astype(int)
    for key in ("bin", "dataset"):
        for value, group in hc.groupby(key):
            frac = (group["split"] == "train").mean()
            # a stratum of n subjects is split in blocks of 10: train count within one block of 80 %
            assert abs(frac - 0.8) <= 10 / len(group) + 1e-9, (key, value, frac, len(group))
    # the held-out age distributions match the training one (a random split of 60 would not reliably)
    means = hc.groupby("split")["age"].mean()
    assert abs(means["test"] - means["train"]) < 2.0 and abs(means["val"] - means["train"]) < 2.0


def test_seeded():
    table = _participants(n_hc=100)
    a, b, c = make_splits(table, seed=1), make_splits(table, seed=1), make_splits(table, seed=2)
    assert a.equals(b)
    assert not a["split"].equals(c["split"])
