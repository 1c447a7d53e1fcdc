"""Networks: output shapes at the 4 mm grid, Grad-RAM's layer4, and the model file round trip."""

import pytest
import torch

from brainage.core.grids import template_grid
from brainage.models.networks import build_age_model

SHAPE = template_grid(4).shape  # 48 x 57 x 48


@pytest.mark.parametrize("backbone,features", [("resnet18", 512), ("resnet50", 2048), ("resnet101", 2048), ("sfcn", 64)])
def test_output_shapes_at_4mm(backbone, features):
    # the study's networks (width 1): feature width of the last block, from the modules themselves
    full = build_age_model({"backbone": backbone})
    last_conv = [m for m in full.encoder.layer4.modules() if isinstance(m, torch.nn.Conv3d)][-1]
    assert last_conv.out_channels == features == full.head.in_features
    # forward at the 4 mm grid with the same depth at quarter width (CPU test budget)
    torch.manual_seed(0)
    model = build_age_model({"backbone": backbone, "width": 0.25}, age_mean=50.0, age_sd=10.0).eval()
    x = torch.randn(2, 1, *SHAPE)
    with torch.no_grad():
        ages = model(x)
        feats = model.features(x)
    assert ages.shape == (2,)
    assert feats.shape == (2, features // 4)
    assert torch.isfinite(ages).all()


def test_age_scale_buffers_shift_output():
    torch.manual_seed(0)
    model = build_age_model({"backbone": "resnet18", "width": 0.25}, age_mean=0.0, age_sd=1.0).eval()
    x = torch.randn(1, 1, 24, 28, 24)
    with torch.no_grad():
        z = model(x)
        model.age_mean.fill_(60.0)
        model.age_sd.fill_(15.0)
        assert torch.allclose(model(x), z * 15.0 + 60.0, atol=1e-5)


# norm layers of a MedicalNet ResNet: conv1's, two (basic) or three (bottleneck) per block, and one
# per downsample shortcut (shortcut B: the first block of stages 2-4, and of stage 1 for bottlenecks)
@pytest.mark.parametrize("backbone,n_norms", [("resnet18", 1 + 2 * 8 + 3), ("resnet50", 1 + 3 * 16 + 4)])
@pytest.mark.parametrize("norm,layer", [("group", torch.nn.GroupNorm), ("instance", torch.nn.InstanceNorm3d)])
def test_per_sample_norm_replaces_every_batchnorm(backbone, n_norms, norm, layer):
    from brainage.models.networks import build_encoder, group_count

    reference = build_encoder(backbone, width=0.25, norm="batch")
    bn_channels = [m.num_features for m in reference.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert len(bn_channels) == n_norms
    encoder = build_encoder(backbone, width=0.25, norm=norm)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in encoder.modules())
    new = [m for m in encoder.modules() if isinstance(m, layer)]
    # same layers, same places, same channel counts as the BatchNorm network
    assert [m.num_channels if norm == "group" else m.num_features for m in new] == bn_channels
    if norm == "group":
        assert all(m.num_channels % m.num_groups == 0 for m in new)
        assert {m.num_groups for m in new} == {8}  # 16..512 channels at width 0.25
    # no parameter lost or added apart from BatchNorm's running-stat buffers
    assert sum(p.numel() for p in encoder.parameters()) == sum(p.numel() for p in reference.parameters())
    assert not any("running" in k for k in encoder.state_dict())


def test_group_count_divides():
    from brainage.models.networks import group_count

    assert [group_count(c) for c in (4, 8, 12, 16, 19, 20, 64, 6)] == [4, 8, 6, 8, 1, 5, 8, 6]


def test_group_norm_network_is_per_sample():
    """In training mode the output of one volume does not depend on the rest of the batch."""
    torch.manual_seed(0)
    model = build_age_model({"backbone": "resnet18", "width": 0.125, "conv1_stride": 2, "norm": "group"}).train()
    x = torch.randn(3, 1, 20, 24, 20)
    with torch.no_grad():
        whole = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(whole, alone, rtol=1e-5, atol=1e-5)


# --- the soft-label head (loss: kl) and the new model keys ---

KL = {"backbone": "resnet18", "grid": 4, "loss": "kl", "batch_size": 4, "epochs": 1, "width": 0.125, "conv1_stride": 2}


def test_soft_label_model_outputs_expected_ages_and_round_trips(tmp_path):
    from brainage.models.files import load_model, save_model
    from brainage.models.networks import AgeBinsHead, architecture_of
    from brainage.models.spec import resolve_spec

    arch = architecture_of(resolve_spec(KL))
    assert arch["bin_width"] == 1.0 and arch["inputs"] == "intensity"
    torch.manual_seed(0)
    model = build_age_model(arch, age_mean=50.0, age_sd=15.0).eval()
    assert isinstance(model.head, AgeBinsHead) and model.head.linear.out_features == 120
    model.head.set_age_range(30.2, 70.9)
    x = torch.randn(3, 1, 20, 24, 20)
    with torch.no_grad():
        logits, ages = model(x, bin_logits=True), model(x)
        torch.testing.assert_close(ages, model.head.expected_age(logits))
        torch.testing.assert_close(model.standardised(x), (ages - 50.0) / 15.0)
    assert logits.shape == (3, 120) and ((ages > 28) & (ages < 73)).all()
    meta = {"kind": "e2e", "architecture": arch, "head": model.head.shape_meta(), "age": {"train_mean": 50.0, "train_sd": 15.0}}
    save_model(model.state_dict(), meta, tmp_path / "model.pt")
    loaded, _ = load_model(tmp_path / "model.pt")
    assert torch.equal(loaded.head.active, model.head.active)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ages, rtol=0, atol=0)
    with pytest.raises(ValueError, match="only a soft-label head"):
        build_age_model({"backbone": "resnet18", "width": 0.125})(x, bin_logits=True)


