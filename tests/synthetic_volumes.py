"""Tiny synthetic template-space volumes whose intensity pattern encodes age (training tests).

An ellipsoidal "brain" with a central dark "ventricle" whose radius grows linearly with age and
5 % multiplicative noise: a network can learn age from it in a few epochs on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd


def synthetic_volume(age: float, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    g = np.indices(shape).astype(np.float32)
    c = (np.array(shape, dtype=np.float32) - 1)[:, None, None, None] / 2
    r = np.sqrt((((g - c) / (np.array(shape)[:, None, None, None] * 0.4)) ** 2).sum(0))
    brain = (r < 1).astype(np.float32)
    ventricles = (r < 0.15 + 0.45 * (age - 20) / 70).astype(np.float32)
    volume = brain * (1.0 - 0.8 * ventricles) * (1 + 0.05 * rng.standard_normal(shape))
    return (volume * 800).astype(np.float32)


def synthetic_cohort(root: Path, n_hc: int = 40, n_ad: int = 4, n_pd: int = 0,
                     shape: tuple[int, int, int] = (24, 28, 24), seed: int = 0):
    """Write NIfTI volumes under ``root``; returns (participants DataFrame, {id: path})."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows, paths = [], {}
    cohorts = ["HC"] * n_hc + ["AD"] * n_ad + ["PD"] * n_pd
    for i, cohort in enumerate(cohorts):
        pid = f"sub-{cohort.lower()}{i:04d}"
        age = float(rng.uniform(20, 90))
        path = root / f"{pid}.nii.gz"
        nib.Nifti1Image(synthetic_volume(age, shape, rng), np.eye(4)).to_filename(path)
        rows.append({"participant_id": pid, "dataset": ("siteA", "siteB")[i % 2], "cohort": cohort,
                     "age": age, "sex": "FM"[i % 2]})
        paths[pid] = path
    return pd.DataFrame(rows), paths


def synthetic_cache(root: Path, n_hc: int, n_ad: int, shape: tuple[int, int, int]):
    """:func:`synthetic_cohort` split 80/10/10 (seed 0) and cached: (participants, {id: path}, splits,
    volumes.npy path, index.tsv path)."""
    from brainage.data.cache import build_cache
    from brainage.data.splits import make_splits

    root = Path(root)
    participants, paths = synthetic_cohort(root / "vols", n_hc=n_hc, n_ad=n_ad, shape=shape)
    splits = make_splits(participants, seed=0)
    build_cache(paths, splits, root / "cache" / "volumes.npy", root / "cache" / "index.tsv")
    return participants, paths, splits, root / "cache" / "volumes.npy", root / "cache" / "index.tsv"
