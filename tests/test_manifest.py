"""The participants manifest: importers (IXI, BIDS, ADNI, PPMI), validation, CLI, Snakemake.

Fixtures: the three real IXI scans in tests/data/ixi (expected ages read from its
demographics.csv with the csv module, independently of the importer), and tiny BIDS / ADNI /
PPMI sources written here with nibabel and plain text.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage.data import manifest
from brainage.core.io import InputError
from conftest import base_env

REPO = Path(__file__).resolve().parents[1]
IXI = REPO / "tests" / "data" / "ixi"


def tiny_nifti(path: Path, shape=(16, 17, 16)) -> Path:
    """A small NIfTI image (1 mm voxels) at ``path``; 4D when ``shape`` has 4 axes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# IXI


def test_ixi_sample_gives_valid_manifest_with_sheet_ages(tmp_path):
    with open(IXI / "demographics.csv", newline="") as handle:
        sheet = {row["IXI_ID"]: row for row in csv.DictReader(handle)}

    frame = manifest.from_ixi(IXI / "demographics.csv", IXI)

    assert manifest.validate(frame, check_files=True) == []
    assert list(frame["participant_id"]) == [f"sub-{i}" for i in sorted(sheet)]
    for row in frame.itertuples():
        expected = sheet[row.participant_id.removeprefix("sub-")]
        assert row.age == pytest.approx(float(expected["AGE"]))
        assert row.sex == expected["SEX"]
        assert row.cohort == "HC" and row.dataset == "IXI"
        assert Path(row.t1w).name.startswith(row.participant_id.removeprefix("sub-") + "-HH-")
        assert nib.load(row.t1w).shape == (120, 120, 90)  # the README's size

    out = tmp_path / "participants.tsv"
    manifest.write_manifest(frame, out)
    back = manifest.read_manifest(out, check_files=True)
    assert list(back.columns[: len(manifest.COLUMNS)]) == list(manifest.COLUMNS)
    assert back["age"].tolist() == pytest.approx([float(sheet[k]["AGE"]) for k in sorted(sheet)])
    assert back["adas_cog11"].isna().all() and back["session"].isna().all()
    # the TSV itself: a header, one row per scan, n/a for what does not apply
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == list(manifest.COLUMNS) and len(lines) == 4
    assert lines[1].split("\t")[6:] == ["n/a"] * 4


def test_ixi_sheet_with_sex_codes_and_full_names(tmp_path):
    # IXI.xls layout: numeric IXI_ID, SEX_ID 1 = male, 2 = female; a repeated id keeps the row
    # with an age; a scan whose id is not in the sheet (no age) is left out with a warning.
    sheet = write(tmp_path / "IXI.csv", "IXI_ID,SEX_ID,AGE\n2,2,35.8\n12,1,38.78\n12,1,\n27,1\n")
    scans = tmp_path / "T1"
    for name in ("IXI002-Guys-0828-T1.nii.gz", "IXI012-HH-1211-T1.nii.gz", "IXI099-IOP-0999-T1.nii.gz"):
        tiny_nifti(scans / name)
    write(scans / "README.txt", "not a scan")

    frame = manifest.from_ixi(sheet, scans)

    assert frame["participant_id"].tolist() == ["sub-IXI002", "sub-IXI012"]
    assert frame["sex"].tolist() == ["F", "M"]
    assert frame["age"].tolist() == [35.8, 38.78]
    assert manifest.validate(frame) == []


# ---------------------------------------------------------------------------------------------
# BIDS


