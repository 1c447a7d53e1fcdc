"""The MINC engine: the study's MINC Toolkit chain, run in the ``nistmni/minc-toolkit`` container.

The chain (:func:`minc_commands`, one shell script per subject) is::

    nii2mnc                      raw NIfTI -> MINC
    beast_normalize              intensity-normalised copy in ICBM space (BEaST's input)
    mincbeast                    BEaST brain mask with the library's configuration
    mincresample -invert         the mask back to native space
    N4BiasFieldCorrection        non-uniformity correction inside the mask
    bestlinreg_s -lsq12 -xcorr   12-parameter affine, cross-correlation (its default is -lsq9)
    itk_resample --order 3       B-spline onto the 1 mm ICBM grid (mincresample has no B-spline)
    mnc2nii                      back to NIfTI

``nii2mnc`` of Debian's minc-tools 2.3 puts permuted *and* flipped axes (e.g. IXI's PSR) at
the wrong world position (tests/test_minc.py shows it), so the chain is fed an RAS+ copy made
on the host by :func:`write_ras_input`, which also checks the scan (bad input fails there with
one line, before any container starts). Its three products (1 mm brain, native mask, native-to-MNI ``.xfm``) are finished on the host
by :func:`finish_minc` into the same outputs as the native engine, so every later stage is
engine-agnostic. Snakemake runs the script with ``container:`` (``rule preprocess_minc``);
``brainage preprocess --engine minc`` runs it directly when the MINC tools are on PATH.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from brainage.core.io import InputError

#: the MINC Toolkit image (carries the BEaST library and the ICBM 2009c models)
DEFAULT_CONTAINER = "docker://nistmni/minc-toolkit:1.9.18"
#: tools the chain needs on PATH (inside the container, or on the host for the CLI)
REQUIRED_TOOLS = ("nii2mnc", "beast_normalize", "mincbeast", "mincresample", "N4BiasFieldCorrection",
                  "minccalc", "bestlinreg_s", "itk_resample", "mnc2nii")


@dataclass(frozen=True)
class MincSettings:
    """Paths inside the container (config ``preprocess.minc``) and N4 settings of the chain."""

    container: str = DEFAULT_CONTAINER
    beast_library: str = "/opt/minc/share/beast-library-1.1"
    beast_config: str = "default.1mm.conf"
    model_dir: str = "/opt/minc/share/icbm152_model_09c"
    model_name: str = "mni_icbm152_t1_tal_nlin_sym_09c"
    n4_shrink: int = 4
    n4_convergence: str = "[50x50x50x50,1e-7]"
    n4_spline_distance_mm: int = 200

    @classmethod
    def from_config(cls, section: dict | None) -> "MincSettings":
        return cls(**(section or {}))


def minc_commands(t1w: str, brain_1mm: str, mask: str, xfm: str, settings: MincSettings = MincSettings(),
                  workdir: str = "$tmp") -> list[str]:
    """The shell commands of the chain for one scan (``workdir`` holds the intermediates).

    ``brain_1mm``: N4-corrected brain on the 1 mm ICBM grid (NIfTI); ``mask``: BEaST mask in
    native space (NIfTI); ``xfm``: the native-to-MNI affine (MINC ``.xfm``).
    """
    q = shlex.quote
    w = workdir
    model = f"{settings.model_dir}/{settings.model_name}"
    return [
        f"nii2mnc -quiet -clobber {q(t1w)} {w}/t1.mnc",
        # BEaST works in ICBM space on intensity-normalised images
        f"beast_normalize -modeldir {settings.model_dir} -modelname {settings.model_name} "
        f"{w}/t1.mnc {w}/t1_icbm.mnc {w}/t1_to_icbm.xfm",
        f"mincbeast -fill -median -same_resolution -conf {settings.beast_library}/{settings.beast_config} "
        f"{settings.beast_library} {w}/t1_icbm.mnc {w}/mask_icbm.mnc",
        f"mincresample -quiet -clobber -nearest_neighbour -like {w}/t1.mnc -invert_transformation "
        f"-transformation {w}/t1_to_icbm.xfm {w}/mask_icbm.mnc {w}/mask.mnc",
        f"N4BiasFieldCorrection -d 3 -i {w}/t1.mnc -x {w}/mask.mnc -s {settings.n4_shrink} "
        f"-b [{settings.n4_spline_distance_mm}] -c {settings.n4_convergence} -o {w}/t1_n4.mnc",
        f"minccalc -quiet -clobber -expression 'A[0]*A[1]' {w}/t1_n4.mnc {w}/mask.mnc {w}/brain.mnc",
        f"minccalc -quiet -clobber -expression 'A[0]*A[1]' {model}.mnc {model}_mask.mnc {w}/model_brain.mnc",
        f"bestlinreg_s -clobber -lsq12 -xcorr -source_mask {w}/mask.mnc -target_mask {model}_mask.mnc "
        f"{w}/brain.mnc {w}/model_brain.mnc {w}/native_to_icbm.xfm",
        f"itk_resample --clobber --order 3 --like {model}.mnc --transform {w}/native_to_icbm.xfm "
        f"{w}/brain.mnc {w}/brain_icbm.mnc",
        f"mnc2nii -quiet -nii -float {w}/brain_icbm.mnc {w}/brain_icbm.nii",
        f"mnc2nii -quiet -nii -byte {w}/mask.mnc {w}/mask.nii",
        f"gzip -c {w}/brain_icbm.nii > {w}/brain_icbm.nii.gz",
        f"gzip -c {w}/mask.nii > {w}/mask.nii.gz",
        # outputs appear only when the whole chain succeeded (a killed job leaves none)
        f"mv {w}/brain_icbm.nii.gz {q(brain_1mm)} && mv {w}/mask.nii.gz {q(mask)} && mv {w}/native_to_icbm.xfm {q(xfm)}",
    ]


def minc_script(t1w: str, brain_1mm: str, mask: str, xfm: str, settings: MincSettings = MincSettings()) -> str:
    """The chain as one bash script with a private temporary folder (removed on exit)."""
    lines = ["set -euo pipefail", 'tmp=$(mktemp -d)', "trap 'rm -rf \"$tmp\"' EXIT"]
    lines += minc_commands(t1w, brain_1mm, mask, xfm, settings)
    return "\n".join(lines)


def write_ras_input(t1w_path: str | Path, out: str | Path, participant_id: str) -> None:
    """Check the raw scan (:func:`brainage.preprocess.load_t1w`) and write it reoriented to RAS+."""
    from brainage.core.io import save_nifti
    from brainage.preprocess.finish import load_t1w

    img = nib.as_closest_canonical(load_t1w(t1w_path, participant_id))
    save_nifti(nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine), out)


def read_xfm(path: str | Path) -> np.ndarray:
    """A linear MINC ``.xfm`` as a 4 x 4 matrix (source world -> target world; MINC world is RAS)."""
    text = Path(path).read_text()
    if "Linear_Transform" not in text:
        raise ValueError(f"{path}: not a linear MINC transform")
    numbers = text.split("Linear_Transform", 1)[1].split("=", 1)[1].replace(";", " ").split()
    matrix = np.eye(4)
    matrix[:3, :] = np.array([float(x) for x in numbers[:12]]).reshape(3, 4)
    return matrix


def write_xfm(native_to_template: np.ndarray, path: str | Path) -> None:
    """Write a 4 x 4 RAS affine as a linear MINC ``.xfm``."""
    rows = "\n".join(" ".join(f"{v:.10g}" for v in row) for row in native_to_template[:3])
    Path(path).write_text(f"MNI Transform File\n\nTransform_Type = Linear;\nLinear_Transform =\n{rows};\n")


def finish_minc(brain_1mm: str | Path, mask: str | Path, xfm: str | Path, t1w_path: str | Path, out_dir: str | Path,
                participant_id: str, grids: list[float], settings: dict | None = None,
                template: str | Path | None = None, started: float | None = None) -> dict:
    """The MINC chain's products -> the pipeline's outputs and QC (same names as the native engine)."""
    from brainage.core.grids import resample_image, template_grid
    from brainage.preprocess.finish import finish_from_base, load_template
    from brainage.preprocess.settings import settings_from_config

    started = time.perf_counter() if started is None else started
    cfg = settings_from_config(settings)
    tpl = load_template(template=template)
    grid = template_grid(1.0)
    brain_img = nib.load(str(brain_1mm))
    # mnc2nii may store the axes in another order: resample onto the grid (identity when aligned)
    volume = resample_image(np.asarray(brain_img.dataobj, dtype=np.float32), brain_img.affine, grid, order=1)
    mask_img = nib.load(str(mask))
    native_mask = np.asarray(mask_img.dataobj) > 0
    native_to_template = read_xfm(xfm)
    return finish_from_base(
        volume, volume > 0, 1.0, np.linalg.inv(native_to_template), native_mask, mask_img.affine, participant_id,
        t1w_path, out_dir, [float(g) for g in grids], tpl, cfg["qc"], {"engine": "minc"}, started=started,
    )


def missing_tools() -> list[str]:
    return [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]


def preprocess_t1w_minc(t1w_path, out_dir, participant_id, grids, settings: dict | None = None,
                        template: str | Path | None = None) -> dict:
    """Run the MINC chain on the host (its tools must be on PATH), then :func:`finish_minc`."""
    started = time.perf_counter()
    missing = missing_tools()
    if missing:
        raise InputError(f"{participant_id}: {t1w_path}: engine 'minc' needs the MINC Toolkit on PATH "
                         f"(missing: {', '.join(missing)}); run it in {DEFAULT_CONTAINER} or use --engine native")
    minc = MincSettings.from_config((settings or {}).get("minc"))
    with tempfile.TemporaryDirectory(prefix="brainage-minc-") as work:
        w = Path(work)
        write_ras_input(t1w_path, w / "t1w_ras.nii.gz", participant_id)
        script = minc_script(str(w / "t1w_ras.nii.gz"), str(w / "brain_1mm.nii.gz"), str(w / "mask.nii.gz"), str(w / "native_to_mni.xfm"), minc)
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise InputError(f"{participant_id}: {t1w_path}: MINC chain failed ({last})")
        return finish_minc(w / "brain_1mm.nii.gz", w / "mask.nii.gz", w / "native_to_mni.xfm", t1w_path, out_dir,
                           participant_id, grids, settings, template, started)
