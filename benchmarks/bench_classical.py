"""The classical baseline (brainage.models.classical) on real brains: k-fold CV, plain and nested.

    python benchmarks/bench_classical.py --cache results/cache/res-4 [--grid 4] [--folds 5] [--seed 0]
        [--nested]

Reads a cache the pipeline wrote (``volumes.npy`` + ``index.tsv``: every healthy subject of the
index, whatever its split) and prints, per outer fold, MAE and R2 of the default settings
(brainage.models.spec.Classical) and the mean-age baseline (the fold's training mean), then mean +- SD
over folds. ``--nested`` also picks features x smoothing x kernel inside each outer training
fold by an inner k-fold CV (GP restarts 0 while selecting; the outer test fold never takes
part) and reports that model's outer-fold accuracy: the honest number when the defaults were themselves chosen on the cohort.
Each subject's smoothed maps are computed once per setting; masks, scaling, PCA and the GP are
refitted in every (inner and outer) training fold, as ``fit_classical`` does.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from brainage.data.cache import CachedVolumes  # noqa: E402
from brainage.models.classical import feature_maps  # noqa: E402
from brainage.train.classical import fit_features  # noqa: E402
from brainage.models.spec import Classical  # noqa: E402
from dataclasses import asdict  # noqa: E402

GRID = {"features": ("tissue", "intensity"), "smooth_mm": (2.0, 4.0, 8.0), "kernel": ("rbf", "linear")}


class Maps:
    """Every subject's smoothed maps per (features, smooth_mm), inside the union of brains."""

    def __init__(self, volumes: np.ndarray, grid_mm: float) -> None:
        self.volumes, self.grid_mm = volumes, grid_mm
        self.union = (volumes > 0).any(axis=0)
        self.nonzero = (volumes > 0)[:, self.union]  # (N, U)
        self._maps: dict = {}

    def get(self, features: str, smooth_mm: float) -> np.ndarray:
        key = (features, smooth_mm)
        if key not in self._maps:
            self._maps[key] = np.stack([feature_maps(v, features, smooth_mm / self.grid_mm)[:, self.union]
                                        for v in self.volumes])  # (N, M, U)
        return self._maps[key]

    def fit_predict(self, settings: dict, ages: np.ndarray, train, test, seed: int) -> np.ndarray:
        """Fit on ``train`` (mask from the training brains alone), predict ``test``."""
        maps = self.get(settings["features"], float(settings["smooth_mm"]))
        inside = self.nonzero[train].mean(axis=0) >= settings["mask_fraction"]
        mask = np.zeros(self.union.shape, bool)
        mask[self.union] = inside
        feats = maps[train][:, :, inside].reshape(len(train), -1)
        model, _ = fit_features(feats, ages[train], mask, settings, self.grid_mm, seed)
        return model.predict_scores(model.scores(maps[test][:, :, inside].reshape(len(test), -1)))


def folds(n: int, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    order = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(order, k)
    return [(np.sort(np.concatenate(parts[:i] + parts[i + 1:])), np.sort(parts[i])) for i in range(k)]


def accuracy(pred: np.ndarray, age: np.ndarray) -> tuple[float, float]:
    mae = float(np.abs(pred - age).mean())
    r2 = 1 - float(((pred - age) ** 2).sum() / ((age - age.mean()) ** 2).sum())
    return mae, r2


def select_inner(maps: Maps, ages: np.ndarray, train: np.ndarray, k: int, seed: int) -> tuple[dict, float]:
    """The grid setting with the lowest inner-CV MAE on ``train`` alone."""
    best, best_mae = None, np.inf
    for values in itertools.product(*GRID.values()):
        settings = {**asdict(Classical()), **dict(zip(GRID, values)), "restarts": 0}
        errors = [np.abs(maps.fit_predict(settings, ages, train[a], train[b], seed) - ages[train[b]])
                  for a, b in folds(len(train), k, seed + 1)]
        mae = float(np.concatenate(errors).mean())
        if mae < best_mae:
            best, best_mae = settings, mae
    return best, best_mae


def summary(label: str, rows: list[tuple[float, float]]) -> str:
    mae, r2 = np.array(rows).T
    return f"{label}: MAE {mae.mean():.2f} +- {mae.std(ddof=1):.2f} y, R2 {r2.mean():.3f} +- {r2.std(ddof=1):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, type=Path)
    parser.add_argument("--grid", type=float, default=4.0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nested", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # the GP optimiser's bound warnings
    cache = CachedVolumes(args.cache / "volumes.npy", args.cache / "index.tsv")
    volumes = np.stack([cache.row(i) for i in range(len(cache.index))])
    ages = cache.index["age"].to_numpy(float)
    maps = Maps(volumes, args.grid)
    default = asdict(Classical())
    plain, nested, base = [], [], []
    started = time.perf_counter()
    print(f"{len(ages)} subjects, ages {ages.min():.0f}-{ages.max():.0f}; defaults {default}")
    for i, (train, test) in enumerate(folds(len(ages), args.folds, args.seed)):
        plain.append(accuracy(maps.fit_predict(default, ages, train, test, args.seed), ages[test]))
        base.append(float(np.abs(ages[train].mean() - ages[test]).mean()))
        line = f"fold {i + 1}: n_train {len(train)} n_test {len(test)}  default MAE {plain[-1][0]:.2f} R2 {plain[-1][1]:.3f}"
        if args.nested:
            chosen, inner = select_inner(maps, ages, train, args.folds, args.seed)
            nested.append(accuracy(maps.fit_predict(chosen, ages, train, test, args.seed), ages[test]))
            picked = ", ".join(f"{k}={chosen[k]}" for k in GRID)
            line += f"  nested [{picked}; inner MAE {inner:.2f}] MAE {nested[-1][0]:.2f} R2 {nested[-1][1]:.3f}"
        print(line + f"  mean-age MAE {base[-1]:.2f}", flush=True)
    print(summary("default settings", plain))
    if nested:
        print(summary("nested selection", nested))
    print(f"mean-age baseline: MAE {np.mean(base):.2f} +- {np.std(base, ddof=1):.2f} y; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
