"""Saliency maps as files in template space: quantised NIfTI maps and PNGs on the template."""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np

from brainage.core.io import nifti_image, save_figure


#: 2 bytes per voxel like float16, with a finer step of 3e-5)
SALIENCY_SLOPE = 1.0 / 32767.0


def quantise_saliency(saliency: np.ndarray) -> np.ndarray:
    """The [0, 1] map as stored on disk: rounded to multiples of :data:`SALIENCY_SLOPE` (float32)."""
    q = np.round(np.clip(np.asarray(saliency, dtype=np.float64), 0.0, 1.0) / SALIENCY_SLOPE)
    return (q * SALIENCY_SLOPE).astype(np.float32)


def template_image(data: np.ndarray, affine: np.ndarray, quantised: bool = True) -> nib.Nifti1Image:
    """A template-space (MNI152, sform/qform code 4) NIfTI of ``data``.

    ``quantised``: a [0, 1] saliency map stored as int16 x :data:`SALIENCY_SLOPE` (half the
    size of float32); otherwise float32 (group means and signed difference maps).
    """
    if not quantised:
        return nifti_image(np.asarray(data, dtype=np.float32), affine)
    q = np.round(np.clip(np.asarray(data, dtype=np.float64), 0.0, 1.0) / SALIENCY_SLOPE).astype(np.int16)
    img = nifti_image(q, affine)
    img.header.set_slope_inter(SALIENCY_SLOPE, 0.0)
    return img


@contextlib.contextmanager
def gc_frozen() -> Iterator[None]:
    """Objects alive on entry are left out of garbage collection until exit (``gc.freeze``).

    nilearn calls ``gc.collect()`` each time it reads an image's data (``safe_get_data``: 12
    times per :func:`plot_group_map`); with torch and a network in the process each full
    collection walks ~400,000 objects, 0.3 s: 4.1 s per PNG, 0.9 s with them frozen
    (benchmarks/bench_saliency_png.py). The plots' own garbage is still collected.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def plot_group_map(
    img: nib.Nifti1Image, template: nib.Nifti1Image, brain_mask: np.ndarray, title: str, path: str | Path, signed: bool = False
) -> None:
    """PNG of a saliency map on the template: orthogonal slices through its most salient cluster and a glass brain.

    The map is shown inside the template brain mask only (Grad-RAM upsampled from a coarse
    block is non-zero in the background too, which would hide the anatomy), semi-transparent,
    with values below 5 % of the maximum left out. ``signed``: a difference map (blue-red,
    symmetric scale).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import plotting

    with gc_frozen():
        data = np.where(brain_mask, np.asarray(img.dataobj, dtype=np.float32), 0.0).astype(np.float32)
        vmax = float(np.nanmax(np.abs(data))) or 1.0
        shown = nib.Nifti1Image(data, img.affine)
        # centre of the largest high-saliency cluster: a peak on the brain's rim would give edge slices
        cut = plotting.find_xyz_cut_coords(nib.Nifti1Image(np.abs(data), img.affine))
        cmap = "RdBu_r" if signed else "hot"
        fig = plt.figure(figsize=(9, 6.4))
        top = fig.add_axes([0.0, 0.5, 1.0, 0.46])
        bottom = fig.add_axes([0.0, 0.02, 1.0, 0.46])
        plotting.plot_stat_map(
            shown, bg_img=template, display_mode="ortho", cut_coords=cut, axes=top, cmap=cmap, vmax=vmax,
            symmetric_cbar=signed, threshold=0.05 * vmax, transparency=0.7, title=title, colorbar=True,
            draw_cross=False, black_bg=False, annotate=True, dim=0,
        )
        plotting.plot_glass_brain(
            shown, display_mode="lyrz", axes=bottom, cmap=cmap, vmax=vmax, vmin=-vmax if signed else 0.0,
            plot_abs=False, symmetric_cbar=signed, colorbar=False, threshold=0.05 * vmax, black_bg=False,
        )
        save_figure(fig, path)
        plt.close(fig)
