"""``brainage predict``: one new scan, a trained model; clean failures on bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainage.config import resolved_config
from brainage.data.cache import normalise_intensity
from brainage.core.grids import template_grid
from brainage.models.networks import build_age_model

IXI = Path(__file__).parent / "data" / "ixi"
ARCH = {"backbone": "resnet18", "width": 0.25, "conv1_stride": 1, "norm": "batch"}


def _save_model(path: Path, res: float) -> torch.nn.Module:
    """A model.pt as the train stage writes it (random weights: predictions are arbitrary)."""
    torch.manual_seed(0)
    model = build_age_model(ARCH, age_mean=55.0, age_sd=15.0)
    grid = template_grid(res)
    meta = {
        "name": f"demo-res{res:g}", "kind": "e2e", "architecture": ARCH, "grid_res": float(res),
        "grid_shape": list(grid.shape), "age": {"train_mean": 55.0, "train_sd": 15.0},
        "preprocess": {"engine": "native"},
        # a calibration as training stores it (brainage.core.intervals): +- 7.5 y at 90 %
        "interval": {"level": 0.9, "halfwidth": 7.5, "n": 20, "edges": [], "halfwidths": []},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "meta": meta}, path)
    return model.eval()


@pytest.fixture(scope="module")
def model_4mm(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "demo4" / "model.pt"
    return path, _save_model(path, 4)


def _run(*args: str) -> subprocess.CompletedProcess:
    """The real command line in a child process (exit status, stdout, stderr as a user sees them)."""
    return subprocess.run([sys.executable, "-m", "brainage.cli", "predict", *args], capture_output=True, text=True, timeout=600)


def _run_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """The same command in this process (no second torch import: seconds instead of ~10 s)."""
    from brainage.cli import main

    code = main(["predict", *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def _one_clear_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def _template_volume(res: float, seed: int = 0) -> np.ndarray:
    grid = template_grid(res)
    rng = np.random.default_rng(seed)
    vol = np.zeros(grid.shape, dtype=np.float32)
    c = [n // 2 for n in grid.shape]
    r = [n // 3 for n in grid.shape]
    vol[c[0] - r[0] : c[0] + r[0], c[1] - r[1] : c[1] + r[1], c[2] - r[2] : c[2] + r[2]] = 1.0
    return vol * rng.uniform(0.3, 1.0, grid.shape).astype(np.float32)


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.Nifti1Image(data, affine).to_filename(str(path))
    return path


def test_4d_file_fails_cleanly(model_4mm, tmp_path):
    scan = _save(np.ones((20, 20, 20, 3), np.float32), np.eye(4), tmp_path / "bold.nii.gz")
    line = _one_clear_line(_run("--model", str(model_4mm[0]), "--t1w", str(scan)))
    assert "bold.nii.gz" in line and "3D" in line and "4D" in line


def test_non_image_file_fails_cleanly(model_4mm, tmp_path, capsys):
    scan = tmp_path / "scan.nii.gz"
    scan.write_text("participant_id\tage\nsub-01\t63\n")
    line = _one_clear_line(_run_here(capsys, "--model", str(model_4mm[0]), "--t1w", str(scan)))
    assert "scan.nii.gz" in line and "not a readable image" in line


def test_missing_model_fails_cleanly(tmp_path, capsys):
    scan = _save(_template_volume(4), template_grid(4).affine, tmp_path / "t1.nii.gz")
    line = _one_clear_line(_run_here(capsys, "--model", str(tmp_path / "nope" / "model.pt"), "--t1w", str(scan)))
    assert "no such model file" in line


def test_grid_mismatch_is_refused(model_4mm, tmp_path, capsys):
    # a volume already on the 2 mm template grid given to a model trained at 4 mm
    scan = _save(_template_volume(2), template_grid(2).affine, tmp_path / "sub-x_res-2_T1w.nii.gz")
    line = _one_clear_line(_run_here(capsys, "--model", str(model_4mm[0]), "--t1w", str(scan), "--age", "63"))
    assert "2 mm template grid (96x114x96)" in line and "4 mm template grid (48x57x48)" in line


def test_preprocessed_input_on_the_model_grid(model_4mm, tmp_path, capsys):
    path, model = model_4mm
    volume = _template_volume(4, seed=3)
    scan = _save(volume, template_grid(4).affine, tmp_path / "sub-y_res-4_T1w.nii.gz")
    out = tmp_path / "sal.nii.gz"
    proc = _run_here(capsys, "--model", str(path), "--t1w", str(scan), "--age", "63", "--saliency", str(out))
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():  # independent reference: the model on the normalised volume
        expected = float(model(torch.from_numpy(normalise_intensity(volume))[None, None]))
    predicted = float(re.search(r"predicted brain age: ([-\d.]+) years", proc.stdout).group(1))
    bag = float(re.search(r"brain-age gap \(BAG\): ([-+\d.]+) years", proc.stdout).group(1))
    assert predicted == pytest.approx(expected, abs=0.051)
    assert bag == pytest.approx(expected - 63, abs=0.051)
    lower, upper = map(float, re.search(r"90 % interval: ([-\d.]+) to ([-\d.]+) years", proc.stdout).groups())
    assert lower == pytest.approx(expected - 7.5, abs=0.051) and upper == pytest.approx(expected + 7.5, abs=0.051)
    img = nib.load(str(out))
    assert img.shape == template_grid(4).shape and np.allclose(img.affine, template_grid(4).affine)
    sal = img.get_fdata()
    assert sal.min() == pytest.approx(0, abs=1e-4) and sal.max() == pytest.approx(1, abs=1e-4)


@pytest.fixture(scope="module")
def demo_model_4mm(tmp_path_factory):
    """A demo model trained here by the train stage's engine (brainage.train.engine.train_model).

    Tiny ResNet18 (width 1/8) on 24 synthetic 4 mm template-grid volumes, 2 epochs: its ages
    are not meaningful, but its model.pt is exactly what the pipeline writes, with the demo
    config's preprocessing section stored in it (what ``brainage predict`` re-runs). ~10 s.
    """
    from brainage.data.cache import build_cache
    from brainage.data.splits import make_splits
    from brainage.train.engine import train_model
    from synthetic_volumes import synthetic_cohort

    root = tmp_path_factory.mktemp("demo_model")
    grid = template_grid(4)
    participants, paths = synthetic_cohort(root / "vols", n_hc=24, n_ad=0, shape=grid.shape)
    splits = make_splits(participants, seed=0)
    build_cache(paths, splits, root / "volumes.npy", root / "index.tsv")
    demo = resolved_config()  # the demo's settings
    entry = {"backbone": "resnet18", "grid": 4, "loss": "l1", "batch_size": 8, "epochs": 2, "augment": False,
             "width": 0.125, "conv1_stride": 2}
    train_model("demo4", entry, {"augment": {}, "num_workers": 0}, splits, root / "volumes.npy", root / "index.tsv",
                root / "models" / "demo4", seed=0, preprocess=demo["preprocess"], progress=False)
    return root / "models" / "demo4" / "model.pt"


@pytest.mark.slow
def test_predict_agrees_with_the_pipeline_on_a_real_scan(demo_model_4mm, tmp_path, capsys):
    """``brainage predict`` on a raw IXI scan against the pipeline's own path for the same scan:
    the preprocess stage (the model's stored preprocess settings), the float16 training cache and
    the inference stage's batch predictor. The two agree to 0.05 y (the cache's float16)."""
    import pandas as pd

    from brainage.data.cache import CachedVolumes, build_cache
    from brainage.apply.infer import predict_ages
    from brainage.models.files import iter_batches
    from brainage.core.paths import preprocessed_t1w
    from brainage.preprocess import preprocess_t1w
    from brainage.models.files import load_model

    scan = IXI / "IXI012-HH-1211-T1_ds.nii.gz"
    proc = _run_here(capsys, "--model", str(demo_model_4mm), "--t1w", str(scan), "--threads", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    predicted = float(re.search(r"predicted brain age: ([-\d.]+) years", proc.stdout).group(1))

    model, meta = load_model(demo_model_4mm)
    settings = resolved_config()["preprocess"]
    pid = "sub-IXI012"
    qc = preprocess_t1w(scan, tmp_path / "pre", pid, [4], settings=settings, threads=2)
    assert qc["passed"], qc["reasons"]
    table = pd.DataFrame({"participant_id": [pid], "age": [_ixi_ages()["IXI012"]], "split": ["test"]})
    build_cache({pid: preprocessed_t1w(tmp_path / "pre", pid, 4)}, table, tmp_path / "v.npy", tmp_path / "i.tsv")
    cache = CachedVolumes(tmp_path / "v.npy", tmp_path / "i.tsv")
    by_pipeline = predict_ages(model, iter_batches([pid], cache.volume, 1))[pid]
    assert predicted == pytest.approx(by_pipeline, abs=0.05), (predicted, by_pipeline)
    assert meta["preprocess"] == settings  # the same preprocessing the CLI re-ran from the model


def _ixi_ages() -> dict[str, float]:
    table = np.genfromtxt(IXI / "demographics.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    return {str(row["IXI_ID"]): float(row["AGE"]) for row in table}


@pytest.mark.slow
@pytest.mark.parametrize("scan", sorted(p.name for p in IXI.glob("IXI*-T1_ds.nii.gz")))
def test_real_ixi_scans(scan, demo_model_4mm, tmp_path, capsys):
    """Each real whole-head IXI scan through the full preprocessing (deepbet, N4, affine): ~40 s each.

    Run in this process (the command's own ``main``), sharing one trained demo model; the
    child-process command line is covered by the failure tests above.
    """
    from brainage.models.files import load_model

    assert len(list(IXI.glob("IXI*-T1_ds.nii.gz"))) == 3
    age = _ixi_ages()[scan.split("-")[0]]
    out = tmp_path / "sal.nii.gz"
    proc = _run_here(capsys, "--model", str(demo_model_4mm), "--t1w", str(IXI / scan), "--age", str(age),
                     "--saliency", str(out), "--threads", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(f"{scan}: {proc.stdout}", file=sys.stderr)  # the predicted ages, visible with pytest -s / -rA
    predicted = float(re.search(r"predicted brain age: ([-\d.]+) years", proc.stdout).group(1))
    bag = float(re.search(r"brain-age gap \(BAG\): ([-+\d.]+) years", proc.stdout).group(1))
    assert bag == pytest.approx(predicted - age, abs=0.11)
    assert "preprocessing QC: NCC" in proc.stdout and "passed" in proc.stdout
    # the model's output is an age: inside the range its head maps to (train mean +- a few SD)
    _, meta = load_model(demo_model_4mm)
    assert abs(predicted - meta["age"]["train_mean"]) < 6 * meta["age"]["train_sd"]
    img = nib.load(str(out))
    assert img.shape == template_grid(4).shape and np.allclose(img.affine, template_grid(4).affine)
    sal = img.get_fdata()
    assert sal.min() == pytest.approx(0, abs=1e-4) and sal.max() == pytest.approx(1, abs=1e-4)
