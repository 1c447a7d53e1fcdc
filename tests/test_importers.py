"""Importers cannot mix people up: one id parser, one duplicate policy, unscanned rows reported.

Each source (IXI, BIDS, ADNI, PPMI) is written here as plain text, with the expected
participant of every row stated by hand, independently of the importers.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainage.data import manifest
from brainage.core.io import InputError

REPO = Path(__file__).resolve().parents[1]


def scan(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.arange(16 * 17 * 16, dtype=np.int16).reshape(16, 17, 16), np.eye(4)), str(path))
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("value, source, expected", [
    (12, "IXI", "sub-IXI012"), ("012", "IXI", "sub-IXI012"), ("IXI012", "IXI", "sub-IXI012"),
    (12.0, "IXI", "sub-IXI012"), ("12.0", "IXI", "sub-IXI012"), ("ixi12", "IXI", "sub-IXI012"),
    (" 120 ", "IXI", "sub-IXI120"),
    ("002_S_0295", "ADNI", "sub-ADNI002S0295"),
    (3001, "PPMI", "sub-PPMI3001"), ("3001.0", "PPMI", "sub-PPMI3001"), ("PPMI3001", "PPMI", "sub-PPMI3001"),
    ("sub-01", "BIDS", "sub-01"), ("01", "BIDS", "sub-01"), ("sub-CTL7", "BIDS", "sub-CTL7"),
])
def test_one_id_parser_for_every_source(value, source, expected):
    assert manifest.parse_participant_id(value, source) == expected


@pytest.mark.parametrize("value, source", [
    ("12.5", "IXI"), (12.5, "IXI"), ("IXI12a", "IXI"), ("1234", "IXI"), ("", "IXI"), (None, "IXI"),
    ("2_S_295", "ADNI"), ("002S0295", "ADNI"), ("30a1", "PPMI"), ("-3", "PPMI"),
    ("sub-01_ses-1", "BIDS"), ("../x", "BIDS"), ("sub-", "BIDS"), ("1.0", "BIDS"),
])
def test_anything_else_is_refused(value, source):
    with pytest.raises(InputError, match=f"(is not a {source} id|missing {source} id)"):
        manifest.parse_participant_id(value, source)


def test_ixi_ids_saved_as_numbers_keep_each_persons_age(tmp_path):
    scans = tmp_path / "T1"
    for name in ("IXI012-HH-1211-T1.nii.gz", "IXI120-HH-1500-T1.nii.gz"):
        scan(scans / name)
    # a spreadsheet saved the IXI_ID column as numbers: 12.0 is IXI012, 120.0 is IXI120
    sheet = write(tmp_path / "IXI.csv", "IXI_ID,AGE,SEX\n12.0,38.78,M\n120.0,71.5,F\n")

    frame = manifest.from_ixi(sheet, scans).set_index("participant_id")

    assert frame.loc["sub-IXI012", ["age", "sex"]].tolist() == [38.78, "M"]
    assert frame.loc["sub-IXI120", ["age", "sex"]].tolist() == [71.5, "F"]


def test_bad_ids_are_refused_by_row_all_at_once(tmp_path):
    scans = tmp_path / "T1"
    scan(scans / "IXI012-HH-1211-T1.nii.gz")
    sheet = write(tmp_path / "IXI.csv", "IXI_ID,AGE,SEX\n12,38.78,M\n12.5,40,F\nIXI7b,50,M\n")
    with pytest.raises(InputError) as err:
        manifest.from_ixi(sheet, scans)
    assert str(err.value).splitlines() == [
        f"{sheet}: row 2 column IXI_ID: '12.5' is not a IXI id (expected 12, 012 or IXI012)",
        f"{sheet}: row 3 column IXI_ID: 'IXI7b' is not a IXI id (expected 12, 012 or IXI012)",
    ]


def ixi(tmp_path, rows):
    scans = tmp_path / "ixi"
    for n in (12, 14):
        scan(scans / f"IXI{n:03d}-HH-1-T1.nii.gz")
    sheet = write(tmp_path / "IXI.csv", "IXI_ID,AGE,SEX\n" + rows)
    return lambda: manifest.from_ixi(sheet, scans), "IXI.csv"


def bids(tmp_path, rows):
    root = tmp_path / "ds"
    for label in ("12", "14"):
        scan(root / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz")
    body = "".join(f"sub-{line}\n" for line in rows.replace(",", "\t").splitlines())
    write(root / "participants.tsv", "participant_id\tage\tsex\n" + body)
    return lambda: manifest.from_bids(root), "participants.tsv"


def adni(tmp_path, rows):
    t1 = tmp_path / "adni"
    for ptid in ("012_S_0012", "014_S_0014"):
        scan(t1 / ptid / "m24" / "t1.nii.gz")
    body = "".join(f"{n:03d}_S_{n:04d},m24,{age},{'Male' if sex == 'M' else 'Female'},CN,5,0\n"
                   for n, age, sex in (line.split(",") for line in rows.splitlines()) for n in [int(n)])
    table = write(tmp_path / "ADNIMERGE.csv", "PTID,VISCODE,AGE,PTGENDER,DX,ADAS11,Years_bl\n" + body)
    return lambda: manifest.from_adni(table, t1), "ADNIMERGE.csv"


def ppmi(tmp_path, rows):
    t1 = tmp_path / "ppmi"
    for n in (12, 14):
        scan(t1 / str(n) / "V08" / "t1.nii.gz")
    body = "".join(f"{n},V08,Healthy Control,{age},{1 if sex == 'M' else 0},2,0\n"
                   for n, age, sex in (line.split(",") for line in rows.splitlines()))
    table = write(tmp_path / "ppmi.csv", "PATNO,EVENT_ID,COHORT_DEFINITION,age_at_visit,SEX,NP3TOT,NHY\n" + body)
    return lambda: manifest.from_ppmi(table, t1), "ppmi.csv"


SOURCES = {"IXI": ixi, "BIDS": bids, "ADNI": adni, "PPMI": ppmi}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_identical_duplicate_rows_are_merged(tmp_path, source):
    load, _ = SOURCES[source](tmp_path, "12,38.5,M\n14,40,F\n12,38.5,M\n")
    frame = load()
    assert len(frame) == 2
    assert frame["age"].astype(float).tolist() == pytest.approx([38.5, 40.0], abs=0.01)
    assert frame["sex"].tolist() == ["M", "F"]


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_conflicting_duplicate_rows_are_refused_all_listed(tmp_path, source):
    load, name = SOURCES[source](tmp_path, "12,38.5,M\n14,40,F\n12,60,M\n14,40,M\n")
    with pytest.raises(InputError) as err:
        load()
    lines = str(err.value).splitlines()
    assert len(lines) == 2, lines
    assert name in lines[0] and "rows 1 and 3" in lines[0] and "12" in lines[0] and "differ" in lines[0]
    assert name in lines[1] and "rows 2 and 4" in lines[1] and "14" in lines[1]


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_rows_without_a_scan_are_one_warning_with_the_count(tmp_path, source, caplog):
    load, _ = SOURCES[source](tmp_path, "12,38.5,M\n14,40,F\n77,50,M\n88,51,F\n")
    with caplog.at_level(logging.INFO, logger="brainage.data.manifest"):
        frame = load()
    assert len(frame) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 rows without a T1w scan" in warnings[0], warnings
    assert "77" in warnings[0] and "88" in warnings[0]


def test_every_sources_problems_in_one_run(tmp_path):
    ixi(tmp_path, "12,38.5,M\n12,60,M\n14,40,F\n")  # a conflict: IXI refused
    root = tmp_path / "ds2"
    scan(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    write(root / "participants.tsv", "participant_id\tage\tsex\nsub-01\t400\tF\n")  # imports, age invalid
    out = tmp_path / "participants.tsv"
    done = subprocess.run([sys.executable, "-m", "brainage.cli", "manifest", "--ixi-demographics",
                           str(tmp_path / "IXI.csv"), "--ixi-t1", str(tmp_path / "ixi"), "--bids", str(root),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    err = done.stderr
    assert "rows 1 and 2 of the IXI demographics are both sub-IXI012" in err
    assert "(sub-01) column age: 400.0 is outside 0-120" in err
    assert not out.exists()
