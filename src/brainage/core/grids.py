"""Template grids: the study's 1 mm ICBM 2009c grid (193 x 229 x 193) and coarser copies.

A grid of resolution ``r`` mm covers the same field of view as the 1 mm grid with
``floor(n / r)`` voxels per axis (2 mm: 96 x 114 x 96, the study's size; 4 mm: 48 x 57 x 48
for the CPU demo). Its first voxel centre sits at the centre of the first ``r^3`` block of
1 mm voxels, so that block averaging is an exact, anti-aliased downsampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from brainage.core.io import InputError

#: shape and voxel-to-world affine of the ICBM 2009c nonlinear asymmetric template at 1 mm
TEMPLATE_SHAPE_1MM: tuple[int, int, int] = (193, 229, 193)
TEMPLATE_AFFINE_1MM = np.array(
    [[1.0, 0, 0, -96.0], [0, 1.0, 0, -132.0], [0, 0, 1.0, -78.0], [0, 0, 0, 1.0]]
)


@dataclass(frozen=True)
class Grid:
    """A template-space voxel grid: ``res`` mm isotropic, ``shape`` voxels, ``affine`` vox->mm."""

    res: float
    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def label(self) -> str:
        """The BIDS ``res-`` entity value: ``1``, ``2``, ``4``, or ``1p5`` for 1.5 mm."""
        return res_label(self.res)


def res_label(res: float) -> str:
    res = float(res)
    return str(int(res)) if res.is_integer() else str(res).replace(".", "p")


def template_grid(res: float) -> Grid:
    """The template grid at ``res`` mm (see module docstring for its definition)."""
    res = float(res)
    if res <= 0:
        raise ValueError(f"grid resolution must be positive, got {res}")
    shape = tuple(int(np.floor(n / res)) for n in TEMPLATE_SHAPE_1MM)
    affine = TEMPLATE_AFFINE_1MM.copy()
    affine[:3, :3] = np.diag([res] * 3)
    affine[:3, 3] = TEMPLATE_AFFINE_1MM[:3, 3] + (res - 1.0) / 2.0
    return Grid(res=res, shape=shape, affine=affine)  # type: ignore[arg-type]


#: template grids (mm) accepted: coarser than 8 mm leaves too few voxels for a brain
GRID_RANGE_MM = (0.5, 8.0)


def check_grids(grids) -> list[float]:
    """The grids as floats, or InputError naming the bad one (not a number, out of range, repeated)."""
    out: list[float] = []
    for g in grids:
        try:
            value = float(g)
        except (TypeError, ValueError):
            raise InputError(f"grid {g!r} is not a number (template grids in mm, e.g. 1,2)") from None
        if not (np.isfinite(value) and GRID_RANGE_MM[0] <= value <= GRID_RANGE_MM[1]):
            raise InputError(f"grid {g!r} mm is outside {GRID_RANGE_MM[0]:g}-{GRID_RANGE_MM[1]:g} mm")
        if value in out:
            raise InputError(f"grid {value:g} mm is given twice")
        out.append(value)
    if not out:
        raise InputError("no template grid given (e.g. 1,2)")
    return out


def downsample_from_1mm(volume: np.ndarray, res: float) -> np.ndarray:
    """Anti-aliased copy of a 1 mm template-grid volume on the ``res`` mm grid.

    Integer factors use exact block means; other factors a Gaussian pre-filter (sigma from
    the factor, as scikit-image's ``rescale(anti_aliasing=True)``) and linear interpolation.
    """
    if volume.shape != TEMPLATE_SHAPE_1MM:
        raise ValueError(f"expected a 1 mm template-grid volume {TEMPLATE_SHAPE_1MM}, got {volume.shape}")
    grid = template_grid(res)
    if float(res) == 1.0:
        return volume.astype(np.float32, copy=True)
    if float(res).is_integer():
        f = int(res)
        cropped = volume[: grid.shape[0] * f, : grid.shape[1] * f, : grid.shape[2] * f].astype(np.float64)
        blocks = cropped.reshape(grid.shape[0], f, grid.shape[1], f, grid.shape[2], f)
        return blocks.mean(axis=(1, 3, 5)).astype(np.float32)
    smoothed = ndimage.gaussian_filter(volume.astype(np.float32), sigma=max(0.0, (res - 1.0) / 2.0))
    coords = np.indices(grid.shape, dtype=np.float64).reshape(3, -1) * res + (res - 1.0) / 2.0
    out = ndimage.map_coordinates(smoothed, coords, order=1, mode="nearest")
    return out.reshape(grid.shape).astype(np.float32)


def resample_labels(labels: np.ndarray, src_affine: np.ndarray, grid: Grid) -> np.ndarray:
    """Nearest-neighbour resampling of an integer label image onto ``grid`` (world-aligned)."""
    vox2vox = np.linalg.inv(src_affine) @ grid.affine
    out = ndimage.affine_transform(
        labels, vox2vox[:3, :3], offset=vox2vox[:3, 3], output_shape=grid.shape, order=0, mode="constant", cval=0
    )
    return out.astype(labels.dtype)


def resample_image(image: np.ndarray, src_affine: np.ndarray, grid: Grid, order: int = 1) -> np.ndarray:
    """Resample an intensity image onto ``grid`` (world-aligned; spline ``order``, 0 outside)."""
    vox2vox = np.linalg.inv(src_affine) @ grid.affine
    out = ndimage.affine_transform(
        image.astype(np.float32), vox2vox[:3, :3], offset=vox2vox[:3, 3], output_shape=grid.shape,
        order=order, mode="constant", cval=0.0,
    )
    return out.astype(np.float32)
