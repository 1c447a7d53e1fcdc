"""The MINC engine: its rules render the study's chain (dry-run), refuse to run without
apptainer, and the pieces Debian's ``minc-tools`` can run here are checked for real."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from conftest import make_workdir, snakemake_cmd, tiny_config

from brainage.preprocess.minc import minc_commands, read_xfm, write_xfm

MINC_TOOLS = ("nii2mnc", "mnc2nii", "mincresample")
needs_minc = pytest.mark.skipif(
    any(shutil.which(t) is None for t in MINC_TOOLS),
    reason="Debian minc-tools not installed (apt-get install -y minc-tools): nii2mnc/mnc2nii/mincresample absent",
)


def _minc_workdir(tmp_path: Path) -> Path:
    config = tiny_config()
    config["preprocess"]["engine"] = "minc"
    config["preprocess"]["grids"] = [1, 2, 4]  # the study grids, and the tiny models' 4 mm
    return make_workdir(tmp_path / "work", config)


def _fake_apptainer(tmp_path: Path) -> dict:
    """PATH with an ``apptainer`` that only answers ``--version`` (Snakemake's check); anything else fails."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "apptainer"
    exe.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "apptainer version 1.3.4"; exit 0; }\n'
                   "echo 'fake apptainer: not for real runs' >&2\nexit 1\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.slow
def test_minc_rules_render_the_study_chain(tmp_path):
    work = _minc_workdir(tmp_path)
    env = _fake_apptainer(tmp_path)
    out = subprocess.run(snakemake_cmd(work, "preprocess_all", "-n", "-p", "--cores", "2", "--sdm", "apptainer"),
                         capture_output=True, text=True, timeout=600, env=env)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "rule preprocess_minc:" in text
    assert "Singularity image docker://nistmni/minc-toolkit:1.9.18 will be pulled" in text
    sub = "sub-hc0001"
    expected = [
        f"nii2mnc -quiet -clobber results/preprocess/{sub}/minc/{sub}_desc-ras_T1w.nii.gz $tmp/t1.mnc",
        "beast_normalize -modeldir /opt/minc/share/icbm152_model_09c -modelname mni_icbm152_t1_tal_nlin_sym_09c",
        "mincbeast -fill -median -same_resolution -conf /opt/minc/share/beast-library-1.1/default.1mm.conf",
        "N4BiasFieldCorrection -d 3 -i $tmp/t1.mnc -x $tmp/mask.mnc -s 4 -b [200] -c [50x50x50x50,1e-7]",
        "bestlinreg_s -clobber -lsq12 -xcorr -source_mask $tmp/mask.mnc",
        "itk_resample --clobber --order 3 --like /opt/minc/share/icbm152_model_09c/mni_icbm152_t1_tal_nlin_sym_09c.mnc",
        f"mv $tmp/native_to_icbm.xfm results/preprocess/{sub}/minc/{sub}_from-T1w_to-MNI152NLin2009cSym.xfm",
        "mnc2nii -quiet -nii -float $tmp/brain_icbm.mnc",
    ]
    for fragment in expected:
        assert fragment in text, fragment
    # the host-side finishing rule writes the engine-agnostic outputs
    assert f"results/preprocess/{sub}/anat/{sub}_space-MNI152NLin2009cAsym_res-1_desc-preproc_T1w.nii.gz" in text
    assert "rule qc_table:" in text


