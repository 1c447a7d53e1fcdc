"""The official IXI download as a user brings it: scans the demographics sheet gives no age
(an empty AGE cell, or no row at all) are left out with one warning, and the rest is a valid
manifest."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from brainage.data import manifest


def _scan(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.arange(24 ** 3, dtype=np.float32).reshape(24, 24, 24), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))


def test_ixi_scans_without_an_age_are_left_out_in_one_warning(tmp_path, caplog):
    scans = tmp_path / "IXI-T1"
    for name in ("IXI002-Guys-0828-T1.nii.gz", "IXI012-HH-1211-T1.nii.gz", "IXI013-HH-1212-T1.nii.gz",
                 "IXI099-IOP-0999-T1.nii.gz"):
        _scan(scans / name)
    sheet = tmp_path / "IXI.csv"
    # IXI013 has a row without an age; IXI099 has no row; IXI050 has a row but no scan
    sheet.write_text("IXI_ID,SEX_ID,AGE\n2,2,35.8\n12,1,38.78\n13,1,\n50,2,61.0\n")
    with caplog.at_level(logging.INFO, logger="brainage.data.manifest"):
        frame = manifest.from_ixi(sheet, scans)
    assert frame["participant_id"].tolist() == ["sub-IXI002", "sub-IXI012"]
    assert manifest.validate(frame) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["IXI: 1 row without a T1w scan in " + str(scans) + ", skipped: IXI050",
                        f"IXI: 2 T1w scans without an age in {sheet}, skipped: IXI013, IXI099"]


def test_cohort_qc_judges_every_subject_against_the_current_thresholds(tmp_path):
    """A threshold set after preprocessing (from what the cohort's heads measured) is the
    verdict of the cohort table, whatever each subject's json recorded at the time it ran;
    a scan excluded as bad input stays excluded."""
    import json

    import pandas as pd

    from brainage.preprocess.qc import QCThresholds, write_cohort_qc

    def qc(pid, ncc, volume, passed, reasons, excluded=False):
        path = tmp_path / f"{pid}.json"
        affine = None if excluded else {"determinant": 1.4, "scales": [1.2, 1.1, 1.05], "rotation_deg": 9.0}
        path.write_text(json.dumps({"participant_id": pid, "passed": passed, "reasons": reasons, "ncc": ncc,
                                    "brain_volume_ml": volume, "affine": affine, "excluded": excluded}))
        return path

    paths = [
        qc("sub-old", 0.47, 1300.0, False, ["ncc 0.470 < 0.5"]),  # an atrophied real brain, judged at 0.5
        qc("sub-young", 0.58, 1500.0, True, []),
        qc("sub-moved", 0.36, 1400.0, True, []),  # recorded under a laxer threshold
        qc("sub-small", 0.55, 700.0, True, []),
        qc("sub-broken", None, None, False, ["bad input: truncated gzip"], excluded=True),
    ]
    table = write_cohort_qc(paths, tmp_path / "qc.tsv", tmp_path / "excluded.tsv",
                            thresholds=QCThresholds(min_ncc=0.45, min_brain_volume_ml=800))
    assert dict(zip(table["participant_id"], table["passed"])) == {
        "sub-broken": False, "sub-moved": False, "sub-old": True, "sub-small": False, "sub-young": True}
    excluded = pd.read_csv(tmp_path / "excluded.tsv", sep="\t").set_index("participant_id")["reason"].to_dict()
    assert excluded == {"sub-broken": "bad input: truncated gzip", "sub-moved": "ncc 0.360 < 0.45",
                        "sub-small": "brain volume 700 ml outside [800, 2200]"}
    # without thresholds, each json's own verdict
    table = write_cohort_qc(paths, tmp_path / "qc2.tsv", tmp_path / "excluded2.tsv")
    assert sorted(table.loc[~table["passed"], "participant_id"]) == ["sub-broken", "sub-old"]
