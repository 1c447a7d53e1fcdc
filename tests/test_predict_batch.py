"""``brainage predict`` on many scans in one process (brainage.apply.batch): the same ages as the
one-scan form, a row with its reason for a bad scan, manifests, intervals, refusals up front.

Real preprocessing on the real IXI heads of tests/data/ixi (2 mm, ~5 s each); the models are
model.pt files with random weights (nothing is trained: their ages are arbitrary but fixed), one
of them carrying a split-conformal interval in its meta as a calibrated model does.
"""

from __future__ import annotations

import gzip
import io
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from brainage.config import resolved_config
from brainage.core.grids import template_grid
from brainage.core.intervals import Calibration
from brainage.models.networks import build_age_model
from test_predict import ARCH, _save, _template_volume

IXI = Path(__file__).parent / "data" / "ixi"
SCANS = ("IXI012-HH-1211-T1_ds.nii.gz", "IXI014-HH-1236-T1_ds.nii.gz")
#: the interval stored in model b (90 %, +-5 y)
INTERVAL = Calibration(level=0.9, halfwidth=5.0, n=40)


def _model_file(path: Path, name: str, seed: int, res: float = 4, preprocess: dict | None = None,
                interval: Calibration | None = None) -> Path:
    """A model.pt as the train stage writes it, random weights (``seed``), the demo's preprocessing."""
    torch.manual_seed(seed)
    model = build_age_model(ARCH, age_mean=55.0, age_sd=15.0)
    grid = template_grid(res)
    meta = {"name": name, "kind": "e2e", "architecture": ARCH, "grid_res": float(res), "grid_shape": list(grid.shape),
            "age": {"train_mean": 55.0, "train_sd": 15.0}, "preprocess": preprocess or resolved_config()["preprocess"]}
    if interval is not None:
        meta["interval"] = interval.to_meta()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "meta": meta}, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """a, b (with an interval): 4 mm; fine: 2 mm (a second grid); other: 4 mm, another N4 setting."""
    root = tmp_path_factory.mktemp("batch_models")
    other = resolved_config()["preprocess"]
    other["native"]["n4"]["shrink_mm"] = 4.0
    return {
        "a": _model_file(root / "a" / "model.pt", "a", seed=0),
        "b": _model_file(root / "b" / "model.pt", "b", seed=1, interval=INTERVAL),
        "fine": _model_file(root / "fine" / "model.pt", "fine", seed=2, res=2),
        "other": _model_file(root / "other" / "model.pt", "other", seed=3, preprocess=other),
    }


def _predict(*args: str) -> tuple[int, str, str]:
    """``brainage predict`` in this process: (exit status, stdout, stderr)."""
    from brainage.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["predict", *map(str, args)])
    return code, out.getvalue(), err.getvalue()


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