@pytest.mark.slow
@pytest.mark.parametrize("sdm, apptainer, message", [
    (False, True, "--software-deployment-method apptainer"),
    (True, False, "apptainer is not on PATH"),
])
def test_minc_engine_refuses_to_start_without_apptainer(tmp_path, sdm, apptainer, message):
    work = _minc_workdir(tmp_path)
    env = _fake_apptainer(tmp_path) if apptainer else dict(os.environ)
    if not apptainer:
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                      if not (Path(p) / "apptainer").exists() and not (Path(p) / "singularity").exists())
    args = ["preprocess_all", "-n", "--cores", "1"] + (["--sdm", "apptainer"] if sdm else [])
    out = subprocess.run(snakemake_cmd(work, *args), capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode != 0
    assert message in out.stdout + out.stderr


def test_commands_quote_paths_and_use_lsq12_xcorr():
    cmds = minc_commands("in dir/t1.nii.gz", "b.nii.gz", "m.nii.gz", "x.xfm")
    assert cmds[0].startswith("nii2mnc -quiet -clobber 'in dir/t1.nii.gz' ")
    reg = next(c for c in cmds if c.startswith("bestlinreg_s"))
    assert "-lsq12" in reg and "-xcorr" in reg and "-lsq9" not in reg
    assert any(c.startswith("itk_resample") and "--order 3" in c for c in cmds)


def test_xfm_round_trip(tmp_path):
    m = np.eye(4)
    m[:3, :3] = [[0.98, 0.1, 0.0], [-0.1, 1.02, 0.05], [0.0, -0.04, 0.97]]
    m[:3, 3] = [3.5, -12.25, 7.0]
    write_xfm(m, tmp_path / "a.xfm")
    np.testing.assert_allclose(read_xfm(tmp_path / "a.xfm"), m, atol=1e-9)


def _nifti(data, affine, path):
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    return path


def _psr_volume(tmp_path):
    data = np.random.default_rng(0).random((24, 20, 16)).astype(np.float32) * 1000
    affine = np.array([[0, 0, -2.0, 30], [-2.0, 0, 0, 20], [0, 2.0, 0, -15], [0, 0, 0, 1]])  # P, S, R axes, as IXI
    return _nifti(data, affine, tmp_path / "psr.nii")


def _round_trip(src: Path, tmp_path: Path) -> nib.Nifti1Image:
    subprocess.run(["nii2mnc", "-quiet", "-float", str(src), str(tmp_path / "x.mnc")], check=True, capture_output=True)
    subprocess.run(["mnc2nii", "-quiet", "-nii", "-float", str(tmp_path / "x.mnc"), str(tmp_path / "x_back.nii")],
                   check=True, capture_output=True)
    return nib.as_closest_canonical(nib.load(tmp_path / "x_back.nii"))


@needs_minc
def test_nii2mnc_mnc2nii_round_trip_of_the_ras_input(tmp_path):
    """The chain's input (write_ras_input of a PSR scan) survives nii2mnc -> mnc2nii unchanged."""
    from brainage.preprocess.minc import write_ras_input

    src = _psr_volume(tmp_path)
    write_ras_input(src, tmp_path / "ras.nii.gz", "sub-psr")
    back = _round_trip(tmp_path / "ras.nii.gz", tmp_path)
    original = nib.as_closest_canonical(nib.load(src))
    np.testing.assert_allclose(back.affine, original.affine, atol=1e-4)
    np.testing.assert_allclose(back.get_fdata(), original.get_fdata(), rtol=1e-5, atol=1e-3)


@needs_minc
def test_debian_nii2mnc_misplaces_permuted_flipped_axes(tmp_path):
    """Why write_ras_input exists: fed the PSR file directly, nii2mnc 2.3 shifts it in space
    (the data survive, the world position does not)."""
    back = _round_trip(_psr_volume(tmp_path), tmp_path)
    original = nib.as_closest_canonical(nib.load(tmp_path / "psr.nii"))
    np.testing.assert_allclose(back.get_fdata(), original.get_fdata(), rtol=1e-5, atol=1e-3)
    if np.allclose(back.affine, original.affine, atol=1e-4):
        pytest.skip("this nii2mnc places permuted flipped axes correctly: the RAS copy is merely harmless")
    assert np.abs(back.affine[:3, 3] - original.affine[:3, 3]).max() >= 2.0  # off by a voxel or more


@needs_minc
def test_mincresample_through_an_xfm_matches_scipy(tmp_path):
    """mincresample -transformation (our .xfm writer) onto a target grid equals scipy's trilinear
    resampling through the same affine: the convention finish_minc relies on (xfm = native->MNI)."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (30, 28, 26)), indexing="ij")
    data = (1000 * np.exp(-((x - 0.1) ** 2 + 2 * y ** 2 + (z + 0.2) ** 2) / 0.3)).astype(np.float32)
    src_affine = np.array([[2.0, 0, 0, -29], [0, 2.0, 0, -27], [0, 0, 2.0, -25], [0, 0, 0, 1]])
    tgt_affine = np.array([[2.5, 0, 0, -25], [0, 2.5, 0, -25], [0, 0, 2.5, -20], [0, 0, 0, 1]])
    tgt_shape = (20, 20, 17)
    angle = np.deg2rad(8)
    native_to_mni = np.eye(4)
    native_to_mni[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.05]]
    native_to_mni[:3, 3] = [2.0, -3.0, 1.5]
    _nifti(data, src_affine, tmp_path / "src.nii")
    _nifti(np.zeros(tgt_shape), tgt_affine, tmp_path / "like.nii")
    write_xfm(native_to_mni, tmp_path / "n2m.xfm")
    for name in ("src", "like"):
        subprocess.run(["nii2mnc", "-quiet", "-float", str(tmp_path / f"{name}.nii"), str(tmp_path / f"{name}.mnc")], check=True)
    subprocess.run(["mincresample", "-quiet", "-trilinear", "-like", str(tmp_path / "like.mnc"), "-transformation",
                    str(tmp_path / "n2m.xfm"), str(tmp_path / "src.mnc"), str(tmp_path / "out.mnc")], check=True)
    subprocess.run(["mnc2nii", "-quiet", "-nii", "-float", str(tmp_path / "out.mnc"), str(tmp_path / "out.nii")], check=True)
    out = nib.as_closest_canonical(nib.load(tmp_path / "out.nii"))
    np.testing.assert_allclose(out.affine, tgt_affine, atol=1e-4)

    vox = np.linalg.inv(src_affine) @ np.linalg.inv(native_to_mni) @ tgt_affine
    expected = ndimage.affine_transform(data, vox[:3, :3], offset=vox[:3, 3], output_shape=tgt_shape, order=1,
                                        mode="constant", cval=0.0)
    got = out.get_fdata()
    inside = expected > 50  # away from the field-of-view edge, where the two differ in padding only
    np.testing.assert_allclose(got[inside], expected[inside], rtol=0.02, atol=5.0)


def test_finish_minc_on_identity_products(tmp_path):
    """The host-side finishing of MINC products: template in, template out, QC passes."""
    from brainage.data.atlases import load_template_1mm
    from brainage.core.grids import TEMPLATE_AFFINE_1MM, template_grid
    from brainage.preprocess.minc import finish_minc

    tpl, mask = load_template_1mm()
    _nifti(tpl, TEMPLATE_AFFINE_1MM, tmp_path / "brain.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), TEMPLATE_AFFINE_1MM), tmp_path / "mask.nii.gz")
    write_xfm(np.eye(4), tmp_path / "n2m.xfm")
    qc = finish_minc(tmp_path / "brain.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "n2m.xfm", "raw.nii.gz",
                     tmp_path / "out", "sub-t1", [2])
    assert qc["passed"] and qc["ncc"] > 0.99 and qc["engine"] == "minc"
    assert qc["brain_volume_ml"] == pytest.approx(mask.sum() / 1000)
    img = nib.load(tmp_path / "out" / "sub-t1_space-MNI152NLin2009cAsym_res-2_desc-preproc_T1w.nii.gz")
    assert img.shape == template_grid(2).shape
