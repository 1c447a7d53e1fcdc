"""Grad-RAM against MONAI's GradCAM, group means and AAL116 tables against hand-computed values."""

from __future__ import annotations

import copy

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from monai.networks.nets import resnet18
from monai.visualize import GradCAM
from torch import nn

from brainage.data.atlases import aal_labels, resource_paths
from brainage.apply.explain import (
    GroupMeans,
    age_group,
    grad_ram,
    input_gradient,
    match_controls_by_age,
    parcel_table,
    precision_at_k,
    random_precision_at_k,
    relevant_regions,
    saliency_groups,
    saliency_maps,
    truth_check,
    truth_checks,
)

SHAPE = (32, 40, 32)  # small input; layer4 of a ResNet is then 1 x 2 x 1 voxels


class Regressor(nn.Module):
    """An AgeModel look-alike: ``encoder`` (MONAI ResNet trunk, features) + linear ``head``."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = resnet18(spatial_dims=3, n_input_channels=1, feed_forward=False)
        self.head = nn.Linear(512, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, D, H, W) -> (B,)
        return self.head(self.encoder(x))[:, 0]


class AsLogits(nn.Module):
    """MONAI's CAM classes index ``logits[:, class_idx]``: give them a (B, 1) output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)[:, None]


def monai_grad_ram(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """MONAI GradCAM on encoder.layer4 (its own hooks and full backward), min-max in numpy.

    MONAI leaves its hooks on the module: it gets its own copy of the model.
    """
    cam = GradCAM(AsLogits(copy.deepcopy(model)), target_layers="model.encoder.layer4", postprocessing=lambda m: m)
    maps = cam(x, class_idx=0)[:, 0].detach().double().numpy()
    flat = maps.reshape(len(maps), -1)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    return ((flat - low) / (high - low)).reshape(maps.shape)


@pytest.fixture(scope="module")
def trained_like():
    """A randomly initialised ResNet18 with non-trivial BatchNorm running statistics."""
    model = Regressor(seed=0)
    model.train()
    with torch.no_grad():  # a few forward passes in train mode move the running mean/var
        for k in range(3):
            model(torch.randn(4, 1, *SHAPE, generator=torch.Generator().manual_seed(k)))
    return model.eval()


def _volumes(n: int, seed: int = 1, shape: tuple[int, int, int] = SHAPE) -> torch.Tensor:
    return torch.randn(n, 1, *shape, generator=torch.Generator().manual_seed(seed))


def test_grad_ram_matches_monai_gradcam(trained_like):
    x = _volumes(3)
    ours = grad_ram(trained_like, x).double().numpy()
    theirs = monai_grad_ram(trained_like, x)
    assert ours.shape == (3, *SHAPE)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_grad_ram_shapes_and_range_per_subject(trained_like):
    x = _volumes(4, seed=2)
    maps = grad_ram(trained_like, x)
    assert maps.shape == (4, *SHAPE) and maps.dtype == torch.float32
    for m in maps:
        assert float(m.min()) == pytest.approx(0.0, abs=1e-7)
        assert float(m.max()) == pytest.approx(1.0, abs=1e-6)


def test_grad_ram_of_a_subject_does_not_depend_on_its_batch(trained_like):
    x = _volumes(3, seed=3)
    together = grad_ram(trained_like, x)
    alone = torch.cat([grad_ram(trained_like, x[k : k + 1]) for k in range(3)])
    # maps in [0, 1]: float32 convolutions pick other kernels for other batch sizes (seen here:
    # 1.1e-5 apart), while a batch-mixing bug moves maps by far more than 5e-5
    torch.testing.assert_close(together, alone, atol=5e-5, rtol=0)


def test_grad_ram_restores_training_mode_and_leaves_no_hooks(trained_like):
    model = copy.deepcopy(trained_like).train()
    grad_ram(model, _volumes(1))
    assert model.training
    assert not model.encoder.layer4._forward_hooks


def test_grad_ram_keeps_no_graph_below_the_target_block(trained_like):
    # autograd saves tensors for the backward pass only where a gradient is needed: Grad-RAM
    # differentiates from layer4 up, so the trunk below it (conv1..layer3, where a 1 mm volume's
    # activations are largest) must save nothing; a plain forward with gradients saves it all.
    model = copy.deepcopy(trained_like)
    model.encoder.conv1.weight.requires_grad_(False)  # a frozen part stays frozen afterwards
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    x = _volumes(1, seed=5)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        grad_ram(model, x)
    with_grad_ram = sum(saved)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    plain = sum(saved)
    assert with_grad_ram * 10 < plain  # layer4 and the head only (seen: the whole trunk without the fix)
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["encoder.conv1.weight"]
    assert all(p.grad is None for p in model.parameters())


def test_grad_ram_for_frozen_rnc_encoder_and_linear_head(trained_like):
    # RNC: the encoder is frozen (no parameter needs a gradient), only the head was trained.
    frozen = copy.deepcopy(trained_like)
    for p in frozen.encoder.parameters():
        p.requires_grad_(False)
    x = _volumes(2, seed=4)
    maps = grad_ram(frozen, x)
    # the map is a property of the function, not of which weights are trainable
    np.testing.assert_allclose(maps.double().numpy(), monai_grad_ram(trained_like, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("backbone", ["resnet18", "sfcn"])
def test_grad_ram_with_the_project_age_models(backbone):
    from brainage.models.networks import build_age_model

    torch.manual_seed(0)
    model = build_age_model({"backbone": backbone, "width": 0.25, "conv1_stride": 2}, age_mean=55.0, age_sd=15.0).eval()
    # SFCN pools 5 times: the 4 mm grid gives its layer4 a 2 x 2 x 2 map (a smaller input, a constant one)
    x = _volumes(2, seed=5, shape=(48, 57, 48) if backbone == "sfcn" else SHAPE)
    np.testing.assert_allclose(grad_ram(model, x).double().numpy(), monai_grad_ram(model, x), atol=1e-5, rtol=0)


class LinearAge(nn.Module):
    """age = sum(w * x) + 3: its gradient with respect to the input is ``w`` for every input."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        return (x[:, 0] * self.weight).flatten(1).sum(1) + 3.0


def test_input_gradient_of_a_linear_model_is_its_weights():
    torch.manual_seed(1)
    w = torch.randn(SHAPE)
    expected = (w.abs() - w.abs().min()) / (w.abs().max() - w.abs().min())
    maps = input_gradient(LinearAge(w), _volumes(2))
    assert maps.shape == (2, *SHAPE)
    for m in maps:  # the same map whatever the input: |w|, min-max scaled
        np.testing.assert_allclose(m.numpy(), expected.numpy(), atol=1e-6)


def test_input_gradient_matches_the_jacobian_per_subject(trained_like):
    """Against torch's own Jacobian of one subject at a time, in eval mode: batch-independent.

    In float64: in float32 the random network's input gradient of one of these subjects differs
    by 0.8 % of its maximum between a batch of 3 and a batch of 1 (convolution kernels differ by
    batch size, and a random network's gradient is a sum of cancelling paths)."""
    model = copy.deepcopy(trained_like).double().train()
    x = _volumes(3).double()
    maps = saliency_maps(model, x, "gradient")
    assert model.training  # mode restored
    model.eval()
    for k in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: model(v[None, None])[0], x[k, 0])
        ref = jac.abs()
        ref = (ref - ref.min()) / (ref.max() - ref.min())
        np.testing.assert_allclose(maps[k].numpy(), ref.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="unknown saliency method 'occlusion'"):
        saliency_maps(model, x, "occlusion")


def test_unknown_target_layer_is_one_clear_error(trained_like):
    with pytest.raises(ValueError, match="no layer 'layer9'"):
        grad_ram(trained_like, _volumes(1), target_layer="layer9")


# ---------------------------------------------------------------------------- groups


def _subjects() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "participant_id": ["sub-a", "sub-b", "sub-c", "sub-d", "sub-e", "sub-f", "sub-g"],
            "cohort": ["HC", "HC", "HC", "HC", "HC", "AD", "PD"],
            "age": [25.0, 39.9, 40.0, 85.0, 61.0, 70.0, 62.0],
            "sex": ["F", "M", "F", "M", "F", "F", "M"],
        }
    )


def test_age_groups_follow_the_study_bins():
    assert [age_group(a) for a in (19.9, 20, 39.99, 40, 59.9, 60, 79.9, 80, 101)] == [
        None, "20-40", "20-40", "40-60", "40-60", "60-80", "60-80", "80plus", "80plus",
    ]


def test_group_members_and_means_by_hand():
    subjects = _subjects()
    groups = {g.id: g for g in saliency_groups(subjects)}
    assert groups["HC_20-40_F"].members == ["sub-a"]
    assert groups["HC_20-40_M"].members == ["sub-b"]
    assert groups["HC_20-40"].members == ["sub-a", "sub-b"]
    assert groups["HC_40-60_F"].members == ["sub-c"]
    assert groups["HC_80plus_M"].members == ["sub-d"]
    assert groups["HC_60-80_M"].members == []
    assert groups["AD"].members == ["sub-f"] and groups["PD"].members == ["sub-g"]
    maps = {pid: np.full((2, 2, 2), k, dtype=np.float32) for k, pid in enumerate(subjects["participant_id"])}
    maps["sub-b"][0, 0, 0] = 10.0
    acc = GroupMeans(list(groups.values()), (2, 2, 2))
    for pid, m in maps.items():
        acc.add(pid, m)
    means = acc.means()
    expected = np.full((2, 2, 2), (0 + 1) / 2)
    expected[0, 0, 0] = (0 + 10) / 2
    np.testing.assert_allclose(means["HC_20-40"], expected)
    np.testing.assert_allclose(means["HC"], np.mean([maps[p] for p in ["sub-a", "sub-b", "sub-c", "sub-d", "sub-e"]], axis=0))
    assert means["HC_60-80_M"] is None and acc.counts()["HC_60-80_M"] == 0


def test_age_matched_controls_nearest_without_replacement():
    patients = pd.DataFrame({"participant_id": ["p1", "p2"], "age": [70.0, 69.0], "sex": ["F", "F"]})
    controls = pd.DataFrame({"participant_id": ["c1", "c2", "c3"], "age": [69.5, 50.0, 75.0], "sex": ["M", "F", "F"]})
    pairs = match_controls_by_age(patients, controls).set_index("participant_id")
    # p1 (70, oldest first) takes c1 (gap 0.5); p2 (69) cannot reuse c1, takes c3 (gap 6) over c2 (gap 19)
    assert pairs.at["p1", "control_id"] == "c1"
    assert pairs.at["p2", "control_id"] == "c3"


# ---------------------------------------------------------------------------- AAL116


def test_aal116_table_by_hand():
    labels = aal_labels()
    atlas = np.zeros((4, 4, 4), dtype=np.int16)
    saliency = np.zeros((4, 4, 4), dtype=np.float32)
    # Hippocampus_L (37): voxels 0.8 and 1.0 -> mean 0.9; Hippocampus_R (38): 0.5 x 3 -> 0.5;
    # Precentral_L (1): 0.2 and 0.4 -> 0.3; Vermis_10 (116): 0.95 alone
    for idx, values in {37: [0.8, 1.0], 38: [0.5, 0.5, 0.5], 1: [0.2, 0.4], 116: [0.95]}.items():
        for v in values:
            free = np.argwhere(atlas == 0)[0]
            atlas[tuple(free)] = idx
            saliency[tuple(free)] = v
    saliency[atlas == 0] = 0.7  # background must not leak into any region
    table = parcel_table(saliency, atlas, labels, threshold=0.8).set_index("index")
    assert len(table) == 116
    assert table.at[37, "name"] == "Hippocampus_L" and table.at[37, "hemisphere"] == "L"
    assert table.at[116, "hemisphere"] == "midline"
    np.testing.assert_allclose(table.loc[[116, 37, 38, 1], "mean"], [0.95, 0.9, 0.5, 0.3], atol=1e-7)
    assert list(table.loc[[116, 37, 38, 1], "rank"]) == [1, 2, 3, 4]
    np.testing.assert_allclose(table.loc[[116, 37, 38, 1], "mean_scaled"], np.array([0.95, 0.9, 0.5, 0.3]) / 0.95, atol=1e-7)
    assert set(table.index[table["above_threshold"]]) == {116, 37}  # 1.0 and 0.947 > 0.8; 0.526 is not
    assert table.drop(index=[116, 37, 38, 1])["mean"].isna().all()


def test_precision_at_k_and_random_baseline():
    ranking = [f"r{k}" for k in range(20)]
    assert precision_at_k(ranking, {"r0", "r3", "r15"}, k=10) == pytest.approx(0.2)
    # random rankings: expected precision is n_relevant / n_regions (hypergeometric mean)
    draws = random_precision_at_k(116, 20, 10, draws=4000, seed=0)
    assert draws.mean() == pytest.approx(20 / 116, abs=0.01)
    table = pd.DataFrame({"index": range(1, 21), "name": ranking, "mean": np.linspace(1, 0, 20)})
    table["rank"] = np.arange(1, 21)
    check = truth_check(table, ranking[:10], k=10, draws=2000, seed=0)
    assert check["precision"] == 1.0 and check["p_value"] < 0.01


def _effects_fixture() -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """A hand-made simulator truth table (116 AAL regions x ageing/AD/PD) and its known top 10s.

    Ageing: regions 1..10 shrink by 30..21 % except region 10, which *grows* by 21 % (a
    ventricle-side expansion: it counts by its size, not its sign); region 11 has the largest
    displacement but a small volume change (moved, not changed: not relevant). AD: the 10
    regions 37..46 lose 10 %. PD: regions 71..78 lose 5 %, 21 and 22 lose 4 %. Everything
    else changes by less than 1 %.
    """
    labels = aal_labels()
    rows = []
    for effect, cohort in (("ageing", "HC"), ("AD", "AD"), ("PD", "PD")):
        for idx, name in zip(labels["index"], labels["name"]):
            rows.append({"index": idx, "name": name, "effect": effect, "cohort": cohort,
                         "volume_change_pct": -0.5 + 0.001 * idx, "displacement_mm": 0.1})
    eff = pd.DataFrame(rows)
    at = lambda effect, idx: (eff["effect"] == effect) & (eff["index"] == idx)  # noqa: E731
    for i in range(1, 10):
        eff.loc[at("ageing", i), "volume_change_pct"] = -(31 - i)
    eff.loc[at("ageing", 10), "volume_change_pct"] = 21.0
    eff.loc[at("ageing", 11), ["volume_change_pct", "displacement_mm"]] = [-2.0, 9.0]
    for i in range(37, 47):
        eff.loc[at("AD", i), "volume_change_pct"] = -10.0
    for i in (*range(71, 79), 21, 22):
        eff.loc[at("PD", i), "volume_change_pct"] = -5.0 if i > 30 else -4.0
    name = dict(zip(labels["index"], labels["name"]))
    truth = {"ageing": [name[i] for i in range(1, 11)], "AD": [name[i] for i in range(37, 47)],
             "PD": [name[i] for i in (*range(71, 79), 21, 22)]}
    # the ranked measure is the signal change; the volume change column is a decoy that ranks the
    # last regions first (a ranking by the wrong column misses every truth)
    eff = eff.rename(columns={"volume_change_pct": "signal_change"})
    eff["volume_change_pct"] = 0.01 * eff["index"]
    return eff, truth


def test_truth_tables_of_an_older_simulator_rank_by_volume_change(tmp_path):
    from brainage.apply.explain import read_effects

    eff, truth = _effects_fixture()
    old = eff.drop(columns="volume_change_pct").rename(columns={"signal_change": "volume_change_pct"})
    old.to_csv(tmp_path / "effects.tsv", sep="\t", index=False)
    assert relevant_regions(read_effects(tmp_path / "effects.tsv"), "ageing", 10) == truth["ageing"]
    eff.drop(columns="signal_change").to_csv(tmp_path / "new.tsv", sep="\t", index=False)
    assert relevant_regions(read_effects(tmp_path / "new.tsv"), "ageing", 10)[0] == "Vermis_10"  # decoy: index 116 first


def test_relevant_regions_from_the_simulator_truth():
    eff, truth = _effects_fixture()
    labels = aal_labels()
    assert relevant_regions(eff, "ageing", 10) == truth["ageing"]  # ordered by |change|: 30, 29, ..., 22, +21
    region_11 = labels.set_index("index").at[11, "name"]
    assert region_11 not in relevant_regions(eff, "ageing", 10)  # displaced most, changed little
    assert set(relevant_regions(eff, "AD", 10)) == set(truth["AD"])
    assert set(relevant_regions(eff, "PD", 10)) == set(truth["PD"])
    # a region absent from the saliency grid gives way to the next most changed one (region 11)
    present = [n for n in labels["name"] if n != truth["ageing"][0]]
    assert relevant_regions(eff, "ageing", 10, among=present) == truth["ageing"][1:] + [labels["name"][10]]
    with pytest.raises(ValueError, match="no effect 'DLB'"):
        relevant_regions(eff, "DLB", 10)


def test_truth_checks_on_a_known_answer():
    """Each group is checked against its own effect; precision and p-value known in advance."""
    from scipy.stats import hypergeom

    eff, truth = _effects_fixture()
    labels = aal_labels()
    names = labels["name"].tolist()
    others = [n for n in names if n not in set(truth["ageing"]) | set(truth["AD"]) | set(truth["PD"])]

    def group_table(group: str, top: list[str], n: int = 5) -> pd.DataFrame:
        order = top + [x for x in names if x not in top]  # the ranking: ``top`` first
        mean = pd.Series(np.linspace(1.0, 0.0, len(order)), index=order)
        table = labels[["index", "name", "hemisphere"]].copy()
        table["mean"] = table["name"].map(mean)
        table["rank"] = table["mean"].rank(ascending=False, method="min").astype(int)
        table.insert(0, "group", group)
        table.insert(1, "n", n)
        return table

    aal = pd.concat([
        group_table("HC_60-80_F", truth["ageing"][:7] + others[:3]),  # 7 of the ageing top 10
        group_table("HC", truth["ageing"][:2] + truth["AD"][:5] + others[:3]),  # AD regions do not count for HC
        group_table("AD", truth["AD"][:2] + others[:8]),
        group_table("PD-minus-HC", truth["PD"]),  # difference maps: against the disease effect
        group_table("AD-matchedHC", truth["ageing"]),  # the baseline of a difference: not checked
    ], ignore_index=True)
    checks = truth_checks(aal, eff, k=10, draws=20000, seed=1).set_index("group")
    assert list(checks.index) == ["HC_60-80_F", "HC", "AD", "PD-minus-HC"]
    assert list(checks["effect"]) == ["ageing", "ageing", "AD", "PD"]
    np.testing.assert_allclose(checks["precision"], [0.7, 0.2, 0.2, 1.0])
    assert checks.at["HC", "relevant"].split(";") == truth["ageing"]
    # random rankings: hits in the top 10 are hypergeometric (116 regions, 10 relevant, 10 drawn)
    assert checks["random_mean"].iloc[0] == pytest.approx(10 / 116, abs=0.005)  # mean hits 10 * 10 / 116, over k = 10
    tail = hypergeom(116, 10, 10).sf(1)  # P(>= 2 hits) ~ 0.19
    assert checks.at["AD", "p_value"] == pytest.approx(tail, abs=0.01)
    assert checks.at["HC_60-80_F", "p_value"] < 1e-3 and checks.at["PD-minus-HC", "p_value"] < 1e-3


# ---------------------------------------------------------------------------- the rule's library call


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradram", "gradient"])
def test_run_saliency_files_against_independent_recomputation(atlas_root, tmp_path, method):
    """Per-subject maps, group means, difference map and AAL116 table re-derived from the files."""
    from brainage.data.cache import build_cache
    from brainage.apply.explain import run_saliency, saliency_file
    from brainage.core.grids import template_grid
    from brainage.models.networks import build_age_model

    grid = template_grid(4)
    torch.manual_seed(0)
    arch = {"backbone": "resnet18", "width": 0.25, "conv1_stride": 2, "norm": "batch"}
    model = build_age_model(arch, 55.0, 15.0)
    meta = {"name": "tiny", "kind": "e2e", "architecture": arch, "grid_res": 4.0, "grid_shape": list(grid.shape),
            "age": {"train_mean": 55.0, "train_sd": 15.0}, "preprocess": {}}
    model_path = tmp_path / "models" / "tiny" / "model.pt"
    model_path.parent.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "meta": meta}, model_path)

    people = pd.DataFrame({
        "participant_id": ["sub-h2", "sub-h3", "sub-h4", "sub-a1", "sub-a2"],
        "dataset": "sim", "cohort": ["HC", "HC", "HC", "AD", "AD"],
        "age": [70.0, 74.0, 50.0, 73.0, 69.0], "sex": ["F", "M", "M", "F", "M"],
    })  # no PD subject: the PD groups are empty and must be skipped cleanly
    for col in ("adas_cog11", "updrs3", "hoehn_yahr"):
        people[col] = np.nan
    splits = people[["participant_id", "dataset", "cohort", "age", "sex"]].copy()
    splits["split"] = ["test", "test", "train", "AD", "AD"]
    people.to_csv(tmp_path / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    splits.to_csv(tmp_path / "splits.tsv", sep="\t", index=False)
    rng = np.random.default_rng(0)
    paths = {}
    for pid in people["participant_id"]:
        paths[pid] = tmp_path / f"{pid}.nii.gz"
        nib.Nifti1Image(rng.uniform(0, 1, grid.shape).astype(np.float32), grid.affine).to_filename(str(paths[pid]))
    build_cache(paths, splits, tmp_path / "volumes.npy", tmp_path / "index.tsv")
    out = {k: tmp_path / "sal" / v for k, v in dict(
        subjects="subjects", groups="groups", groups_tsv="groups.tsv", aal116="aal116.tsv",
        matches="matched.tsv", truth="truth.tsv").items()}
    effects, truth_sets = _effects_fixture()
    effects.to_csv(tmp_path / "effects_aal116.tsv", sep="\t", index=False)
    run_saliency(model_path, tmp_path / "participants.tsv", tmp_path / "splits.tsv", tmp_path / "volumes.npy",
                 tmp_path / "index.tsv", resource_paths(atlas_root, 4), out, hc_splits=["test"], batch_size=3, random_draws=200,
                 truth_effects=tmp_path / "effects_aal116.tsv", device="cpu", method=method)

    def load(path):
        img = nib.load(str(path))
        assert img.shape == grid.shape and np.allclose(img.affine, grid.affine) and int(img.header["sform_code"]) == 4
        return img.get_fdata()

    subj = {pid: load(out["subjects"] / saliency_file("4", participant_id=pid, method=method))
            for pid in people["participant_id"] if pid != "sub-h4"}
    assert not (out["subjects"] / saliency_file("4", participant_id="sub-h4", method=method)).exists()  # a training subject
    for m in subj.values():
        assert m.min() == pytest.approx(0, abs=1e-4) and m.max() == pytest.approx(1, abs=1e-4)
    # each stored map is the Grad-RAM (the input gradient) of the normalised cached volume
    from brainage.data.cache import CachedVolumes

    cache = CachedVolumes(tmp_path / "volumes.npy", tmp_path / "index.tsv")
    one = torch.from_numpy(cache.volume("sub-h2"))[None, None]
    ref = (grad_ram(model.eval(), one) if method == "gradram" else input_gradient(model.eval(), one))[0].numpy()
    if method == "gradram":
        np.testing.assert_allclose(subj["sub-h2"], ref, atol=1e-4)
    else:
        # this random network's float32 input gradient of a noise volume varies by up to 8 % of its
        # maximum between a batch of 3 and a batch of 1 (cancelling paths; exact in float64, see
        # test_input_gradient_matches_the_jacobian_per_subject; 3e-7 for the demo's trained models)
        assert np.corrcoef(subj["sub-h2"].ravel(), ref.ravel())[0, 1] > 0.99
        assert np.abs(subj["sub-h2"] - ref).max() < 0.1

    group = lambda g: load(out["groups"] / saliency_file("4", group=g, method=method))  # noqa: E731
    np.testing.assert_allclose(group("HC_60-80"), (subj["sub-h2"] + subj["sub-h3"]) / 2, atol=1e-5)
    np.testing.assert_allclose(group("HC_60-80_F"), subj["sub-h2"], atol=1e-5)
    assert not (out["groups"] / saliency_file("4", group="PD", method=method)).exists()
    groups_table = pd.read_csv(out["groups_tsv"], sep="\t").set_index("group")
    assert groups_table.at["PD", "n"] == 0 and groups_table.at["PD-minus-HC", "n"] == 0
    np.testing.assert_allclose(group("AD"), (subj["sub-a1"] + subj["sub-a2"]) / 2, atol=1e-5)
    # AD (73 F, 69 M) matched oldest first: sub-a1 -> sub-h3 (74), sub-a2 -> sub-h2 (70)
    pairs = pd.read_csv(out["matches"], sep="\t").set_index("participant_id")
    assert pairs.at["sub-a1", "control_id"] == "sub-h3" and pairs.at["sub-a2", "control_id"] == "sub-h2"
    expected_diff = (subj["sub-a1"] + subj["sub-a2"]) / 2 - (subj["sub-h3"] + subj["sub-h2"]) / 2
    np.testing.assert_allclose(group("AD-minus-HC"), expected_diff, atol=1e-5)
    assert (out["groups"] / "group-AD-minus-HC_saliency.png").stat().st_size > 10_000

    # AAL116 table of the HC group: region means by an explicit loop over the atlas labels
    atlas = np.asanyarray(nib.load(str(atlas_root / "tpl-MNI152NLin2009cAsym_res-4_atlas-AAL116_dseg.nii.gz")).dataobj)
    hc = group("HC")
    table = pd.read_csv(out["aal116"], sep="\t")
    hc_table = table[table["group"] == "HC"].set_index("index")
    assert len(hc_table) == 116
    for idx in (1, 37, 42, 71, 116):
        voxels = hc[atlas == idx]
        if voxels.size:
            assert hc_table.at[idx, "mean"] == pytest.approx(voxels.mean(), abs=1e-5)
    means = hc_table["mean"]
    assert hc_table.at[means.idxmax(), "rank"] == 1
    listed = set(groups_table.at["HC", "regions_above_threshold"].split(";"))
    assert listed == set(hc_table.index[means / means.max() > 0.8].map(hc_table["name"]))
    check = pd.read_csv(out["truth"], sep="\t").set_index("group")
    present = set(hc_table.loc[means.notna(), "name"])
    truth = [n for n in truth_sets["ageing"] if n in present]  # regions 1..10 are large: all on the 4 mm grid
    assert truth == truth_sets["ageing"]
    top10 = means.sort_values(ascending=False).index[:10].map(hc_table["name"])
    assert check.at["HC", "precision"] == pytest.approx(len(set(top10) & set(truth)) / 10)
    assert check.at["AD", "effect"] == "AD" and "AD-matchedHC" not in check.index and "PD" not in check.index


@pytest.mark.parametrize("backbone, stride, res, expected", [
    ("resnet18", 2, 4.0, "layer2"),  # the demo's 4 mm models: layer4 would be 2 x 2 x 2
    ("resnet18", 1, 2.0, "layer4"),  # the study's 2 mm grid keeps layer4 (6 x 8 x 6)
])
def test_auto_target_layer_keeps_six_voxels_per_axis(backbone, stride, res, expected):
    from brainage.apply.explain import auto_target_layer, block_shapes
    from brainage.core.grids import template_grid
    from brainage.models.networks import build_age_model

    model = build_age_model({"backbone": backbone, "width": 0.125, "conv1_stride": stride})
    shape = template_grid(res).shape
    # independent expectation: ResNet halves the grid (ceil) at conv1 (if stride 2), the max-pool,
    # and layers 2-4
    size = lambda n, halvings: n if halvings == 0 else size(-(-n // 2), halvings - 1)  # noqa: E731
    first = (stride == 2) + 1
    expected_shapes = {f"layer{k}": tuple(size(n, first + max(0, k - 1)) for n in shape) for k in range(1, 5)}
    assert dict(block_shapes(model, shape)) == expected_shapes
    assert auto_target_layer(model, shape) == expected
    deeper = f"layer{int(expected[-1]) + 1}"
    assert min(expected_shapes[expected]) >= 6 and (deeper not in expected_shapes or min(expected_shapes[deeper]) < 6)


def test_truth_checks_holm_corrects_across_groups():
    from statsmodels.stats.multitest import multipletests

    from brainage.apply.explain import truth_checks

    regions = [f"R{i}" for i in range(30)]
    rng = np.random.default_rng(0)
    rows = []
    for g in ("HC_20-40", "HC_60-80", "AD"):
        means = rng.random(30)
        ranks = (-means).argsort().argsort() + 1
        rows += [{"group": g, "n": 5, "index": i + 1, "name": r, "mean": float(v), "rank": int(k)}
                 for i, (r, v, k) in enumerate(zip(regions, means, ranks))]
    effects = pd.DataFrame([{"index": i + 1, "name": r, "effect": e, "signal_change": -10 * float(rng.random())}
                            for e in ("ageing", "AD", "PD") for i, r in enumerate(regions)])
    table = truth_checks(pd.DataFrame(rows), effects, k=5, draws=200, seed=1)
    assert len(table) == 3
    np.testing.assert_allclose(table["p_holm"], multipletests(table["p_value"], method="holm")[1])


def test_a_constant_map_ranks_nothing():
    """A group whose map is 0 in every region (Grad-RAM 0 in every subject) gets no precision
    and no p-value, and leaves the other groups' Holm correction to the groups that rank."""
    from statsmodels.stats.multitest import multipletests

    from brainage.apply.explain import truth_checks

    regions = [f"R{i}" for i in range(30)]
    effects = pd.DataFrame([{"index": i + 1, "name": r, "effect": e, "signal_change": -float(30 - i)}
                            for e in ("ageing", "AD", "PD") for i, r in enumerate(regions)])
    rng = np.random.default_rng(3)
    rows = []
    for g, means in (("HC", np.zeros(30)), ("AD", np.linspace(1, 0, 30)), ("PD", rng.random(30))):
        ranks = pd.Series(means).rank(ascending=False, method="min").astype(int)
        rows += [{"group": g, "n": 5, "index": i + 1, "name": r, "mean": float(v), "rank": int(k)}
                 for i, (r, v, k) in enumerate(zip(regions, means, ranks))]
    table = truth_checks(pd.DataFrame(rows), effects, k=5, draws=500, seed=1).set_index("group")
    # ties broken by index would put R0-R4, the truth's top 5, first: precision 1.0 for nothing
    assert np.isnan(table.at["HC", "precision"]) and np.isnan(table.at["HC", "p_value"])
    assert np.isnan(table.at["HC", "p_holm"])
    assert table.at["AD", "precision"] == 1.0
    ranked = table.loc[["AD", "PD"]]
    np.testing.assert_allclose(ranked["p_holm"], multipletests(ranked["p_value"], method="holm")[1])


def test_group_png_is_the_same_with_garbage_collection_frozen(atlas_root, tmp_path, monkeypatch):
    """gc_frozen only changes how long nilearn's gc.collect() calls take: the PNG's pixels are
    those of a plot with garbage collection as is, and nothing stays frozen afterwards."""
    import contextlib
    import gc

    import matplotlib.image as mpimg

    # gc_frozen is patched where plot_group_map looks it up: in its own module
    from brainage.apply.explain import plots

    paths = resource_paths(atlas_root, 4)
    template = nib.load(str(paths["template"]))
    mask = np.asanyarray(nib.load(str(paths["mask"])).dataobj) > 0
    data = np.random.default_rng(0).random(mask.shape).astype(np.float32)
    img = nib.Nifti1Image(data, template.affine)
    plots.plot_group_map(img, template, mask, "map", tmp_path / "frozen.png")
    assert gc.get_freeze_count() == 0
    monkeypatch.setattr(plots, "gc_frozen", contextlib.nullcontext)
    plots.plot_group_map(img, template, mask, "map", tmp_path / "as_is.png")
    frozen, as_is = mpimg.imread(tmp_path / "frozen.png"), mpimg.imread(tmp_path / "as_is.png")
    assert frozen.shape == as_is.shape and frozen.shape[0] > 300
    np.testing.assert_array_equal(frozen, as_is)
