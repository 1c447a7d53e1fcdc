"""The official IXI download as a user brings it: scans the demographics sheet gives no age
(an empty AGE cell, or no row at all) are left out with one warning, and the rest is a valid
manifest."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from brainage import manifest


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
    with caplog.at_level(logging.INFO, logger="brainage.manifest"):
        frame = manifest.from_ixi(sheet, scans)
    assert frame["participant_id"].tolist() == ["sub-IXI002", "sub-IXI012"]
    assert manifest.validate(frame) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["IXI: 1 row without a T1w scan in " + str(scans) + ", skipped: IXI050",
                        f"IXI: 2 T1w scans without an age in {sheet}, skipped: IXI013, IXI099"]