def make_bids(root: Path) -> Path:
    """Four subjects: no sessions, two sessions (per-session ages), a 2-run session, PD/HC/AD."""
    write(root / "dataset_description.json", '{"Name": "tiny", "BIDSVersion": "1.8.0"}')
    write(root / "participants.tsv",
          "participant_id\tAge\tsex\tgroup\tUPDRS3\tNHY\n"
          "sub-01\t61.5\tF\tcontrol\tn/a\tn/a\n"
          "sub-02\t70\tmale\tPD\t32\t2\n"
          "sub-03\t75.25\tfemale\tAD\tn/a\tn/a\n"
          "sub-04\t44\tM\tcontrol\tn/a\tn/a\n"
          "sub-05\t50\tF\tcontrol\tn/a\tn/a\n")  # sub-05 has no scan: skipped
    tiny_nifti(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    tiny_nifti(root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii.gz")
    tiny_nifti(root / "sub-02" / "ses-2" / "anat" / "sub-02_ses-2_T1w.nii")
    write(root / "sub-02" / "sub-02_sessions.tsv", "session_id\tage\nses-1\t70\nses-2\t72.5\n")
    tiny_nifti(root / "sub-03" / "ses-1" / "anat" / "sub-03_ses-1_run-2_T1w.nii.gz")
    tiny_nifti(root / "sub-03" / "ses-1" / "anat" / "sub-03_ses-1_run-1_T1w.nii.gz")
    tiny_nifti(root / "sub-04" / "anat" / "sub-04_T1w.nii.gz")
    write(root / "sub-04" / "anat" / "sub-04_T1w.json", "{}")
    return root


def test_bids_with_sessions(tmp_path):
    root = make_bids(tmp_path / "tiny_ds")

    frame = manifest.from_bids(root).set_index("participant_id")

    assert manifest.validate(frame.reset_index()) == []
    assert list(frame.index) == ["sub-01", "sub-02", "sub-03", "sub-04"]
    assert (frame["dataset"] == "tiny_ds").all()
    assert frame["cohort"].tolist() == ["HC", "PD", "AD", "HC"]
    assert frame["sex"].tolist() == ["F", "M", "F", "M"]
    assert frame.at["sub-01", "age"] == 61.5 and pd.isna(frame.at["sub-01", "session"])
    assert frame.at["sub-02", "session"] == "1" and frame.at["sub-02", "age"] == 70
    assert frame.at["sub-02", "updrs3"] == 32 and frame.at["sub-02", "hoehn_yahr"] == 2
    assert frame.at["sub-02", "t1w"] == str(root / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz")
    assert Path(frame.at["sub-03", "t1w"]).name == "sub-03_ses-1_run-1_T1w.nii.gz"

    # an explicit session: the age at that session comes from sub-02_sessions.tsv
    ses2 = manifest.from_bids(root, dataset="D", session="2").set_index("participant_id")
    assert list(ses2.index) == ["sub-02"]
    assert ses2.at["sub-02", "age"] == 72.5 and ses2.at["sub-02", "dataset"] == "D"
    assert ses2.at["sub-02", "t1w"].endswith("ses-2/anat/sub-02_ses-2_T1w.nii")


def test_bids_without_participants_table_is_reported_not_guessed(tmp_path):
    root = tmp_path / "bare"
    tiny_nifti(root / "sub-A1" / "anat" / "sub-A1_T1w.nii.gz")
    frame = manifest.from_bids(root)
    assert frame["cohort"].tolist() == ["HC"]
    assert manifest.validate(frame) == [
        "row 1 (sub-A1) column age: missing",
        "row 1 (sub-A1) column sex: missing (allowed: F|M)",
    ]
    with pytest.raises(InputError, match="no T1w scans"):
        manifest.from_bids(tmp_path / "bare" / "sub-A1" / "anat")


# ---------------------------------------------------------------------------------------------
# ADNI and PPMI


ADNIMERGE = """RID,PTID,VISCODE,EXAMDATE,DX_bl,AGE,PTGENDER,DX,ADAS11,Years_bl
295,002_S_0295,bl,2006-04-18,CN,84.8,Male,CN,4,0
295,002_S_0295,m24,2008-05-07,CN,84.8,Male,CN,6.33,2.05065
1280,011_S_1280,m24,2009-03-02,LMCI,71.3,Female,Dementia,21.67,2.08624
1281,011_S_1281,m24,2009-03-02,AD,77.1,Female,Dementia,25,1.99042
4021,023_S_4021,m24,2013-06-01,EMCI,60.2,Female,MCI,11,2.0
5000,099_S_5000,m24,2015-01-01,CN,68.0,Male,CN,5,2.1
"""


def make_adni(tmp_path: Path) -> tuple[Path, Path]:
    table = write(tmp_path / "ADNIMERGE.csv", ADNIMERGE)
    t1 = tmp_path / "adni_t1"
    tiny_nifti(t1 / "002_S_0295" / "bl" / "mprage.nii.gz")
    tiny_nifti(t1 / "002_S_0295" / "m24" / "ADNI_002_S_0295_MR_MPRAGE_S50000_I100000.nii.gz")
    tiny_nifti(t1 / "011_S_1280" / "m24" / "a.nii.gz")
    tiny_nifti(t1 / "011_S_1281" / "m24" / "b.nii")
    tiny_nifti(t1 / "023_S_4021" / "m24" / "mci.nii.gz")  # MCI: skipped
    return table, t1  # 099_S_5000 has no scan: skipped


def test_adni_visit_ages_and_diagnoses(tmp_path):
    table, t1 = make_adni(tmp_path)

    frame = manifest.from_adni(table, t1, viscode="m24").set_index("participant_id")

    assert manifest.validate(frame.reset_index()) == []
    assert list(frame.index) == ["sub-ADNI002S0295", "sub-ADNI011S1280", "sub-ADNI011S1281"]
    assert frame["cohort"].tolist() == ["HC", "AD", "AD"]
    assert frame["sex"].tolist() == ["M", "F", "F"]
    # age at the visit = baseline AGE + Years_bl
    assert frame["age"].tolist() == pytest.approx([84.8 + 2.05065, 71.3 + 2.08624, 77.1 + 1.99042], abs=0.006)
    assert frame["adas_cog11"].tolist() == [6.33, 21.67, 25.0]
    assert (frame["session"] == "m24").all()
    assert frame.at["sub-ADNI002S0295", "t1w"] == str(t1.resolve() / "002_S_0295/m24/ADNI_002_S_0295_MR_MPRAGE_S50000_I100000.nii.gz")

    base = manifest.from_adni(table, t1, viscode="bl")
    assert base["participant_id"].tolist() == ["sub-ADNI002S0295"] and base["age"].tolist() == [84.8]

    # a flat folder with the visit in the file name, through the documented placeholders
    flat = tmp_path / "flat"
    tiny_nifti(flat / "sub-ADNI011S1281_ses-M24_T1w.nii.gz")
    one = manifest.from_adni(table, flat, pattern="sub-ADNI{ptid_label}_ses-{VISCODE}_T1w.nii.gz")
    assert one["participant_id"].tolist() == ["sub-ADNI011S1281"]


def test_adni_missing_column_names_file_and_column(tmp_path):
    _, t1 = make_adni(tmp_path)
    table = write(tmp_path / "no_adas.csv", ADNIMERGE.replace("ADAS11", "ADAS13"))
    with pytest.raises(InputError, match=r"no_adas.csv: ADNIMERGE table has no column ADAS11"):
        manifest.from_adni(table, t1)
    with pytest.raises(InputError, match=r"scan pattern '\{rid\}/\*.nii': unknown placeholder 'rid'"):
        manifest.from_adni(tmp_path / "ADNIMERGE.csv", t1, pattern="{rid}/*.nii")


PPMI = """PATNO,EVENT_ID,COHORT_DEFINITION,age_at_visit,SEX,NP3TOT,NHY
3001,BL,Parkinson's Disease,65.1,1,20,2
3001,V08,Parkinson's Disease,69.1,1,31,2
3002,V08,Healthy Control,58.4,0,2,0
3003,V08,Parkinson's Disease,71.9,0,40,101
3004,V08,SWEDD,60.0,1,10,1
3005,V08,Prodromal,66.0,0,3,0
"""


def test_ppmi_visit_status_and_scores(tmp_path):
    table = write(tmp_path / "ppmi.csv", PPMI)
    t1 = tmp_path / "ppmi_t1"
    for patno in (3001, 3002, 3003, 3004, 3005):
        tiny_nifti(t1 / str(patno) / "V08" / "t1.nii.gz")
    tiny_nifti(t1 / "3001" / "BL" / "t1.nii.gz")

    frame = manifest.from_ppmi(table, t1, visit="V08").set_index("participant_id")

    assert manifest.validate(frame.reset_index()) == []
    assert list(frame.index) == ["sub-PPMI3001", "sub-PPMI3002", "sub-PPMI3003"]  # SWEDD, prodromal out
    assert frame["cohort"].tolist() == ["PD", "HC", "PD"]
    assert frame["sex"].tolist() == ["M", "F", "F"]  # PPMI SEX: 0 = female, 1 = male
    assert frame["age"].tolist() == [69.1, 58.4, 71.9]
    assert frame["updrs3"].tolist() == [31, 2, 40]
    assert frame.at["sub-PPMI3001", "hoehn_yahr"] == 2 and pd.isna(frame.at["sub-PPMI3003", "hoehn_yahr"])  # 101 = unrated
    assert (frame["session"] == "V08").all()

    # numeric status codes (COHORT 1 = PD, 2 = HC) and Female/Male spelled out
    coded = write(tmp_path / "coded.csv", "PATNO,EVENT_ID,COHORT,AGE_AT_VISIT,SEX,NP3TOT,NHY\n"
                  "3001,V08,1,69.1,Male,31,2\n3002,V08,2,58.4,Female,2,0\n")
    again = manifest.from_ppmi(coded, t1)
    assert again["cohort"].tolist() == ["PD", "HC"] and again["sex"].tolist() == ["M", "F"]


def test_concat_sources_and_cross_dataset_duplicates(tmp_path):
    ixi = manifest.from_ixi(IXI / "demographics.csv", IXI)
    bids = manifest.from_bids(make_bids(tmp_path / "ds"))
    joined = manifest.concat([ixi, bids])
    assert len(joined) == len(ixi) + len(bids)
    assert list(joined.columns) == list(manifest.COLUMNS)
    assert manifest.validate(joined) == []

    twice = manifest.concat([bids, manifest.from_bids(tmp_path / "ds", dataset="again")])
    dups = [p for p in manifest.validate(twice) if "duplicate" in p]
    assert dups == [f"row {len(bids) + i + 1} ({pid}) column participant_id: duplicate of row {i + 1}"
                    for i, pid in enumerate(bids["participant_id"])]


# ---------------------------------------------------------------------------------------------
# validation: each bad input is named with its row and column, and nothing is written


@pytest.fixture()
def good(tmp_path) -> pd.DataFrame:
    """A valid three-row manifest of the real IXI scans."""
    return manifest.from_ixi(IXI / "demographics.csv", IXI)


BAD_CASES = {
    # name: (row index to spoil, column, new value, expected message after "column <c>: ")
    "duplicate id": (2, "participant_id", "sub-IXI012", "duplicate of row 1"),
    "malformed id": (1, "participant_id", "IXI014", "'IXI014' is not 'sub-' followed by letters and digits"),
    "missing age": (1, "age", "n/a", "missing"),
    "non-numeric age": (1, "age", "thirty", "'thirty' is not a number"),
    "age above 120": (2, "age", 131.0, "131.0 is outside 0-120"),
    "negative age": (0, "age", -1.0, "-1.0 is outside 0-120"),
    "unknown cohort": (1, "cohort", "MCI", "unknown value 'MCI' (allowed: HC|AD|PD)"),
    "missing cohort": (0, "cohort", "", "missing (allowed: HC|AD|PD)"),
    "unknown sex": (2, "sex", "U", "unknown value 'U' (allowed: F|M)"),
    "score out of range": (0, "hoehn_yahr", 7, "7 is outside 0-5"),
    "score not a number": (0, "updrs3", "mild", "'mild' is not a number"),
    "missing dataset": (1, "dataset", None, "missing"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_each_bad_value_is_rejected_with_row_and_column(good, tmp_path, case):
    row, column, value, expected = BAD_CASES[case]
    bad = good.copy()
    bad.loc[row, column] = value
    pid = bad.loc[row, "participant_id"]
    out = tmp_path / "participants.tsv"

    with pytest.raises(InputError) as err:
        manifest.write_manifest(bad, out)

    assert str(err.value).splitlines() == [f"row {row + 1} ({pid}) column {column}: {expected}"]
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no file, no temporary left


def test_missing_file_and_images_that_are_not_3d(good, tmp_path):
    bad = good.copy()
    four_d = tiny_nifti(tmp_path / "bold.nii.gz", shape=(4, 4, 4, 3))
    text = write(tmp_path / "notes.nii.gz", "this is not an image")
    bad.loc[0, "t1w"] = str(tmp_path / "gone.nii.gz")
    bad.loc[1, "t1w"] = str(four_d)
    bad.loc[2, "t1w"] = str(text)

    problems = manifest.validate(bad, check_files=True)

    assert problems[0] == f"row 1 (sub-IXI012) column t1w: file not found: {tmp_path / 'gone.nii.gz'}"
    assert problems[1] == f"row 2 (sub-IXI014) column t1w: not a 3D image (shape 4x4x4x3): {four_d}"
    assert problems[2].startswith("row 3 (sub-IXI048) column t1w: not a readable NIfTI image (")
    assert problems[2].endswith(str(text)) and len(problems) == 3
    assert manifest.validate(bad, check_files=False) == []  # parse time: no file is opened
    # a 3D image saved with a trailing axis of one volume is accepted
    ok = good.copy()
    ok.loc[0, "t1w"] = str(tiny_nifti(tmp_path / "one.nii.gz", shape=(16, 16, 16, 1)))
    assert manifest.validate(ok) == []


def test_every_problem_is_reported_at_once(good, tmp_path):
    bad = good.copy()
    bad["participant_id"] = ["sub-IXI012", "sub-IXI012", "sub-IXI048"]
    bad["age"] = [38.0, "old", 250]
    bad["cohort"] = ["HC", "XX", "HC"]
    bad["sex"] = ["M", "F", "other"]
    bad.loc[2, "t1w"] = str(tmp_path / "nowhere.nii.gz")
    path = tmp_path / "manifest.tsv"
    bad.to_csv(path, sep="\t", index=False, na_rep="n/a")  # as a user might write it

    with pytest.raises(InputError) as err:
        manifest.read_manifest(path, check_files=True)

    assert str(err.value).splitlines() == [
        f"{path}: row 2 (sub-IXI012) column participant_id: duplicate of row 1",
        f"{path}: row 2 (sub-IXI012) column cohort: unknown value 'XX' (allowed: HC|AD|PD)",
        f"{path}: row 2 (sub-IXI012) column age: 'old' is not a number",
        f"{path}: row 3 (sub-IXI048) column age: 250 is outside 0-120",
        f"{path}: row 3 (sub-IXI048) column sex: unknown value 'other' (allowed: F|M)",
        f"{path}: row 3 (sub-IXI048) column t1w: file not found: {tmp_path / 'nowhere.nii.gz'}",
    ]


def test_missing_columns_and_empty_manifest(tmp_path):
    path = write(tmp_path / "m.tsv", "participant_id\tage\nsub-1\t30\n")
    with pytest.raises(InputError) as err:
        manifest.read_manifest(path)
    lines = str(err.value).splitlines()
    assert [line.split(":")[1].strip() for line in lines] == ["column dataset", "column cohort", "column sex", "column t1w"]
    assert manifest.validate(pd.DataFrame(columns=list(manifest.COLUMNS))) == ["the manifest has no participants"]


def test_failed_write_keeps_the_previous_manifest(good, tmp_path):
    out = tmp_path / "participants.tsv"
    manifest.write_manifest(good, out)
    before = out.read_bytes()
    bad = good.copy()
    bad.loc[0, "age"] = "?"
    with pytest.raises(InputError):
        manifest.write_manifest(bad, out)
    assert out.read_bytes() == before


def test_reading_40000_rows_does_not_touch_the_files(tmp_path):
    n = 40_000
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "participant_id": [f"sub-{i:06d}" for i in range(n)],
        "dataset": "big",
        "cohort": rng.choice(list(manifest.COHORTS), n),
        "age": rng.uniform(18, 95, n).round(2),
        "sex": rng.choice(list(manifest.SEXES), n),
        "t1w": [f"/nonexistent/sub-{i:06d}_T1w.nii.gz" for i in range(n)],
    })
    path = tmp_path / "big.tsv"
    frame.to_csv(path, sep="\t", index=False)

    # how long it takes is measured against a bare pandas read by benchmarks/bench_manifest.py
    back = manifest.read_manifest(path)  # no file exists: any stat would fail validation

    assert len(back) == n and back["age"].to_numpy() == pytest.approx(frame["age"].to_numpy())
    assert list(back["participant_id"]) == list(frame["participant_id"])


# ---------------------------------------------------------------------------------------------
# command line and Snakemake


def brainage(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("brainage")
    command = [exe] if exe else [sys.executable, "-m", "brainage.cli"]
    return subprocess.run([*command, "manifest", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_cli_builds_manifest_from_several_sources(tmp_path):
    bids = make_bids(tmp_path / "ds")
    adni_csv, adni_t1 = make_adni(tmp_path)
    out = tmp_path / "out" / "participants.tsv"

    done = brainage("--bids", str(bids), "--ixi-demographics", str(IXI / "demographics.csv"),
                    "--ixi-t1", str(IXI), "--adni", str(adni_csv), "--adni-t1", str(adni_t1),
                    "--adni-viscode", "m24", "--out", str(out))

    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out, sep="\t", keep_default_na=False)
    assert len(table) == 4 + 3 + 3
    assert table["dataset"].tolist() == ["ds"] * 4 + ["IXI"] * 3 + ["ADNI"] * 3
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table["t1w"])
    assert "10 participants (HC 6, AD 3, PD 1)" in done.stdout
    assert brainage("--check", str(out)).returncode == 0


def test_cli_rejects_bad_input_with_one_line_per_problem(tmp_path):
    sheet = write(tmp_path / "ixi.csv", "IXI_ID,AGE,SEX\nIXI012,abc,M\nIXI014,34.24,Q\nIXI048,150,M\n")
    bids = tmp_path / "ds"
    write(bids / "participants.tsv", "participant_id\tage\tsex\nsub-01\t40\tF\n")
    tiny_nifti(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz", shape=(4, 4, 4, 2))
    out = tmp_path / "participants.tsv"

    done = brainage("--ixi-demographics", str(sheet), "--ixi-t1", str(IXI), "--bids", str(bids), "--out", str(out))

    assert done.returncode == 1
    assert not out.exists()
    lines = done.stderr.strip().splitlines()
    assert lines[:-1] == [
        "row 1 (sub-01) column t1w: not a 3D image (shape 4x4x4x2): "
        + str((bids / "sub-01/anat/sub-01_T1w.nii.gz").resolve()),
        "row 2 (sub-IXI012) column age: 'abc' is not a number",
        "row 3 (sub-IXI014) column sex: unknown value 'Q' (allowed: F|M)",
        "row 4 (sub-IXI048) column age: 150.0 is outside 0-120",
    ]
    assert lines[-1] == f"brainage manifest: 4 problems; nothing written to {out}"

    missing = brainage("--bids", str(tmp_path / "nope"), "--out", str(out))
    assert missing.returncode == 1 and f"{tmp_path / 'nope'}: BIDS folder not found" in missing.stderr
    usage = brainage("--ixi-t1", str(IXI), "--out", str(out))
    assert usage.returncode == 2 and "go together" in usage.stderr
    assert not out.exists()


def snakemake(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = base_env(PYTHONPATH=str(REPO / "src"))  # the base install's snakemake
    return subprocess.run(["snakemake", "--cores", "1", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.slow
def test_snakemake_dry_run_on_a_manifest_of_the_ixi_scans(tmp_path):
    out = tmp_path / "participants.tsv"
    manifest.write_manifest(manifest.from_ixi(IXI / "demographics.csv", IXI), out)

    # the cohort and preprocessing stages from the repository; a dry run writes only .snakemake/
    done = snakemake("cohort_all", "preprocess_all", "-n", "--nolock", "--config",
                     f"cohort={{source: manifest, manifest: {out}}}", cwd=REPO)

    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^participants\s+1$", done.stdout, re.MULTILINE), done.stdout

    # the whole DAG trains, and three healthy controls cannot fill train, val and test
    whole = snakemake("-n", "--nolock", "--config", f"cohort={{source: manifest, manifest: {out}}}", cwd=REPO)
    assert whole.returncode != 0
    assert f"config cohort.manifest ({out}): 3 healthy controls split [0.8, 0.1, 0.1] leave too few" in whole.stdout + whole.stderr

    # a broken manifest stops Snakemake at parse time, naming the row and column
    bad = tmp_path / "bad.tsv"
    bad.write_text(out.read_text().replace("38.78", "old"))
    failed = snakemake("-n", "--nolock", "--config", f"cohort={{source: manifest, manifest: {bad}}}", cwd=REPO)
    assert failed.returncode != 0
    assert "row 1 (sub-IXI012) column age: 'old' is not a number" in failed.stdout + failed.stderr


@pytest.mark.slow
def test_participants_rule_checks_the_files_and_copies_the_manifest(tmp_path):
    good = tmp_path / "good.tsv"
    manifest.write_manifest(manifest.from_ixi(IXI / "demographics.csv", IXI), good)
    workdir = tmp_path / "run"
    workdir.mkdir()
    target = workdir / "results" / "cohort" / "participants.tsv"
    common = ["results/cohort/participants.tsv", "-s", str(REPO / "Snakefile"),
              "--configfile", str(REPO / "config" / "config.yaml"), "--config"]

    done = snakemake(*common, f"cohort={{source: manifest, manifest: {good}}}", cwd=workdir)

    assert done.returncode == 0, done.stdout + done.stderr
    assert target.read_text() == good.read_text()
    assert "3 participants (HC 3, AD 0, PD 0)" in (workdir / "logs/participants/participants.log").read_text()

    # a bad scan does not stop the cohort: its preprocessing job excludes it with the reason
    # (tests/test_scans.py), and `brainage manifest --check` names it before a run
    four_d = tiny_nifti(tmp_path / "fmri.nii.gz", shape=(4, 4, 4, 2))
    bad = tmp_path / "bad.tsv"
    bad.write_text(good.read_text().replace(manifest.read_manifest(good)["t1w"].iat[1], str(four_d)))
    target.unlink()
    kept = snakemake(*common, f"cohort={{source: manifest, manifest: {bad}}}", cwd=workdir)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert target.read_text() == bad.read_text()
    check = brainage("--check", str(bad))
    assert check.returncode == 1
    assert f"row 2 (sub-IXI014) column t1w: not a 3D image (shape 4x4x4x2): {four_d}" in check.stderr