@pytest.fixture(scope="module")
def batch(models, tmp_path_factory):
    """One batch over a folder of two real heads and three bad files, with models a, b and fine."""
    folder = tmp_path_factory.mktemp("scans")
    for name in SCANS:
        shutil.copy(IXI / name, folder / name)
    (folder / "x.nii.gz").write_text("participant_id\tage\nsub-01\t63\n")  # a text file named like a scan
    whole = (IXI / SCANS[0]).read_bytes()
    (folder / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    _save(np.ones((20, 20, 20, 3), np.float32), np.eye(4), folder / "bold.nii.gz")
    (folder / "notes.txt").write_text("not a scan: left out of the folder's scans")
    out = tmp_path_factory.mktemp("out") / "preds.tsv"
    code, stdout, stderr = _predict("--model", models["a"], "--model", models["b"], "--model", models["fine"],
                                    "--t1w", folder, "--out", out)
    return folder, code, stdout, stderr, _read(out)


def test_batch_equals_one_scan_predict(batch, models):
    """(a) every (scan, model) age of the batch is the one-scan form's, to the float, each scan
    preprocessed again on its own by brainage.apply.predict.predict_scan."""
    from brainage.apply.predict import predict_scan

    folder, code, _, stderr, table = batch
    assert code == 0, stderr
    for name in SCANS:
        for key in ("a", "b", "fine"):
            row = table[(table["file"] == str(folder / name)) & (table["model"] == key)]
            assert len(row) == 1
            alone = predict_scan(models[key], IXI / name)
            assert row["predicted_age"].iat[0] == alone["predicted_age"], (name, key)
            assert bool(row["qc_passed"].iat[0]) == alone["qc"]["passed"]
            assert row["qc_ncc"].iat[0] == pytest.approx(alone["qc"]["ncc"])
    assert table["model"].tolist()[:3] == ["a", "b", "fine"]


def test_interval_columns(batch):
    """The model's stored interval gives lower/upper/level; a model without one leaves them empty."""
    _, _, _, _, table = batch
    done = table[table["predicted_age"].notna()]
    b = done[done["model"] == "b"]
    assert len(b) == 2
    assert (b["predicted_age_lower"] == b["predicted_age"] - INTERVAL.halfwidth).all()
    assert (b["predicted_age_upper"] == b["predicted_age"] + INTERVAL.halfwidth).all()
    assert (b["interval_level"] == INTERVAL.level).all()
    rest = done[done["model"] != "b"]
    assert rest[["predicted_age_lower", "predicted_age_upper", "interval_level"]].isna().all().all()
    assert "age" not in table.columns and "bag" not in table.columns and "participant_id" not in table.columns


def test_bad_scans_become_rows_with_their_reason(batch):
    """(b) a text file named .nii.gz, a truncated .nii.gz and a 4D image: rows with the reason, no age;
    the real heads are predicted; one progress line per scan and a last line counting failures."""
    folder, code, stdout, stderr, table = batch
    assert code == 0 and stdout == ""
    files = sorted(p.name for p in folder.glob("*.nii.gz"))
    assert sorted({Path(f).name for f in table["file"]}) == files  # notes.txt is not a scan
    assert len(table) == 3 * len(files)
    reasons = {Path(f).name: set(rows["error"]) for f, rows in table.groupby("file")}
    assert all(len(r) == 1 for r in reasons.values())  # the same reason on each model's row
    assert "not a readable image" in next(iter(reasons["x.nii.gz"]))
    assert "4D" in next(iter(reasons["bold.nii.gz"]))
    assert next(iter(reasons["truncated.nii.gz"])).startswith("cannot read image")
    bad = table[table["file"].map(lambda f: Path(f).name not in SCANS)]
    assert bad["predicted_age"].isna().all() and bad["error"].map(lambda e: "\n" not in e).all()
    good = table[table["file"].map(lambda f: Path(f).name in SCANS)]
    assert good["predicted_age"].notna().all() and good["error"].isna().all()
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr
    progress = [line for line in lines if line.startswith("[")]
    assert [line.split()[0] for line in progress] == [f"[{i}/5]" for i in range(1, 6)]
    assert all(line.split()[1] in files for line in progress)
    assert lines[-1].startswith("brainage predict: 2 of 5 scan(s) predicted, 3 failed")


def test_manifest_with_relative_paths(batch, models, tmp_path, monkeypatch):
    """(c) --manifest: t1w paths relative to the manifest's folder (run from elsewhere), ages give
    the gap; a row whose scan is missing gets its reason; the same age as the folder's batch."""
    study = tmp_path / "study"
    (study / "scans").mkdir(parents=True)
    shutil.copy(IXI / SCANS[0], study / "scans" / SCANS[0])
    manifest = pd.DataFrame({
        "participant_id": ["sub-IXI012", "sub-gone"], "dataset": ["IXI", "IXI"], "cohort": ["HC", "HC"],
        "age": [38.78, 50.0], "sex": ["M", "F"], "t1w": [f"scans/{SCANS[0]}", "scans/gone.nii.gz"]})
    manifest.to_csv(study / "participants.tsv", sep="\t", index=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, stderr = _predict("--model", models["a"], "--manifest", study / "participants.tsv", "--out", "preds.tsv")
    assert code == 0, stderr
    table = _read(elsewhere / "preds.tsv")
    assert table["participant_id"].tolist() == ["sub-IXI012", "sub-gone"]
    first, gone = table.iloc[0], table.iloc[1]
    assert first["bag"] == first["predicted_age"] - 38.78 and first["age"] == 38.78
    folder, _, _, _, whole = batch
    same = whole[(whole["file"] == str(folder / SCANS[0])) & (whole["model"] == "a")]
    assert first["predicted_age"] == same["predicted_age"].iat[0]
    assert np.isnan(gone["predicted_age"]) and "no such file" in gone["error"]
    assert stderr.strip().splitlines()[-1].startswith("brainage predict: 1 of 2 scan(s) predicted, 1 failed")


def test_models_with_different_preprocessing_are_refused(models, tmp_path):
    """(d) one preprocessing per scan serves every model: other settings are refused in one line, before any scan."""
    out = tmp_path / "preds.tsv"
    code, stdout, stderr = _predict("--model", models["a"], "--model", models["other"], "--t1w", IXI, "--out", out)
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1 and stdout == "", stderr
    assert "different preprocessing" in lines[0] and "n4" in lines[0]
    assert not out.exists()


def test_preprocessed_input_and_one_scan_with_out(models, tmp_path):
    """A volume already on the 4 mm grid: used as is by the 4 mm models, a row's error for the 2 mm
    one; with --out and --age one scan is a table too (age, gap, the interval)."""
    import torch

    from brainage.data.cache import normalise_intensity
    from brainage.models.files import load_model

    volume = _template_volume(4, seed=5)
    scan = _save(volume, template_grid(4).affine, tmp_path / "sub-z_res-4_T1w.nii.gz")
    out = tmp_path / "preds.tsv"
    code, _, stderr = _predict("--model", models["a"], "--model", models["b"], "--model", models["fine"],
                               "--t1w", scan, "--age", "63", "--out", out)
    assert code == 0, stderr
    table = _read(out).set_index("model")
    model, _ = load_model(models["b"])
    with torch.no_grad():
        expected = float(model(torch.from_numpy(normalise_intensity(volume))[None, None]).reshape(-1)[0])
    assert table.loc["b", "predicted_age"] == expected
    assert table.loc["b", "bag"] == expected - 63 and table.loc["b", "age"] == 63
    assert table.loc["b", "predicted_age_upper"] == expected + INTERVAL.halfwidth
    assert "not preprocessed" in table.loc["a", "note"] and np.isnan(table.loc["a", "qc_passed"])
    assert "2 mm" in table.loc["fine", "error"] and "4 mm template grid" in table.loc["fine", "error"]
    assert np.isnan(table.loc["fine", "predicted_age"])


@pytest.mark.parametrize("extra, says", [
    (("--age", "63"), "--age is one scan's age"),
    (("--saliency", "s.nii.gz"), "--saliency takes one scan and one model"),
    (("--manifest", "participants.tsv"), "not both"),
])
def test_argument_errors_are_refused_up_front(models, extra, says, tmp_path):
    code, stdout, stderr = _predict("--model", models["a"], "--t1w", IXI, *extra)
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1 and says in lines[0] and stdout == "", stderr


def test_missing_inputs_are_refused_up_front(models, tmp_path):
    (tmp_path / "empty").mkdir()
    for args, says in [
        (("--model", models["a"], "--model", tmp_path / "nope.pt", "--t1w", IXI), "no such model file"),
        (("--model", models["a"], "--t1w", tmp_path / "empty"), "without .nii or .nii.gz files"),
        (("--model", models["a"], "--t1w", IXI, "--t1w", tmp_path / "gone.nii.gz"), "no such file or folder"),
        (("--model", models["a"], "--model", models["a"], "--t1w", IXI), "given twice"),
        (("--model", models["a"], "--manifest", tmp_path / "p.tsv"), "no such file"),
    ]:
        code, _, stderr = _predict(*args)
        lines = stderr.strip().splitlines()
        assert code == 1 and len(lines) == 1 and says in lines[0], (args, stderr)


def test_one_preprocessing_unless_a_grid_needs_another_base():
    """One run for every grid, except where a grid alone would be resampled from another base."""
    from brainage.apply.batch import preprocessing_groups

    grids = [template_grid(r) for r in (1, 2, 4, 2)]
    res = (lambda groups: [[g.res for g in group] for group in groups])
    assert res(preprocessing_groups(grids, 1.0)) == [[1, 2, 4]]  # a 1 mm scan: one 1 mm base
    assert res(preprocessing_groups(grids[1:], 2.0)) == [[2, 4]]  # the demo's 2 mm scans, grids 2 and 4
    assert res(preprocessing_groups(grids, 2.0)) == [[1], [2, 4]]  # 1 mm base for 1 mm, 2 mm for the others
