"""Preprocessing (brainage.preprocess): the native chain on a real IXI scan and on a simulated
subject with known truth, bad input, the CLI, and the helpers against independent references."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import assert_same_preprocessing

from brainage.core.grids import TEMPLATE_AFFINE_1MM, downsample_from_1mm, template_grid
from brainage.core.io import InputError
from brainage.data.simulate import scan as sim
from brainage.data.simulate.anatomy import build_anatomy
from brainage.data.simulate.model import SimulationModel, plan_cohort

REPO = Path(__file__).resolve().parents[1]
IXI = REPO / "tests" / "data" / "ixi" / "IXI012-HH-1211-T1_ds.nii.gz"
SPACE = "MNI152NLin2009cAsym"


def _ixi() -> Path:
    assert IXI.exists(), f"the committed IXI sample scan is missing: {IXI}"
    return IXI


def _template_brain_points(step: int = 2) -> np.ndarray:
    """Homogeneous MNI coordinates (4, N) of every ``step``-th template brain voxel."""
    from brainage.data.atlases import load_template_1mm

    _, mask = load_template_1mm()
    ijk = np.argwhere(mask[::step, ::step, ::step]) * step
    return TEMPLATE_AFFINE_1MM @ np.c_[ijk, np.ones(len(ijk))].T


# --------------------------------------------------------------------------------------------
# the native chain end to end, through the command line


@pytest.fixture(scope="module")
def ixi_preprocessed(tmp_path_factory):
    """``brainage preprocess`` of the real IXI head with ``--threads n``: its output folder, made
    once per module and thread count (the chain test and the thread test share the 2-thread run)."""
    root, made = tmp_path_factory.mktemp("ixi_cli"), {}

    def run(threads: int) -> Path:
        if threads not in made:
            out = root / f"threads{threads}"
            done = subprocess.run(
                [sys.executable, "-m", "brainage.cli", "preprocess", "--t1w", str(_ixi()), "--out-dir", str(out),
                 "--grids", "2,4", "--participant-id", "sub-IXI012", "--threads", str(threads)],
                capture_output=True, text=True, timeout=600,
            )
            assert done.returncode == 0, done.stderr[-3000:]
            made[threads] = out
        return made[threads]

    return run


@pytest.mark.slow
def test_cli_native_chain_on_real_ixi_scan(ixi_preprocessed):
    """`brainage preprocess` on a whole-head PSR IXI scan: QC passes, plausible volume, files."""
    out = ixi_preprocessed(2)
    qc = json.loads((out / "sub-IXI012_desc-qc.json").read_text())
    assert {"ncc", "brain_volume_ml", "passed"} <= set(qc)
    assert qc["passed"], qc["reasons"]
    assert 1000 <= qc["brain_volume_ml"] <= 2000
    assert 0.5 <= qc["ncc"] <= 1.0
    assert 0.8 < qc["affine"]["determinant"] < 1.3  # an adult head is about the template's size

    for res in (2, 4):
        img = nib.load(out / f"sub-IXI012_space-{SPACE}_res-{res}_desc-preproc_T1w.nii.gz")
        grid = template_grid(res)
        assert img.shape == grid.shape and np.allclose(img.affine, grid.affine)
        data = np.asarray(img.dataobj)
        assert data.min() >= 0 and data.max() <= 1  # normalised inside the brain
    # the 4 mm grid is the 2 mm one block-averaged (an independent reshape-mean here)
    v2 = nib.load(out / f"sub-IXI012_space-{SPACE}_res-2_desc-preproc_T1w.nii.gz").get_fdata()
    v4 = nib.load(out / f"sub-IXI012_space-{SPACE}_res-4_desc-preproc_T1w.nii.gz").get_fdata()
    np.testing.assert_allclose(v4, v2.reshape(48, 2, 57, 2, 48, 2).mean(axis=(1, 3, 5)), atol=1e-5)

    raw = nib.load(_ixi())
    mask = nib.load(out / "sub-IXI012_desc-brain_mask.nii.gz")
    assert mask.shape == raw.shape and np.allclose(mask.affine, raw.affine)
    assert abs(np.asarray(mask.dataobj).sum() * 8 / 1000 - qc["brain_volume_ml"]) < 1e-6

    # the JSON matrix agrees with ANTs applying its own transform file to points (LPS there)
    import ants
    import pandas as pd

    xfm = json.loads((out / f"sub-IXI012_from-T1w_to-{SPACE}_mode-image_xfm.json").read_text())
    matrix = np.array(xfm["template_to_native_ras"])
    pts = np.array([[0.0, -18.0, 18.0], [40.0, 20.0, -10.0], [-30.0, -60.0, 50.0]])
    lps = pd.DataFrame(pts * [-1, -1, 1], columns=["x", "y", "z"])
    by_ants = ants.apply_transforms_to_points(3, lps, [str(out / f"sub-IXI012_from-T1w_to-{SPACE}_mode-image_xfm.mat")])
    np.testing.assert_allclose(by_ants.values * [-1, -1, 1], (matrix @ np.c_[pts, np.ones(3)].T)[:3].T, atol=1e-3)
    assert (out / "sub-IXI012_desc-qc.png").stat().st_size > 10_000


@pytest.mark.slow
def test_outputs_do_not_depend_on_the_thread_count(ixi_preprocessed):
    """The same real head preprocessed with 1, 2 and 4 threads gives the same volumes, affine
    and QC to the bit (a laptop job runs 1 thread, a SLURM job 4). ITK's N4 and registration
    sum per-thread partial results; with ITK on its job's threads the 2-thread affine turned
    0.05 degrees more and 23 % of the 2 mm voxels changed."""
    for threads in (2, 4):
        assert_same_preprocessing(ixi_preprocessed(threads), ixi_preprocessed(1), png=True)


@pytest.mark.slow
def test_registration_and_mask_against_simulated_truth(tmp_path):
    """A simulated 2 mm subject (rotated, scaled, biased): affine error and mask Dice vs truth."""
    from brainage.preprocess import preprocess_t1w

    plan = plan_cohort(1, 0, 0, 2.0, 42, tmp_path / "bids")
    row = plan.iloc[0]
    anatomy = build_anatomy(2.0)
    scan = sim.simulate_scan(row, anatomy, 42)
    t1w = tmp_path / "sub_T1w.nii.gz"
    nib.save(scan.image, t1w)
    qc = preprocess_t1w(t1w, tmp_path / "out", "sub-hc0001", [2, 4])
    assert qc["passed"], qc["reasons"]

    xfm = json.loads((tmp_path / "out" / f"sub-hc0001_from-T1w_to-{SPACE}_mode-image_xfm.json").read_text())
    pts = _template_brain_points()
    # truth: the least-squares affine of the simulator's full map (pose + warp + ageing fields),
    # what an ideal 12-dof registration finds (benchmarks/accuracy_preprocess.py docstring)
    true, _ = sim.best_affine_template_to_native(row, anatomy, 42, pts[:3])
    error = np.linalg.norm((np.array(xfm["template_to_native_ras"]) @ pts - true @ pts)[:3], axis=0)
    assert error.mean() <= 2.0, f"mean displacement error {error.mean():.2f} mm"

    found = np.asarray(nib.load(tmp_path / "out" / "sub-hc0001_desc-brain_mask.nii.gz").dataobj) > 0
    truth = np.asarray(scan.mask.dataobj) > 0
    dice = 2 * (found & truth).sum() / (found.sum() + truth.sum())
    assert dice >= 0.95, f"mask Dice {dice:.3f}"
    # the default deepbet cube of a 2 mm scan is 192, not deepbet's 256 (BrainMaskSettings)
    assert json.loads((tmp_path / "out" / "sub-hc0001_desc-qc.json").read_text())["brain_mask_cube"] == 192


@pytest.mark.slow
def test_a_batch_gives_each_subject_what_it_would_get_alone(tmp_path):
    """Subjects of a batch share the template, the registration's fixed side and deepbet's
    networks (made once per process): the second subject's outputs are those it gets in a
    fresh process, and the shared template cannot be written by any subject."""
    from brainage.preprocess import finish, load_template, native, preprocess_t1w

    plan = plan_cohort(2, 0, 0, 2.0, 42, tmp_path / "bids")
    anatomy = build_anatomy(2.0)
    scans = {}
    for row in plan.to_dict("records"):
        scans[row["participant_id"]] = tmp_path / f"{row['participant_id']}_T1w.nii.gz"
        nib.save(sim.simulate_scan(row, anatomy, 42).image, scans[row["participant_id"]])
    first, second = scans

    def fresh_process():
        for cache in (finish._load_template, native.registration_target, native._deepbet):
            cache.cache_clear()

    # the demo's pyramid (config/config.yaml): both subjects' finest level is 4 mm
    settings = {"native": {"registration": {"levels_mm": [8, 4], "smoothing_mm": [4, 2], "iterations": [200, 100]}}}
    fresh_process()
    for sub in (first, second):  # one batch
        preprocess_t1w(scans[sub], tmp_path / "batch" / sub, sub, [2, 4], settings=settings, threads=1)
    assert native.registration_target.cache_info().hits == 1  # the second subject reused it
    assert list(native.registration_target(load_template())._levels) == [4.0]  # and its 4 mm level
    fresh_process()
    preprocess_t1w(scans[second], tmp_path / "alone", second, [2, 4], settings=settings, threads=1)

    assert len(list((tmp_path / "alone").iterdir())) == 7
    # the same scan path in both runs: only the timings may differ, QC figure bytes included
    assert_same_preprocessing(tmp_path / "batch" / second, tmp_path / "alone", volatile={"runtime_s", "timings_s"},
                              png=True)

    template = load_template()
    for array in (template.brain, template.mask, *template.on_grid(2.0)):
        with pytest.raises(ValueError, match="read-only"):
            array[0, 0, 0] = 1


def test_deepbet_cube_follows_the_scan_resolution():
    from brainage.preprocess import settings_from_config

    auto = settings_from_config(None)["brain_mask"]
    assert (auto.cube(2.0), auto.cube(1.5), auto.cube(1.2), auto.cube(1.0)) == (192, 192, 256, 256)
    fixed = settings_from_config({"native": {"brain_mask": {"shape": 256}}})["brain_mask"]
    assert fixed.cube(2.0) == 256
    with pytest.raises(ValueError, match="unknown BrainMaskSettings keys"):
        settings_from_config({"native": {"brain_mask": {"size": 192}}})


#: bias field of the N4 test: +-50 % over the field of view (the simulator's default is +-30 %)
N4_BIAS_RANGE = (0.5, 1.5)
#: N4 must shrink the bias left in the brain by at least this factor (seed 42 gives 2.05; the
#: remaining ~0.024 log-SD is anatomy N4 reads as bias, so stronger fields give larger factors)
N4_MIN_FACTOR = 1.7


@pytest.mark.slow
def test_n4_removes_the_simulated_bias_field():
    """N4 in the true brain mask against the simulator's truth: the same subject simulated with a
    flat field (bias_range (1, 1) draws the same random numbers) is the unbiased reference, and
    the bias is the SD of log(image / reference) over the brain's brighter three quarters."""
    from brainage.preprocess import native

    row = plan_cohort(1, 0, 0, 2.0, 42, "bids").iloc[0]
    anatomy = build_anatomy(2.0)
    biased = sim.simulate_scan(row, anatomy, 42, SimulationModel(bias_range=N4_BIAS_RANGE))
    flat = sim.simulate_scan(row, anatomy, 42, SimulationModel(bias_range=(1.0, 1.0)))
    raw = np.asarray(biased.image.dataobj, dtype=np.float32)
    reference = np.asarray(flat.image.dataobj, dtype=np.float32)
    mask = np.asarray(biased.mask.dataobj) > 0
    inside = mask & (reference > np.percentile(reference[mask], 25))  # tissue, not noisy CSF

    corrected, _ = native.n4_in_mask(native.ants_image(raw, biased.image.affine),
                                        native.ants_image(mask.astype(np.float32), biased.image.affine))

    def bias(image: np.ndarray) -> float:
        return float(np.log(image[inside] / reference[inside]).std())

    before, after = bias(raw), bias(corrected.numpy())
    assert before >= 0.04, f"the simulated field is too weak to test N4 (log-SD {before:.3f})"
    assert after * N4_MIN_FACTOR <= before, f"bias log-SD {before:.3f} -> {after:.3f} after N4 ({before / after:.2f}x)"


