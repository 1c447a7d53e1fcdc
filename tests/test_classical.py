"""The classical baseline (brainage.models.classical): PCA of smoothed tissue maps, then a Gaussian process.

Judged against independent expectations: it recovers age from a known age-driven pattern and
not from shuffled ages; the saved model predicts as scikit-learn's own PCA + GP do; nothing it
fits depends on test, validation or patient volumes; the soft tissue maps find the classes of a
three-level volume.
"""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from brainage.data.cache import CachedVolumes, build_cache
from brainage.models.classical import tissue_maps
from brainage.train.classical import fit_classical
from brainage.apply.infer import predictions_table
from brainage.models.files import load_model
from brainage.models.spec import has_saliency, resolve_spec
from brainage.report.stats import model_roles
from brainage.train.engine import train_model
from conftest import REPO
from synthetic_volumes import synthetic_cache

SETTINGS = {**resolve_spec({"backbone": "pca_gpr", "grid": 4})["classical"], "restarts": 1}
ENTRY = {"backbone": "pca_gpr", "grid": 4, "classical": {"restarts": 1}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """60 synthetic heads (ventricles grow with age) and their cache, split 80/10/10."""
    root = tmp_path_factory.mktemp("classical")
    participants, paths, splits, volumes, index = synthetic_cache(root, 60, 3, (16, 18, 16))
    return participants, paths, splits, CachedVolumes(volumes, index), root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """The classical model trained by the train rule's function on ``data``: (metrics, folder)."""
    _, _, splits, _, root = data
    out = tmp_path_factory.mktemp("trained") / "pca"
    metrics = train_model("pca", ENTRY, {}, splits, root / "cache" / "volumes.npy", root / "cache" / "index.tsv", out,
                          seed=0, progress=False)
    return metrics, out


@pytest.fixture(scope="module")
def fitted(data):
    """The same model fitted in memory (a second, independent run with the same seed)."""
    _, _, splits, cache, _ = data
    x_train, y_train = _arrays(cache, splits, "train")
    return fit_classical(x_train, y_train, resolve_spec(ENTRY)["classical"], 4.0, seed=0)[0]


def _arrays(cache, splits, split):
    part = splits[splits["split"] == split]
    return np.stack([cache.volume(p) for p in part["participant_id"]]), part["age"].to_numpy(float)


def test_recovers_age_from_an_age_pattern_and_not_from_shuffled_ages(data):
    _, _, splits, cache, _ = data
    both = splits[splits["split"].isin(["train", "val", "test"])].sample(frac=1, random_state=1)
    vols = np.stack([cache.volume(p) for p in both["participant_id"]])
    ages = both["age"].to_numpy(float)
    train, test = slice(0, 40), slice(40, None)
    baseline = np.abs(ages[train].mean() - ages[test]).mean()
    model, _ = fit_classical(vols[train], ages[train], SETTINGS, 4.0, seed=0)
    mae = np.abs(model.predict(vols[test]) - ages[test]).mean()
    shuffled, _ = fit_classical(vols[train], np.random.default_rng(0).permutation(ages[train]), SETTINGS, 4.0, seed=0)
    mae_shuffled = np.abs(shuffled.predict(vols[test]) - ages[test]).mean()
    assert mae < 0.3 * baseline, (mae, baseline)
    assert mae_shuffled > 0.7 * baseline, (mae_shuffled, baseline)


@pytest.mark.parametrize("kernel", ["rbf", "linear"])
def test_predictions_are_scikit_learns(data, kernel):
    """Our numpy prediction from the fitted arrays equals scikit-learn's PCA.transform + GP.predict."""
    _, _, splits, cache, _ = data
    (x_train, y_train), (x_test, _) = _arrays(cache, splits, "train"), _arrays(cache, splits, "test")
    settings = {**SETTINGS, "kernel": kernel, "components": 10}
    model, (pca, gp) = fit_classical(x_train, y_train, settings, 4.0, seed=0)
    train = model.features(x_train)  # centred and scaled by one number before PCA, as documented
    mean, scale = train.mean(0), np.sqrt(((train - train.mean(0)) ** 2).sum(1).mean())
    expected = gp.predict(pca.transform((model.features(x_test) - mean) / scale)) * y_train.std() + y_train.mean()
    np.testing.assert_allclose(model.predict(x_test), expected, rtol=1e-10, atol=1e-8)


def test_saved_model_loads_safely_and_predicts_as_fitted(data, trained, fitted):
    participants, _, splits, cache, root = data
    metrics, out = trained
    blob = torch.load(out / "model.pt", weights_only=True)  # arrays and plain values only
    assert blob["meta"]["kind"] == "classical" and metrics["test_mae"] < 0.5 * metrics["test_mae_mean_age_baseline"]
    model, meta = load_model(out / "model.pt")
    table, _ = predictions_table(model, participants, splits, cache.volume, batch_size=3, bias_correction=True)
    x = np.stack([cache.volume(p) for p in table["participant_id"]])
    np.testing.assert_allclose(table["predicted_age"], fitted.predict(x).astype(np.float32), rtol=0, atol=0)
    log = pd.read_csv(out / "train_log.tsv", sep="\t")
    assert len(log) == 1 and (out / "learning_curve.png").stat().st_size > 0
    assert (out / "model_card.json").exists()


def test_saliency_refuses_a_classical_model(data, trained, tmp_path):
    from brainage.apply.explain import run_saliency
    from brainage.core.io import InputError
    from brainage.apply.predict import predict_scan

    _, paths, _, _, root = data
    cache = (root / "cache" / "volumes.npy", root / "cache" / "index.tsv")
    model = trained[1] / "model.pt"
    with pytest.raises(InputError, match="classical model"):
        predict_scan(model, next(iter(paths.values())), saliency=tmp_path / "map.nii.gz")
    with pytest.raises(InputError, match="classical model"):
        run_saliency(model, "participants.tsv", "splits.tsv", *cache, {}, {})


def test_nothing_fitted_depends_on_held_out_subjects(data, tmp_path):
    """Replacing every val, test and patient volume by noise leaves model.pt's arrays unchanged."""
    participants, paths, splits, _, root = data
    rng = np.random.default_rng(5)
    changed = dict(paths)
    for pid in splits.loc[splits["split"] != "train", "participant_id"]:
        changed[pid] = tmp_path / f"{pid}.nii.gz"
        nib.Nifti1Image(rng.uniform(0, 900, (16, 18, 16)).astype(np.float32), np.eye(4)).to_filename(changed[pid])
    build_cache(changed, splits, tmp_path / "volumes.npy", tmp_path / "index.tsv")
    runs = {}
    for name, (vol, idx) in {"same": (root / "cache" / "volumes.npy", root / "cache" / "index.tsv"),
                             "changed": (tmp_path / "volumes.npy", tmp_path / "index.tsv")}.items():
        train_model("pca", ENTRY, {}, splits, vol, idx, tmp_path / name, seed=0, progress=False)
        runs[name] = torch.load(tmp_path / name / "model.pt", weights_only=True)
    a, b = runs["same"], runs["changed"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["meta"]["classical"] == b["meta"]["classical"]
    assert a["meta"]["metrics"]["test_mae"] != b["meta"]["metrics"]["test_mae"]  # the test set did change


def test_leave_one_out_predictions_are_refits_without_the_subject(data, fitted):
    """The closed form equals predicting each training subject from a GP fitted without it
    (same hyper-parameters, same PCA scores)."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    _, _, splits, cache, _ = data
    ages = _arrays(cache, splits, "train")[1]
    c, length, noise = np.exp(fitted.theta)
    y = (ages - fitted.age_mean) / fitted.age_sd
    for i in (0, 7):
        keep = np.arange(len(ages)) != i
        gp = GaussianProcessRegressor(ConstantKernel(c) * RBF(length) + WhiteKernel(noise), optimizer=None)
        gp.fit(fitted.train_scores[keep], y[keep])
        expected = gp.predict(fitted.train_scores[i : i + 1])[0] * fitted.age_sd + fitted.age_mean
        assert fitted.loo_predict(ages)[i] == pytest.approx(expected, abs=1e-6)


def test_fit_is_deterministic_given_the_seed(trained, fitted):
    """Two runs with the same seed (the train rule's and an in-memory fit) hold equal arrays."""
    saved = torch.load(trained[1] / "model.pt", weights_only=True)["state_dict"]
    state = fitted.state()
    assert saved.keys() == state.keys() and all(np.array_equal(saved[k].numpy(), state[k]) for k in state)


def test_tissue_maps_find_three_intensity_classes():
    labels = np.random.default_rng(0).integers(0, 3, (10, 10, 10))
    volume = np.choose(labels, [0.2, 0.55, 0.9]) + 0.02 * np.random.default_rng(1).standard_normal(labels.shape)
    volume[0] = 0.0  # outside the brain: CSF
    maps = tissue_maps(volume)
    np.testing.assert_allclose(maps.sum(0), 1.0)
    assert (maps.argmax(0)[1:] == labels[1:]).mean() > 0.99
    assert (maps[0][0] == 1).all()


def test_config_entry_roles_and_saliency():
    spec = resolve_spec({"backbone": "pca_gpr", "grid": 4, "classical": {"kernel": "linear"}})
    assert spec["classical"]["kernel"] == "linear" and spec["classical"]["features"] == "tissue"
    with pytest.raises(ValueError, match="takes no 'epochs'"):
        resolve_spec({"backbone": "pca_gpr", "grid": 4, "epochs": 3})
    with pytest.raises(ValueError, match="classical"):
        resolve_spec({"backbone": "resnet18", "grid": 4, "batch_size": 4, "epochs": 2, "classical": {}})
    assert not has_saliency(spec) and has_saliency({"backbone": "resnet18"})
    roles = model_roles({"pca": spec, "net": {"backbone": "resnet18", "grid": 4, "loss": "l1"}})
    assert roles.classical == ("pca",) and roles.e2e == ("net",)


def test_config_check_takes_a_classical_entry_without_network_keys():
    from brainage.config import ConfigError, check_config, resolved_config

    config = resolved_config(root=REPO)  # the demo
    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    config["models"] = {"pca": {"backbone": "pca_gpr", "grid": 4, "classical": {"smooth_mm": 6}},
                        "net": {"backbone": "resnet18", "grid": 4, "loss": "l1", "batch_size": 4, "epochs": 2}}
    check_config(config, schema)
    config["models"]["pca"]["batch_size"] = 8
    del config["models"]["net"]["epochs"]
    with pytest.raises(ConfigError) as err:
        check_config(config, schema)
    assert str(err.value).splitlines() == [
        "config models.pca.batch_size: a classical model (pca_gpr) takes no 'batch_size'; its settings go under "
        "'classical' (features, smooth_mm, mask_fraction, components, kernel, restarts)",
        "config models.net: a network needs 'epochs'"]
