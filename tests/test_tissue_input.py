"""Tissue-map inputs (``inputs: tissue``): the network's torch tissue maps equal the classical
model's numpy ones, a tissue network trains and explains, and its model.pt round-trips."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainage.data.cache import normalise_intensity
from brainage.models.classical import tissue_maps
from brainage.models.files import load_model, save_model
from brainage.models.networks import TissueInput, architecture_of, build_age_model
from brainage.models.spec import resolve_spec, source_mismatch
from synthetic_volumes import synthetic_volume

REAL = sorted((Path(__file__).parent / "data" / "ixi").glob("*.nii.gz"))
TISSUE = {"backbone": "resnet18", "grid": 4, "loss": "l1", "batch_size": 4, "epochs": 1, "width": 0.125,
          "conv1_stride": 2, "inputs": "tissue"}


def _synthetic(ages=(25.0, 55.0, 85.0), shape=(20, 24, 20)) -> np.ndarray:
    rng = np.random.default_rng(0)
    # as the cache holds them: normalised, float16
    return np.stack([normalise_intensity(synthetic_volume(a, shape, rng)) for a in ages]).astype(np.float16)


def _torch_maps(volumes: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return TissueInput()(torch.from_numpy(np.asarray(volumes, np.float32))[:, None]).double().numpy()


def test_torch_tissue_maps_equal_the_classical_ones_on_synthetic_volumes():
    volumes = _synthetic()
    ours = _torch_maps(volumes)  # one batch of three subjects
    theirs = np.stack([tissue_maps(v.astype(np.float32)) for v in volumes])
    assert ours.shape == theirs.shape == (3, 3, 20, 24, 20)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.skipif(not REAL, reason="tests/data/ixi holds no real heads")
def test_torch_tissue_maps_equal_the_classical_ones_on_real_heads():
    """Real T1w histograms (whole IXI heads at 2 mm, 120 x 120 x 90), two subjects in one batch."""
    volumes = np.stack([normalise_intensity(np.asanyarray(nib.load(p).dataobj, dtype=np.float32)) for p in REAL[:2]])
    volumes = volumes.astype(np.float16)
    ours = _torch_maps(volumes)
    for k, volume in enumerate(volumes):
        np.testing.assert_allclose(ours[k], tissue_maps(volume.astype(np.float32)), atol=1e-5, rtol=0)
    # three tissues really found: each is the most probable class somewhere in the brain
    brain = volumes[0] > 0
    assert set(np.unique(ours[0].argmax(axis=0)[brain])) == {0, 1, 2}


def test_tissue_maps_of_empty_and_tiny_brains_are_csf():
    volumes = np.zeros((3, 6, 7, 5), np.float32)
    volumes[1, 2, 3, 1:3] = [0.4, 0.9]  # two brain voxels: too few to split
    volumes[2] = np.random.default_rng(1).uniform(0, 1, (6, 7, 5))
    ours = _torch_maps(volumes)
    for k in range(3):
        np.testing.assert_allclose(ours[k], tissue_maps(volumes[k]), atol=1e-5, rtol=0)
    assert (ours[:2, 0] == 1).all() and np.isfinite(ours).all()


def test_tissue_maps_when_the_start_quantiles_coincide():
    """60 % of the brain at one intensity: the 10 and 50 % quantiles are equal, the CSF mean then
    overtakes the GM one (the means leave their order), and the general round takes over."""
    rng = np.random.default_rng(2)
    volumes = np.zeros((2, 8, 9, 10), np.float32)
    for k, low in enumerate((0.5, 0.3)):
        flat = volumes[k].reshape(-1)
        idx = rng.permutation(flat.size)[:600]
        flat[idx[:360]] = low
        flat[idx[360:]] = rng.uniform(0.6, 1.0, 240)
    ours = _torch_maps(volumes)
    for k in range(2):
        np.testing.assert_allclose(ours[k], tissue_maps(volumes[k]), atol=1e-5, rtol=0)


def test_a_subjects_maps_do_not_depend_on_its_batch():
    volumes = _synthetic()
    together = _torch_maps(volumes)
    alone = np.concatenate([_torch_maps(volumes[k : k + 1]) for k in range(3)])
    np.testing.assert_array_equal(together, alone)


def _tissue_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_age_model(architecture_of(resolve_spec(TISSUE)), age_mean=55.0, age_sd=20.0)


def test_a_tissue_network_sees_three_channels_and_keeps_its_blocks():
    model = _tissue_model()
    assert model.encoder.conv1.in_channels == 3
    assert isinstance(model.encoder.inputs, TissueInput)
    sfcn = build_age_model({"backbone": "sfcn", "width": 0.125, "inputs": "tissue"})
    assert sfcn.encoder.features[0][0].in_channels == 3
    from brainage.apply.explain.saliency import auto_target_layer, block_shapes

    # the saliency code probes the encoder with a one-channel volume
    assert [name for name, _ in block_shapes(model, (20, 24, 20))] == ["layer1", "layer2", "layer3", "layer4"]
    assert auto_target_layer(sfcn, (20, 24, 20))


def test_a_tissue_network_trains_one_step_and_its_saliency_is_finite():
    from brainage.apply.explain.saliency import grad_ram, input_gradient

    model = _tissue_model().train()
    x = torch.from_numpy(_synthetic((25.0, 45.0, 65.0, 85.0)).astype(np.float32))[:, None]
    ages = torch.tensor([25.0, 45.0, 65.0, 85.0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = torch.nn.functional.l1_loss(model(x), ages)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before["encoder.conv1.weight"], model.state_dict()["encoder.conv1.weight"])
    maps = grad_ram(model, x[:2])
    assert torch.isfinite(maps).all() and maps.amax() > 0
    # the gradient flows back through the tissue maps to the intensities
    grad = input_gradient(model, x[:2])
    assert torch.isfinite(grad).all() and (grad[:, x[0, 0] > 0] > 0).any()


def test_a_tissue_model_file_round_trips(tmp_path):
    model = _tissue_model(3).eval()
    x = torch.from_numpy(_synthetic().astype(np.float32))[:, None]
    meta = {"name": "t", "kind": "e2e", "architecture": architecture_of(resolve_spec(TISSUE)),
            "age": {"train_mean": 55.0, "train_sd": 20.0}}
    assert meta["architecture"]["inputs"] == "tissue"
    save_model(model.state_dict(), meta, tmp_path / "model.pt")
    loaded, loaded_meta = load_model(tmp_path / "model.pt")
    assert loaded_meta["architecture"]["inputs"] == "tissue"
    assert isinstance(loaded.encoder.inputs, TissueInput) and loaded.encoder.conv1.in_channels == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_a_model_file_from_before_inputs_loads_as_intensity(tmp_path):
    """model.pt files written before ``inputs`` and ``bin_width`` existed: the dataclass defaults."""
    torch.manual_seed(0)
    model = build_age_model({"backbone": "resnet18", "width": 0.125, "conv1_stride": 2}).eval()
    old = {"backbone": "resnet18", "width": 0.125, "conv1_stride": 2, "norm": "batch"}
    save_model(model.state_dict(), {"kind": "e2e", "architecture": old, "age": {"train_mean": 0.0, "train_sd": 1.0}},
               tmp_path / "model.pt")
    loaded, _ = load_model(tmp_path / "model.pt")
    assert loaded.encoder.conv1.in_channels == 1 and not hasattr(loaded.encoder, "inputs")
    x = torch.randn(2, 1, 20, 24, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_init_from_is_refused_across_input_kinds():
    source = {"kind": "e2e", "grid_res": 4.0, "architecture": architecture_of(resolve_spec({**TISSUE, "inputs": "intensity"}))}
    problem = source_mismatch(TISSUE, source)
    assert problem == "inputs tissue here, intensity in the source"
    assert source_mismatch({**TISSUE, "inputs": "intensity"}, source) is None
    # an old source without the key is an intensity network
    old = {**source, "architecture": {k: v for k, v in source["architecture"].items() if k not in ("inputs", "bin_width")}}
    assert source_mismatch(TISSUE, old) == problem


def test_inputs_key_is_checked():
    assert resolve_spec({**TISSUE, "inputs": "intensity"})["inputs"] == "intensity"
    assert resolve_spec({k: v for k, v in TISSUE.items() if k != "inputs"})["inputs"] == "intensity"
    with pytest.raises(ValueError, match="inputs must be one of intensity, tissue"):
        resolve_spec({**TISSUE, "inputs": "segmentation"})
