"""One scan check for `brainage manifest --check` and preprocessing: what one refuses, so does the other."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainage.io import InputError
from brainage.preprocess import load_t1w
from brainage.scans import scan_problem

SCAN = Path(__file__).resolve().parent / "data" / "ixi" / "IXI012-HH-1211-T1_ds.nii.gz"


def _like_scan(path: Path, data=None, affine=None) -> Path:
    img = nib.load(SCAN)
    data = np.asarray(img.dataobj, dtype=np.float32) if data is None else data
    nib.Nifti1Image(data, img.affine if affine is None else affine).to_filename(str(path))
    return path


def _voxels(mm: float) -> np.ndarray:
    affine = nib.load(SCAN).affine.copy()
    affine[:3, :3] *= mm / np.linalg.norm(affine[:3, :3], axis=0)
    return affine


BAD = {
    # name: (writer, words of the reason)
    "truncated gzip": (lambda p: (p.write_bytes(SCAN.read_bytes()[:200_000]), p)[1], "data cannot be read"),
    "all NaN": (lambda p: _like_scan(p, np.full(nib.load(SCAN).shape, np.nan, np.float32)), "NaN/Inf"),
    "10 mm voxels": (lambda p: _like_scan(p, affine=_voxels(10.0)), "voxel size 10x10x10 mm outside"),
    "all zeros": (lambda p: _like_scan(p, np.zeros(nib.load(SCAN).shape, np.float32)), "all zeros"),
    "constant": (lambda p: _like_scan(p, np.full(nib.load(SCAN).shape, 7.0, np.float32)), "constant"),
    "4D": (lambda p: _like_scan(p, np.ones((20, 20, 20, 3), np.float32)), "not a 3D image"),
    "tiny": (lambda p: _like_scan(p, np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)), "field of view"),
}


def test_a_real_scan_passes():
    assert scan_problem(SCAN) is None


@pytest.mark.parametrize("case", list(BAD))
def test_check_and_preprocessing_refuse_the_same_scans(case, tmp_path):
    make, words = BAD[case]
    path = make(tmp_path / "t1w.nii.gz")
    problem = scan_problem(path)
    assert problem is not None and words in problem and str(path) in problem
    with pytest.raises(InputError):  # preprocessing's own reading refuses it too
        load_t1w(path, "sub-x")
