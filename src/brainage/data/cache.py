"""Fast training I/O: preprocessed volumes of one grid cached as one float16 memory-mapped array.

Decompressing a 1 mm .nii.gz costs ~100 ms per volume per epoch; a row of a float16 ``.npy``
memory map costs a page-cache read. ``results/cache/res-<r>/`` holds:

- ``volumes.npy``: float16, shape (N, D, H, W), the preprocessed intensities as stored in the
  NIfTI files (not normalised, so the cache is a faithful copy of its inputs);
- ``index.tsv``: ``participant_id``, ``row``, ``age``, ``split`` and ``scale``, the intensity
  normalisation constant of that subject (see :func:`intensity_scale`).

Intensity normalisation (what the networks see): ``volume / scale`` with ``scale`` the 99.5th
percentile of the brain's (non-zero) voxels, so brain tissue is ~[0, 1] whatever the scanner
units (the study's Gaussian noise sd 0.025 assumes that range). Inference must use
:func:`normalise_intensity` on the NIfTI data, or :meth:`CachedVolumes.volume`.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainage.core.io import InputError, atomic_path, write_tsv

__all__ = [
    "INTENSITY_NORMALISATION",
    "intensity_scale",
    "normalise_intensity",
    "build_cache",
    "CachedVolumes",
]

#: recorded in every model.pt so that inference normalises as training did
INTENSITY_NORMALISATION = {"method": "divide_by_percentile_of_nonzero", "percentile": 99.5}


def intensity_scale(volume: np.ndarray) -> float:
    """The 99.5th percentile of the non-zero voxels (1.0 for an empty volume)."""
    nonzero = volume[volume > 0]
    if nonzero.size == 0:
        return 1.0
    return float(np.percentile(nonzero.astype(np.float32), INTENSITY_NORMALISATION["percentile"]))


def normalise_intensity(volume: np.ndarray) -> np.ndarray:
    """A preprocessed volume (D, H, W), any units -> float32 with brain tissue ~[0, 1]."""
    volume = np.asarray(volume, dtype=np.float32)
    return volume / np.float32(intensity_scale(volume))


def build_cache(
    volume_paths: dict[str, str | Path], table: pd.DataFrame, volumes_out: str | Path, index_out: str | Path
) -> None:
    """Write the float16 cache of the participants in ``table`` (columns participant_id, age, split).

    ``volume_paths`` maps participant_id -> preprocessed NIfTI; all must share one grid. Both
    outputs are written atomically (a killed job leaves neither half-written).
    """
    from tqdm import tqdm

    ids = list(table["participant_id"])
    missing = [pid for pid in ids if pid not in volume_paths]
    if missing:
        raise InputError(f"{missing[0]}: no preprocessed volume given for the cache")
    shape = None
    scales = []
    with atomic_path(volumes_out, suffix=".npy") as tmp:
        out = None
        for row, pid in enumerate(tqdm(ids, desc="cache", mininterval=5)):
            path = Path(volume_paths[pid])
            try:
                data = np.asanyarray(nib.load(str(path)).dataobj, dtype=np.float32)
            except Exception as err:  # nibabel raises many types for a truncated/invalid file
                raise InputError(f"{pid}: {path}: cannot read NIfTI ({err})") from None
            if data.ndim != 3:
                raise InputError(f"{pid}: {path}: expected a 3D volume, got shape {data.shape}")
            if out is None:
                shape = data.shape
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(ids), *shape))
            elif data.shape != shape:
                raise InputError(f"{pid}: {path}: shape {data.shape} differs from the grid's {shape}")
            if not np.isfinite(data).all():
                raise InputError(f"{pid}: {path}: volume contains NaN or infinite values")
            out[row] = data
            scales.append(intensity_scale(data))
        if out is None:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(0, 0, 0, 0))
        out.flush()
        del out
    index = table[["participant_id", "age", "split"]].copy().reset_index(drop=True)
    index.insert(1, "row", np.arange(len(index)))
    index["scale"] = scales
    write_tsv(index_out, index)


class CachedVolumes:
    """Read access to a cache: ``volume(pid)`` / ``row(i)`` -> normalised float32 (D, H, W).

    The memory map is opened lazily in each process (DataLoader workers re-open it after
    fork/spawn instead of pickling it).
    """

    def __init__(self, volumes: str | Path, index: str | Path) -> None:
        self.volumes_path = str(volumes)
        self.index = pd.read_csv(index, sep="\t", dtype={"participant_id": str, "split": str})
        self._rows = dict(zip(self.index["participant_id"], self.index["row"]))
        self._scales = self.index["scale"].to_numpy(np.float32)
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_array"] = None
        return state

    @property
    def array(self) -> np.ndarray:
        """The raw float16 memory map (N, D, H, W)."""
        if self._array is None:
            self._array = np.load(self.volumes_path, mmap_mode="r")
        return self._array

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape[1:])  # type: ignore[return-value]

    def row_of(self, participant_id: str) -> int:
        try:
            return int(self._rows[participant_id])
        except KeyError:
            raise InputError(f"{participant_id}: not in the cache {self.volumes_path}") from None

    def row(self, i: int) -> np.ndarray:
        """Normalised float32 (D, H, W) volume of cache row ``i``."""
        out = np.asarray(self.array[i], dtype=np.float32)
        out *= np.float32(1.0 / self._scales[i])
        return out

    def volume(self, participant_id: str) -> np.ndarray:
        return self.row(self.row_of(participant_id))
