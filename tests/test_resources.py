"""The packaged template, brain mask and AAL116 on the study's grids."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from skimage.measure import block_reduce

from brainage.data.atlases import load_template_1mm, resource_paths
from brainage.core.grids import TEMPLATE_AFFINE_1MM, downsample_from_1mm, template_grid


def _load(path):
    img = nib.load(path)
    return np.asanyarray(img.dataobj), img


@pytest.mark.parametrize("res, shape", [(1, (193, 229, 193)), (2, (96, 114, 96)), (4, (48, 57, 48))])
def test_grids_have_the_study_sizes(atlas_root, res, shape):
    for kind in ("template", "mask", "aal"):
        data, img = _load(resource_paths(atlas_root, res)[kind])
        assert data.shape == shape
        assert np.allclose(np.abs(np.diag(img.affine)[:3]), res)
        assert int(img.header["sform_code"]) == 4  # MNI152


def test_coarse_voxel_centres_are_block_centres():
    # A 2 mm voxel centre is the mean of the 8 one-millimetre voxel centres it covers.
    fine = TEMPLATE_AFFINE_1MM @ np.array([[0, 1, 0, 1, 0, 1, 0, 1], [0, 0, 1, 1, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1], [1] * 8])
    coarse = template_grid(2).affine @ np.array([0, 0, 0, 1])
    assert np.allclose(fine[:3].mean(axis=1), coarse[:3])


def test_downsampling_is_the_block_mean():
    template, _ = load_template_1mm()
    expected = block_reduce(template[:192, :228, :192], (2, 2, 2), np.mean)
    assert np.allclose(downsample_from_1mm(template, 2), expected, atol=1e-4)


def test_all_116_labels_survive_on_the_1mm_grid_inside_the_brain(atlas_root):
    aal, _ = _load(resource_paths(atlas_root, 1)["aal"])
    mask, _ = _load(resource_paths(atlas_root, 1)["mask"])
    assert set(np.unique(aal)) == set(range(117))
    inside = (mask[aal > 0] > 0).mean()
    assert inside >= 0.95, f"only {inside:.3f} of AAL voxels inside the template brain mask"


def test_aal_labels_table(atlas_root):
    table = pd.read_csv(resource_paths(atlas_root, 1)["labels"], sep="\t")
    assert list(table["index"]) == list(range(1, 117))
    assert table.loc[table["index"] == 37, "name"].item() == "Hippocampus_L"
    assert set(table["hemisphere"]) == {"L", "R", "midline"}
    # left labels are in the left hemisphere (x < 0 in MNI) on the resampled atlas
    aal, img = _load(resource_paths(atlas_root, 2)["aal"])
    ijk = np.argwhere(aal == 37).mean(axis=0)
    assert (img.affine @ np.append(ijk, 1))[0] < -10


def test_template_brain_volume_is_plausible(atlas_root):
    mask, img = _load(resource_paths(atlas_root, 2)["mask"])
    volume_ml = mask.astype(bool).sum() * 8 / 1000
    assert 1400 < volume_ml < 2100
