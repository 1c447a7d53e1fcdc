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
