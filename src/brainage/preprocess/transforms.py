"""Arrays and affines to and from ANTs: an ANTs image from a NIfTI-style array and affine, and
the ITK/ANTs affine transform file read and written as a RAS 4 x 4 matrix. Its own module, below
both the registration and the shared finishing (which writes the MINC engine's affine file too).

Conventions
-----------
* Volumes are ``(X, Y, Z)`` arrays in the voxel order of their NIfTI file (ANTsPy's ``.numpy()``
  and nibabel's ``dataobj`` agree on it).
* Affines are 4 x 4 matrices in RAS+ millimetres. ``template_to_native`` maps a template (MNI)
  point to the native scanner point that lands on it -- the mapping used to resample the scan
  onto the template grid, and what ANTs/ITK store in the ``..._xfm.mat`` file (there in LPS).
  ``native_to_template`` is its inverse: its scales are the template-to-head size ratios.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: RAS <-> LPS (ITK) sign flip, applied on both sides of a 4 x 4 matrix
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ants_image(data: np.ndarray, affine: np.ndarray):
    """An ANTs image from a RAS voxel-to-world affine (NIfTI convention) and an ``(X, Y, Z)`` array."""
    import ants

    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    direction_ras = affine[:3, :3] / zooms
    direction_lps = _LPS[:3, :3] @ direction_ras
    origin_lps = _LPS[:3, :3] @ affine[:3, 3]
    return ants.from_numpy(
        np.ascontiguousarray(data, dtype=np.float32), origin=origin_lps.tolist(),
        spacing=zooms.tolist(), direction=direction_lps,
    )


def read_ants_affine(path: str | Path) -> np.ndarray:
    """An ITK/ANTs affine transform file as a RAS 4 x 4 matrix (fixed/template -> moving/native)."""
    import ants

    tx = ants.read_transform(str(path))
    params = np.asarray(tx.parameters, dtype=np.float64)
    centre = np.asarray(tx.fixed_parameters, dtype=np.float64)
    matrix = params[:9].reshape(3, 3)
    translation = params[9:12]
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = translation + centre - matrix @ centre
    return _LPS @ lps @ _LPS


def write_ants_affine(template_to_native: np.ndarray, path: str | Path) -> None:
    """Write a RAS 4 x 4 ``template_to_native`` as an ITK affine file (``.mat`` or ``.txt``)."""
    import ants

    lps = _LPS @ template_to_native @ _LPS
    tx = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=lps[:3, :3], offset=lps[:3, 3].tolist()
    )
    ants.write_transform(tx, str(path))