# --------------------------------------------------------------------------------------------
# bad input: one line naming subject, file and problem; nothing written


def _write(path: Path, data: np.ndarray, zooms=(1.0, 1.0, 1.0)) -> Path:
    affine = np.diag([*zooms, 1.0])
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.mark.parametrize(
    "name, make, problem",
    [
        ("unreadable", lambda p: (p.write_bytes(gzip.compress(b"not a nifti")), p)[1], "cannot read image"),
        ("four_d", lambda p: _write(p, np.ones((20, 20, 20, 3), np.float32)), "expected a 3D"),
        ("nan", lambda p: _write(p, np.where(np.arange(8000).reshape(20, 20, 20) == 5, np.nan, 1.0).astype(np.float32)), "NaN/Inf"),
        ("zeros", lambda p: _write(p, np.zeros((20, 20, 20), np.float32)), "all zeros"),
        ("voxels", lambda p: _write(p, np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), (1.0, 1.0, 25.0)), "absurd voxel size"),
    ],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, name, make, problem):
    from brainage.preprocess import preprocess_t1w

    path = make(tmp_path / f"{name}_T1w.nii.gz")
    out = tmp_path / "out"
    with pytest.raises(InputError) as err:
        preprocess_t1w(path, out, "sub-bad01", [2])
    message = str(err.value)
    assert "\n" not in message and "sub-bad01" in message and str(path) in message and problem in message
    assert not out.exists() or not any(out.iterdir())