def test_soft_label_keys_resolve_and_are_checked():
    from brainage.models.kinds import E2E, kind_of
    from brainage.models.spec import entry_problems, resolve_spec

    spec = resolve_spec({**KL, "soft_label": {"sigma": 2.0}})
    assert kind_of(spec) is E2E
    assert spec["soft_label"] == {"bin_width": 1.0, "sigma": 2.0}
    assert spec["optimiser"]["name"] == "adam" and spec["optimiser"]["lr"] == 1e-3
    assert "soft_label" not in resolve_spec({**KL, "loss": "l1"})  # an L1 model's settings are unchanged
    line = "config models.m.soft_label: only for loss kl (this model: loss l1)"
    assert entry_problems("m", {**KL, "loss": "l1", "soft_label": {}}) == [line]
    with pytest.raises(ValueError, match="soft_label: only for loss kl"):
        resolve_spec({**KL, "loss": "l1", "soft_label": {}})
    assert entry_problems("c", {"backbone": "pca_gpr", "grid": 4, "inputs": "tissue"})[0].startswith(
        "config models.c.inputs: a classical model (pca_gpr) takes no 'inputs'; its settings go under 'classical'")


def test_config_schema_takes_the_new_keys():
    from pathlib import Path

    from brainage.config import resolved_config, schema_problems

    repo = Path(__file__).resolve().parents[1]
    schema = repo / "workflow" / "schemas" / "config.schema.yaml"
    config = resolved_config(root=repo)
    config["models"]["sfcn_kl_tissue"] = {**KL, "backbone": "sfcn", "inputs": "tissue", "soft_label": {"bin_width": 2.0, "sigma": 1.5}}
    assert schema_problems(config, schema) == []
    config["models"]["sfcn_kl_tissue"]["inputs"] = "segmentation"
    assert schema_problems(config, schema)[0].startswith("config models.sfcn_kl_tissue.inputs: 'segmentation' is not one of")


def test_a_soft_label_head_is_not_handed_on_between_end_to_end_models():
    from brainage.models.networks import architecture_of
    from brainage.models.spec import resolve_spec, source_mismatch

    def source(entry, kind):
        return {"kind": kind, "grid_res": 4.0, "architecture": architecture_of(resolve_spec(entry))}

    refused = "a soft-label head (loss kl) is neither handed on to nor taken from an end-to-end model"
    assert refused in source_mismatch(KL, source(KL, "e2e"))
    assert refused in source_mismatch(KL, source({**KL, "loss": "l1"}, "e2e"))
    assert refused in source_mismatch({**KL, "loss": "l1"}, source(KL, "e2e"))
    # only the encoder moves between an RNC model and a soft-label one
    assert source_mismatch(KL, source({**KL, "loss": "rnc"}, "rnc")) is None
    assert source_mismatch({**KL, "loss": "rnc"}, source(KL, "e2e")) is None
    assert source_mismatch({**KL, "loss": "l1"}, source({**KL, "loss": "l1"}, "e2e")) is None
