"""Is a raw T1w scan usable? One check for ``brainage manifest --check``, the participants rule
and preprocessing, so that a scan called valid is never refused later.

:func:`scan_problem` reads the header (dimensions, voxel size, orientation) and a sample of the
data: evenly spaced slices through the whole volume, the last included, so that a truncated
gzip stream fails here and not hours later in a job. The sample must be finite and not
constant. The preprocessing stage then checks every voxel of the scans it reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: voxel sizes (mm) outside this range are taken as a broken header, not a scan
VOXEL_MM_RANGE: tuple[float, float] = (0.2, 4.0)
#: fewest voxels along any axis of a head scan
MIN_AXIS_VOXELS = 16
#: slices read for the data sample
SAMPLE_SLICES = 8


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def header_problem(img) -> str | None:
    """Why the image header is not that of a 3D head scan (None when it is)."""
    shape = tuple(int(n) for n in img.shape)
    spatial = shape[:3] if len(shape) == 4 and shape[3] == 1 else shape
    if len(spatial) != 3:
        return f"not a 3D image (shape {'x'.join(map(str, shape))})"
    if min(spatial) < MIN_AXIS_VOXELS:
        return f"field of view too small (shape {'x'.join(map(str, spatial))}; at least {MIN_AXIS_VOXELS} voxels per axis)"
    affine = np.asarray(img.affine, dtype=float)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        return "orientation (affine) is singular or not finite"
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all((zooms >= VOXEL_MM_RANGE[0]) & (zooms <= VOXEL_MM_RANGE[1])):
        sizes = "x".join(f"{z:.3g}" for z in zooms)
        return f"voxel size {sizes} mm outside {VOXEL_MM_RANGE[0]:g}-{VOXEL_MM_RANGE[1]:g} mm (a broken header?)"
    return None


def sample_problem(img) -> str | None:
    """Why a sample of the data (evenly spaced slices, the last one included) is unusable."""
    n = int(img.shape[2])
    slices = sorted(set(np.linspace(0, n - 1, min(SAMPLE_SLICES, n)).round().astype(int).tolist()))
    try:
        proxy = img.dataobj
        parts = [np.asarray(proxy[:, :, k, 0] if len(img.shape) == 4 else proxy[:, :, k], dtype=np.float64)
                 for k in slices]
    except Exception as err:  # truncated gzip (EOFError), short file (ValueError), zlib errors...
        return f"data cannot be read ({type(err).__name__}: {_first_line(err)}; truncated or corrupt file?)"
    sample = np.stack(parts)
    bad = int((~np.isfinite(sample)).sum())
    if bad:
        return f"data hold NaN/Inf values ({bad} of {sample.size} sampled voxels)"
    if not sample.any():
        return "image is all zeros (every sampled voxel)"
    if float(sample.max() - sample.min()) <= 0:
        return f"data are constant ({sample.flat[0]:g} in every sampled voxel)"
    return None


def scan_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a usable raw T1w scan (None when it is): file, header, data sample."""
    import nibabel as nib  # deferred: the parse-time read of a manifest does not need it

    path = Path(path)
    if not path.is_file():
        return f"file not found: {path}"
    try:
        img = nib.load(path)  # lazy: the header only
    except Exception as err:  # nibabel raises many types for a corrupt or foreign file
        return f"not a readable NIfTI image ({_first_line(err)}): {path}"
    problem = header_problem(img) or sample_problem(img)
    return f"{problem}: {path}" if problem else None
