"""Cache: the float16 memory map holds the NIfTI data (within float16 precision) and reads fast."""

import nibabel as nib
import numpy as np
import pandas as pd

from brainage.data.cache import CachedVolumes, build_cache, normalise_intensity
from synthetic_volumes import synthetic_cohort


def test_round_trip_equals_nibabel_within_float16(tmp_path):
    participants, paths = synthetic_cohort(tmp_path / "vols", n_hc=5, n_ad=1)
    table = participants.assign(split="train")
    build_cache(paths, table, tmp_path / "c" / "volumes.npy", tmp_path / "c" / "index.tsv")
    cache = CachedVolumes(tmp_path / "c" / "volumes.npy", tmp_path / "c" / "index.tsv")
    assert cache.array.dtype == np.float16
    assert cache.array.shape == (6, 24, 28, 24)
    assert isinstance(cache.array, np.memmap)
    for pid, path in paths.items():
        data = nib.load(str(path)).get_fdata(dtype=np.float32)
        raw = cache.array[cache.row_of(pid)].astype(np.float32)
        # float16 keeps 11 significant bits: relative error <= 2^-11
        np.testing.assert_allclose(raw, data, rtol=2.0**-11, atol=1e-7)
        np.testing.assert_allclose(cache.volume(pid), normalise_intensity(data), rtol=2e-3, atol=1e-6)
    index = pd.read_csv(tmp_path / "c" / "index.tsv", sep="\t")
    assert list(index["participant_id"]) == list(participants["participant_id"])
    assert not list(tmp_path.glob("c/.*tmp*"))  # atomic writes leave no temporary file


def test_normalisation_puts_brain_in_unit_range():
    rng = np.random.default_rng(0)
    vol = np.zeros((20, 20, 20), np.float32)
    vol[5:15, 5:15, 5:15] = rng.uniform(100, 2000, (10, 10, 10))
    out = normalise_intensity(vol)
    assert np.percentile(out[out > 0], 99.5) == np.float32(1.0) or abs(np.percentile(out[out > 0], 99.5) - 1) < 1e-5
    assert out.min() == 0