def test_cli_reports_bad_input_on_one_line(tmp_path):
    path = _write(tmp_path / "zero_T1w.nii.gz", np.zeros((20, 20, 20), np.float32))
    done = subprocess.run(
        [sys.executable, "-m", "brainage.cli", "preprocess", "--t1w", str(path), "--out-dir", str(tmp_path / "o"),
         "--participant-id", "sub-z1"], capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "sub-z1" in lines[0] and "all zeros" in lines[0]


def test_failed_registration_is_bad_input(tmp_path):
    """An affine that collapses the head (determinant ~0.001) is a failed registration."""
    from brainage.data.atlases import load_template_1mm
    from brainage.preprocess import finish_from_base, load_template
    from brainage.preprocess.qc import QCThresholds

    tpl, mask = load_template_1mm()
    collapse = np.diag([10.0, 10.0, 10.0, 1.0])  # template -> native: det of the inverse 1e-3
    with pytest.raises(InputError, match="registration failed"):
        finish_from_base(tpl, mask, 1.0, collapse, np.ones((4, 4, 4), bool), np.eye(4), "sub-x", "x.nii.gz",
                         tmp_path / "out", [2], load_template(), QCThresholds())
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------------------------
# helpers against independent references


def test_affine_round_trip_through_itk_file(tmp_path):
    """RAS matrix -> ITK .mat -> RAS matrix is the identity map; ANTs applies it as documented."""
    import ants
    import pandas as pd

    from brainage.preprocess.transforms import read_ants_affine, write_ants_affine

    rng = np.random.default_rng(3)
    matrix = np.eye(4)
    matrix[:3, :3] += rng.normal(0, 0.1, (3, 3))
    matrix[:3, 3] = rng.normal(0, 10, 3)
    write_ants_affine(matrix, tmp_path / "x.mat")
    np.testing.assert_allclose(read_ants_affine(tmp_path / "x.mat"), matrix, atol=1e-5)
    pt = np.array([12.0, -7.0, 30.0])
    moved = ants.apply_transforms_to_points(3, pd.DataFrame([pt * [-1, -1, 1]], columns=["x", "y", "z"]),
                                            [str(tmp_path / "x.mat")])
    np.testing.assert_allclose(moved.values[0] * [-1, -1, 1], (matrix @ np.r_[pt, 1])[:3], atol=1e-3)


def test_ncc_is_pearson_r_and_affine_summary_is_svd():
    from scipy import stats

    from brainage.preprocess.qc import affine_summary, ncc

    rng = np.random.default_rng(0)
    a, b = rng.random((10, 10, 10)), rng.random((10, 10, 10))
    mask = rng.random((10, 10, 10)) > 0.3
    b = a + 0.5 * b
    assert ncc(a, b, mask) == pytest.approx(stats.pearsonr(a[mask], b[mask])[0], abs=1e-12)

    theta = np.deg2rad(20)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag([1.1, 0.9, 1.2])
    s = affine_summary(m)
    assert s["determinant"] == pytest.approx(1.1 * 0.9 * 1.2)
    assert s["scales"] == pytest.approx([1.2, 1.1, 0.9])
    assert s["rotation_deg"] == pytest.approx(20.0, abs=1e-6)


def test_block_downsampling_matches_the_1mm_definition():
    """2 mm -> 4 mm block means equal 1 mm -> 4 mm (brainage.core.grids), on a random 1 mm volume."""
    from brainage.preprocess import base_resolution, downsample_grid

    vol = np.random.default_rng(1).random((193, 229, 193)).astype(np.float32)
    via2 = downsample_grid(downsample_from_1mm(vol, 2), 2.0, 4.0)
    np.testing.assert_allclose(via2, downsample_from_1mm(vol, 4), atol=1e-5)
    assert base_resolution([2, 4], 2.0) == 2.0  # the demo: 2 mm scans straight onto 2 mm
    assert base_resolution([1, 2], 2.0) == 1.0  # the study's chain through 1 mm
    assert base_resolution([2, 4], 1.0) == 1.0  # a 1 mm scan is never resampled coarser first
    assert base_resolution([4], 2.0) == 2.0


def test_normalisation_maps_brain_percentiles_to_unit_range():
    from brainage.preprocess.finish import normalise_in_brain

    rng = np.random.default_rng(2)
    vol = rng.normal(100, 20, (30, 30, 30)).astype(np.float32)
    brain = np.zeros(vol.shape, bool)
    brain[5:25, 5:25, 5:25] = True
    out = normalise_in_brain(vol, brain)
    lo, hi = np.percentile(vol[brain], [0.5, 99.5])
    np.testing.assert_allclose(out[brain], np.clip((vol[brain] - lo) / (hi - lo), 0, 1), rtol=1e-5, atol=1e-6)
    assert (out[~brain] == 0).all()


def test_cohort_qc_table_excludes_failures_with_reason(tmp_path):
    import pandas as pd

    from brainage.preprocess.qc import write_cohort_qc

    def qc(pid, passed, reasons):
        path = tmp_path / f"{pid}.json"
        path.write_text(json.dumps({"participant_id": pid, "passed": passed, "reasons": reasons, "ncc": 0.6,
                                    "brain_volume_ml": 1200.0, "runtime_s": 9.0,
                                    "affine": {"determinant": 1.0, "scales": [1.0, 1.0, 1.0], "rotation_deg": 3.0}}))
        return path

    paths = [qc("sub-b", False, ["ncc 0.300 < 0.5"]), qc("sub-a", True, [])]
    table = write_cohort_qc(paths, tmp_path / "qc.tsv", tmp_path / "excluded.tsv")
    assert list(table["participant_id"]) == ["sub-a", "sub-b"]
    excluded = pd.read_csv(tmp_path / "excluded.tsv", sep="\t")
    assert excluded.to_dict("records") == [{"participant_id": "sub-b", "reason": "ncc 0.300 < 0.5"}]
    with pytest.raises(InputError, match="sub-b"):
        write_cohort_qc(paths, tmp_path / "qc2.tsv", tmp_path / "excluded2.tsv", on_fail="stop")
    assert (tmp_path / "excluded2.tsv").exists()  # the tables are written before stopping
