"""One scan check for `brainage manifest --check` and preprocessing: what one refuses, so does the other."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainage.core.io import InputError
from brainage.preprocess import load_t1w
from brainage.core.scans import scan_problem

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


def test_pipeline_entry_excludes_a_bad_scan_with_its_reason(tmp_path):
    import json

    import pandas as pd

    from brainage.core.paths import preprocess_outputs
    from brainage.preprocess import preprocess_or_exclude
    from brainage.preprocess.qc import write_cohort_qc

    bad = BAD["truncated gzip"][0](tmp_path / "sub-bad_T1w.nii.gz")
    out = tmp_path / "sub-bad" / "anat"

    qc = preprocess_or_exclude(bad, out, "sub-bad", [2, 4])

    paths = preprocess_outputs(out, "sub-bad", [2, 4])
    assert all(p.is_file() for p in paths.values())  # every output the rule declares
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())  # no temporary left
    on_disk = json.loads(paths["qc_json"].read_text())
    assert on_disk == qc and on_disk["passed"] is False and on_disk["excluded"] is True
    assert not np.asarray(nib.load(paths["res4"]).dataobj).any()  # no data of the subject downstream

    good = tmp_path / "sub-ok.json"
    good.write_text(json.dumps({"participant_id": "sub-ok", "passed": True, "reasons": [], "ncc": 0.8,
                                "brain_volume_ml": 1200.0,
                                "affine": {"determinant": 1.0, "scales": [1, 1, 1], "rotation_deg": 2.0}}))
    write_cohort_qc([paths["qc_json"], good], tmp_path / "qc.tsv", tmp_path / "excluded.tsv")
    excluded = pd.read_csv(tmp_path / "excluded.tsv", sep="\t").to_dict("records")
    assert len(excluded) == 1 and excluded[0]["participant_id"] == "sub-bad"
    assert excluded[0]["reason"].startswith("bad input: sub-bad: ") and "cannot read image" in excluded[0]["reason"]


@pytest.mark.slow
def test_the_pipeline_excludes_a_bad_scan_and_goes_on(tmp_path):
    import shutil
    import subprocess
    import sys

    import pandas as pd

    from brainage.data import manifest

    repo = Path(__file__).resolve().parents[1]
    ixi = repo / "tests" / "data" / "ixi"
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("IXI012-HH-1211-T1_ds.nii.gz", "IXI014-HH-1236-T1_ds.nii.gz"):
        shutil.copy(ixi / name, scans / name)
    (scans / "IXI048-HH-1326-T1_ds.nii.gz").write_bytes((ixi / "IXI048-HH-1326-T1_ds.nii.gz").read_bytes()[:200_000])
    table = tmp_path / "participants.tsv"
    manifest.write_manifest(manifest.from_ixi(ixi / "demographics.csv", scans), table, check_files=False)
    work = tmp_path / "work"
    work.mkdir()

    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "results/qc/excluded.tsv", "-s", str(repo / "Snakefile"), "-d", str(work),
         "--cores", "2", "--configfile", str(repo / "config" / "config.yaml"), "--config",
         f"cohort={{source: manifest, manifest: {table}}}", "preprocess={grids: [4]}"],
        capture_output=True, text=True, timeout=1200)

    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    excluded = pd.read_csv(work / "results" / "qc" / "excluded.tsv", sep="\t").set_index("participant_id")
    assert "sub-IXI048" in excluded.index
    assert excluded.at["sub-IXI048", "reason"].startswith("bad input: sub-IXI048: ")
    qc = pd.read_csv(work / "results" / "qc" / "qc.tsv", sep="\t").set_index("participant_id")
    assert list(qc.index) == ["sub-IXI012", "sub-IXI014", "sub-IXI048"]
    assert qc.loc[["sub-IXI012", "sub-IXI014"], "ncc"].notna().all()  # the others were preprocessed
