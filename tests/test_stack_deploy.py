"""Stacked models, deployed cross-validated models (fold ensembles) and the RNC kernel head."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from brainage.core.intervals import Calibration
from brainage.models.files import load_model, save_model
from brainage.models.networks import KernelHead, build_age_model
from brainage.train.stack import fit_weights, stack_fold_table

FOLDS = [f"r0f{k}" for k in range(4)]


def _member_folds(rng, ages, noise):
    """One member's fold tables: each fold tests a quarter of the subjects; AD rows in every fold."""
    ids = [f"sub-{i:03d}" for i in range(len(ages))]
    pred = ages + noise
    tables = {}
    for k, fold in enumerate(FOLDS):
        test = [i for i in range(len(ids)) if i % len(FOLDS) == k]
        rows = [{"participant_id": ids[i], "cohort": "HC", "split": "test", "age": ages[i], "predicted_age": pred[i]}
                for i in test]
        rows.append({"participant_id": "sub-ad", "cohort": "AD", "split": "AD", "age": 75.0,
                     "predicted_age": 80.0 + rng.normal()})
        table = pd.DataFrame(rows)
        table["bag"] = table["predicted_age"] - table["age"]
        tables[fold] = table
    return tables


def test_convex_weights_recover_a_known_mixture():
    rng = np.random.default_rng(0)
    a, b = rng.normal(50, 10, 200), rng.normal(50, 10, 200)
    w = fit_weights(np.column_stack([a, b]), 0.7 * a + 0.3 * b)
    np.testing.assert_allclose(w, [0.7, 0.3], atol=1e-3)
    # a useless member gets no weight, and weights stay a convex combination
    age = rng.uniform(20, 80, 300)
    w = fit_weights(np.column_stack([age + rng.normal(0, 3, 300), rng.uniform(20, 80, 300)]), age)
    assert w[0] > 0.9 and w.min() >= 0 and abs(w.sum() - 1) < 1e-9


def test_stack_weights_never_see_the_test_fold():
    rng = np.random.default_rng(1)
    ages = rng.uniform(20, 80, 80)
    members = {"good": _member_folds(rng, ages, rng.normal(0, 3, 80)),
               "poor": _member_folds(rng, ages, rng.normal(0, 9, 80))}
    _, info = stack_fold_table("stack", "r0f1", members)
    assert info["fitted_on"]["folds"] == ["r0f0", "r0f2", "r0f3"] and info["fitted_on"]["n"] == 60
    # fold r0f1's own test subjects: make the poor member perfect there; its weights must not move
    changed = {m: dict(t) for m, t in members.items()}
    own = changed["poor"]["r0f1"].copy()
    own.loc[own["split"] == "test", "predicted_age"] = own.loc[own["split"] == "test", "age"]
    changed["poor"]["r0f1"] = own
    _, after = stack_fold_table("stack", "r0f1", changed)
    assert after["weights"] == pytest.approx(info["weights"], abs=1e-12)
    # ...while another fold's (r0f2) weights see it
    _, other_before = stack_fold_table("stack", "r0f2", members)
    _, other_after = stack_fold_table("stack", "r0f2", changed)
    assert other_after["weights"]["poor"] > other_before["weights"]["poor"] + 0.01
    # the table is fold r0f1's rows, combined with its weights
    table, _ = stack_fold_table("stack", "r0f1", members)
    good = members["good"]["r0f1"].set_index("participant_id")["predicted_age"]
    poor = members["poor"]["r0f1"].set_index("participant_id")["predicted_age"]
    w = info["weights"]
    expected = (w["good"] * good + w["poor"] * poor).loc[table["participant_id"]].to_numpy()
    np.testing.assert_allclose(table["predicted_age"], expected)
    np.testing.assert_allclose(table["bag"], table["predicted_age"] - table["age"])


def _tiny_network(tmp_path, name, seed):
    torch.manual_seed(seed)
    arch = {"backbone": "resnet18", "width": 0.125, "conv1_stride": 2, "norm": "batch"}
    model = build_age_model(arch, 50.0, 15.0).eval()
    meta = {"name": name, "kind": "e2e", "architecture": arch, "grid_res": 4.0, "grid_shape": [16, 16, 16],
            "preprocess": {"engine": "native"}, "intensity_normalisation": "x",
            "age": {"train_mean": 50.0, "train_sd": 15.0, "train_min": 20.0, "train_max": 80.0}}
    path = tmp_path / name / "model.pt"
    path.parent.mkdir(parents=True)
    save_model(model.state_dict(), meta, path)
    return path, model


