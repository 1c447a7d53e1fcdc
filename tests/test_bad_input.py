"""Every command line, every bad-input class of issue 16: exit status 1 and one line on stderr.

Each case is run through ``brainage.cli.main`` (the console script's code path) in this
process; stdout and stderr are captured. Each must end before any work: nothing is written
where the command would have written.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainage.cli import main
from brainage.core.grids import template_grid
from brainage.core.io import atomic_dir, check_output_dir
from brainage.models.networks import build_age_model

REPO = Path(__file__).resolve().parents[1]
IXI = REPO / "tests" / "data" / "ixi"
SCAN = IXI / "IXI012-HH-1211-T1_ds.nii.gz"
ARCH = {"backbone": "resnet18", "width": 0.125, "conv1_stride": 1, "norm": "batch"}


class Payload:
    """Pickled, it runs ``open(marker, 'w')`` when unpickled: what a hostile model.pt could do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_input")
    model = root / "model" / "model.pt"
    model.parent.mkdir()
    grid = template_grid(4)
    meta = {"name": "m", "kind": "e2e", "architecture": ARCH, "grid_res": 4.0, "grid_shape": list(grid.shape),
            "age": {"train_mean": 55.0, "train_sd": 15.0}, "preprocess": {"engine": "native"}}
    torch.save({"state_dict": build_age_model(ARCH, 55.0, 15.0).state_dict(), "meta": meta}, model)
    hostile = root / "hostile.pt"
    torch.save({"state_dict": {}, "meta": {"x": Payload(str(root / "pwned"))}}, hostile)
    on_grid = root / "on_grid.nii.gz"
    rng = np.random.default_rng(0)
    nib.Nifti1Image(rng.uniform(0.2, 1, grid.shape).astype(np.float32), grid.affine).to_filename(str(on_grid))
    (root / "empty.csv").write_text("")
    (root / "empty.tsv").write_text("")
    (root / "header_only.csv").write_text("IXI_ID,AGE,SEX\n")
    (root / "sheet.xls").write_text("IXI_ID,AGE,SEX\n12,38.78,M\n")  # a CSV renamed .xls
    (root / "folder").mkdir()
    (root / "a_file").write_text("not a folder")
    (root / "no_preprocess.yaml").write_text("seed: 1\n")
    (root / "bad.yaml").write_text("preprocess: {native: {n4: {shrink: 4}}}\n")
    truncated = root / "truncated.nii.gz"
    truncated.write_bytes(SCAN.read_bytes()[:20000])
    nan = root / "nan.nii.gz"
    nib.Nifti1Image(np.full((32, 32, 32), np.nan, np.float32), np.eye(4)).to_filename(str(nan))
    return {"root": root, "model": model, "hostile": hostile, "on_grid": on_grid, "truncated": truncated,
            "nan": nan}


R = "{root}"
CASES = {
    # name: (argv with {root} for the fixture folder, text the one line must hold)
    "manifest empty csv": (["manifest", "--ixi-demographics", f"{R}/empty.csv", "--ixi-t1", str(IXI), "--out", f"{R}/o1.tsv"],
                           "IXI demographics is empty"),
    "manifest header-only csv": (["manifest", "--ixi-demographics", f"{R}/header_only.csv", "--ixi-t1", str(IXI),
                                  "--out", f"{R}/o2.tsv"], "has a header but no rows"),
    "manifest empty tsv --check": (["manifest", "--check", f"{R}/empty.tsv"], "participants manifest is empty"),
    "manifest --out is a folder": (["manifest", "--ixi-demographics", str(IXI / "demographics.csv"), "--ixi-t1", str(IXI),
                                    "--out", f"{R}/folder"], "is a folder; give a file name"),
    "manifest csv renamed xls": (["manifest", "--ixi-demographics", f"{R}/sheet.xls", "--ixi-t1", str(IXI),
                                  "--out", f"{R}/o3.tsv"], "not a readable Excel workbook"),
    "preprocess --grids abc": (["preprocess", "--t1w", str(SCAN), "--out-dir", f"{R}/pp1", "--grids", "abc"],
                               "grid 'abc' is not a number"),
    "preprocess --grids 2,0": (["preprocess", "--t1w", str(SCAN), "--out-dir", f"{R}/pp2", "--grids", "2,0"],
                               "grid '0' mm is outside 0.5-8 mm"),
    "preprocess --config missing": (["preprocess", "--t1w", str(SCAN), "--out-dir", f"{R}/pp3", "--config", f"{R}/nope.yaml"],
                                    "nope.yaml: no such file"),
    "preprocess --config without section": (["preprocess", "--t1w", str(SCAN), "--out-dir", f"{R}/pp4", "--config",
                                             f"{R}/no_preprocess.yaml"], "no 'preprocess' section"),
    "preprocess --config unknown key": (["preprocess", "--t1w", str(SCAN), "--out-dir", f"{R}/pp5", "--config",
                                         f"{R}/bad.yaml"], "unknown N4Settings keys ['shrink']"),
    "preprocess --participant-id ../../x": (["preprocess", "--t1w", str(SCAN), "--out-dir", f"{R}/pp6",
                                             "--participant-id", "../../x"], "'../../x' is not 'sub-' followed by"),
    "preprocess --out-dir is a file": (["preprocess", "--t1w", str(SCAN), "--out-dir", f"{R}/a_file"], "is a file, not a folder"),
    "preprocess --t1w missing": (["preprocess", "--t1w", f"{R}/nope.nii.gz", "--out-dir", f"{R}/pp7"], "file not found"),
    "predict --saliency folder": (["predict", "--model", "{model}", "--t1w", "{on_grid}", "--saliency", f"{R}/folder"],
                                  "--saliency"),
    "predict --age -400": (["predict", "--model", "{model}", "--t1w", "{on_grid}", "--age", "-400"],
                           "--age -400 is outside 0-120 years"),
    "predict --model folder": (["predict", "--model", f"{R}/folder", "--t1w", "{on_grid}"], "no such model file"),
    "predict hostile model.pt": (["predict", "--model", "{hostile}", "--t1w", "{on_grid}"], "refused, not a model.pt that loads safely (it asks to run"),
    "predict --device cuda without GPU": (["predict", "--model", "{model}", "--t1w", "{on_grid}", "--device", "cuda"],
                                          "no CUDA GPU is available here"),
    "predict --device bogus": (["predict", "--model", "{model}", "--t1w", "{on_grid}", "--device", "tpu9"],
                               "is not a device name"),
    "resources --grids 2,x": (["resources", "--out", f"{R}/res", "--grids", "2,x"], "grid 'x' is not a number"),
    "resources --out is a file": (["resources", "--out", f"{R}/a_file"], "is a file, not a folder"),
    "simulate --n-hc -1": (["simulate", "--out", f"{R}/sim", "--n-hc", "-1"], "--n-hc -1 must be 0 or more"),
    "simulate --voxel-mm 9": (["simulate", "--out", f"{R}/sim", "--voxel-mm", "9"], "--voxel-mm 9 is outside 0.5-4 mm"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_1(case, files, capsys):
    if case.endswith("without GPU") and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    argv, text = CASES[case]
    names = {k: str(v) for k, v in files.items()}
    argv = [a.format(**names) for a in argv]
    before = sorted(p.relative_to(files["root"]) for p in files["root"].rglob("*"))

    code = main(argv)

    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, (out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"brainage {argv[0]}: ") and text in lines[0], lines[0]
    assert sorted(p.relative_to(files["root"]) for p in files["root"].rglob("*")) == before  # nothing written
    assert not (files["root"] / "pwned").exists()  # the hostile pickle ran nothing


def test_atomic_dir_moves_everything_or_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("kept")
    with pytest.raises(RuntimeError):
        with atomic_dir(out, last="qc.json") as tmp:
            (tmp / "volume.nii.gz").write_text("half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]

    moved = []
    real_replace = os.replace

    def spy(src, dst):
        moved.append(Path(dst).name)
        real_replace(src, dst)

    os.replace = spy
    try:
        with atomic_dir(out, last="qc.json") as tmp:
            for name in ("qc.json", "a.nii.gz", "z.png"):
                (tmp / name).write_text(name)
    finally:
        os.replace = real_replace
    assert moved[-1] == "qc.json" and sorted(moved) == ["a.nii.gz", "qc.json", "z.png"]
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "old.txt", "qc.json", "z.png"]


def test_a_killed_runs_temporaries_are_removed_by_the_next_write(tmp_path):
    from brainage.core.io import atomic_path

    stale = tmp_path / ".volumes.npy.abc123.tmp.npy"  # what SIGKILL left mid-write
    other = tmp_path / ".index.tsv.def456.tmp.tsv"  # another output's: not touched
    stale.write_text("half")
    other.write_text("half")
    with atomic_path(tmp_path / "volumes.npy") as tmp:
        tmp.write_text("whole")
    assert not stale.exists() and other.exists()
    assert (tmp_path / "volumes.npy").read_text() == "whole"

    out = tmp_path / "anat"
    (out / ".sub-a_desc-qc.json.x1.tmp").mkdir(parents=True)
    (out / ".sub-b_desc-qc.json.x2.tmp").mkdir()  # another subject's work in the same folder
    with atomic_dir(out, last="sub-a_desc-qc.json") as tmp:
        (tmp / "sub-a_desc-qc.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == [".sub-b_desc-qc.json.x2.tmp", "sub-a_desc-qc.json"]


def test_output_folder_that_cannot_be_written_is_refused_before_work(tmp_path):
    from brainage.core.io import InputError

    (tmp_path / "f").write_text("")
    with pytest.raises(InputError, match="is a file"):
        check_output_dir(tmp_path / "f" / "sub")
    check_output_dir(tmp_path / "new" / "deeper")  # creatable: accepted, nothing made
    assert not (tmp_path / "new").exists()