def test_a_deployed_cv_model_is_the_mean_of_its_fold_models_with_an_oof_interval(tmp_path):
    from brainage.train.deploy import deploy_cv_model

    folds = {f: _tiny_network(tmp_path, f"m{f}", k) for k, f in enumerate(FOLDS[:3])}
    rng = np.random.default_rng(2)
    ages = rng.uniform(20, 80, 60)
    oof = pd.DataFrame({"participant_id": [f"s{i}" for i in range(60)], "cohort": "HC", "dataset": "x", "sex": "F",
                        "split": "test", "age": ages, "predicted_age": ages + rng.normal(0, 5, 60)})
    oof["bag"] = oof["predicted_age"] - oof["age"]
    oof_tsv = tmp_path / "oof.tsv"
    oof.to_csv(oof_tsv, sep="\t", index=False)
    out = tmp_path / "deployed" / "model.pt"
    out.parent.mkdir()
    deploy_cv_model("m", {f: p for f, (p, _) in folds.items()}, oof_tsv, out, tmp_path / "deployed" / "card.json",
                    {"level": 0.9, "conditional": "none"})
    model, meta = load_model(out)
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        expected = torch.stack([m(x).reshape(-1) for _, m in folds.values()]).mean(0)
        got = model(x).reshape(-1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    assert meta["kind"] == "ensemble" and meta["grid_res"] == 4.0 and meta["preprocess"] == {"engine": "native"}
    cal = Calibration.from_meta(meta["interval"])
    residuals = np.sort(np.abs(oof["predicted_age"] - oof["age"]))
    assert cal.halfwidth == pytest.approx(residuals[int(np.ceil(61 * 0.9)) - 1])  # the 55th smallest of 60


def test_kernel_head_equals_scikit_learn_gp_on_the_same_features():
    from brainage.train.classical import fit_features

    rng = np.random.default_rng(3)
    feats = rng.normal(size=(40, 12))
    ages = 50 + 10 * feats[:, 0] + rng.normal(0, 2, 40)
    settings = {"features": "encoder", "kernel": "rbf", "components": None, "restarts": 1, "smooth_mm": 0.0,
                "mask_fraction": 0.0}
    fitted, (pca, gp) = fit_features(feats, ages, np.zeros(1, dtype=bool), settings, 4.0, 0)
    head = KernelHead.from_classical(fitted, age_mean=48.0, age_sd=11.0)
    new = rng.normal(size=(7, 12))
    scaled = (new - feats.mean(0)) / fitted.feature_scale
    reference = gp.predict(pca.transform(scaled)) * fitted.age_sd + fitted.age_mean  # scikit-learn's own answer
    got = head(torch.from_numpy(new).float()).reshape(-1).double().numpy() * 11.0 + 48.0
    np.testing.assert_allclose(got, reference, atol=1e-3)
    # it rebuilds from its shape record and loads its state, as a model.pt does
    rebuilt = KernelHead(**{k: v for k, v in head.shape_meta().items() if k != "type"})
    rebuilt.load_state_dict(head.state_dict())
    torch.testing.assert_close(rebuilt(torch.from_numpy(new).float()), head(torch.from_numpy(new).float()))


def test_combine_mean_is_an_equal_weight_ensemble():
    rng = np.random.default_rng(4)
    ages = rng.uniform(20, 80, 40)
    members = {"a": _member_folds(rng, ages, rng.normal(0, 3, 40)), "b": _member_folds(rng, ages, rng.normal(0, 9, 40))}
    table, info = stack_fold_table("ens", "r0f0", members, "mean")
    assert info["weights"] == {"a": 0.5, "b": 0.5} and info["combine"] == "mean"
    a = members["a"]["r0f0"].set_index("participant_id")["predicted_age"]
    b = members["b"]["r0f0"].set_index("participant_id")["predicted_age"]
    np.testing.assert_allclose(table["predicted_age"], ((a + b) / 2).loc[table["participant_id"]].to_numpy())


def test_stack_entries_are_checked_against_the_other_models_and_the_splits():
    from brainage.models.spec import entry_problems, stack_problems

    models = {"a": {"backbone": "pca_gpr", "grid": 4}, "b": {"backbone": "sfcn", "grid": 4},
              "c": {"backbone": "sfcn", "grid": 2},
              "ens": {"backbone": "stack", "grid": 4, "combine": "mean", "members": ["b", "a"]},
              "top": {"backbone": "stack", "grid": 4, "members": ["a", "ens"]},
              "loop1": {"backbone": "stack", "grid": 4, "members": ["a", "loop2"]},
              "loop2": {"backbone": "stack", "grid": 4, "members": ["b", "loop1"]}}
    assert stack_problems("top", models["top"], models, "kfold") == []  # a stack of a stack
    assert "needs training.splits.scheme: kfold" in stack_problems("top", models["top"], models, "fixed")[0]
    assert "'loop2' contains 'loop1' itself" in stack_problems("loop1", models["loop1"], models, "kfold")[0]
    bad = {"backbone": "stack", "grid": 4, "members": ["c", "zzz"]}
    lines = stack_problems("s", bad, models, "kfold")
    assert any("'c' is on the 2 mm grid" in line for line in lines)
    assert any("'zzz' is not a model" in line for line in lines)
    assert "combine: 'median' is not one of fitted, mean" in " ".join(
        entry_problems("s", {"backbone": "stack", "grid": 4, "members": ["a", "b"], "combine": "median"}))
    assert "at least two" in entry_problems("s", {"backbone": "stack", "grid": 4, "members": ["a"]})[0]
