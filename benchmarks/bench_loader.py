"""Data-path benchmark: (a) cached float16 memmap vs nibabel .nii.gz, at 1 mm and 2 mm;
(b) folded single-resample augmentation vs the study's transforms one after the other;
(c) whole-loader volumes/s with DataLoader workers vs the naive loader (nibabel + sequential
augmentation in the main process). Every figure is printed beside its baseline from the same run.

    python benchmarks/bench_loader.py [--n 6] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from brainage.train.augment import AugmentConfig, AugmentParams, augment_volume, sample_params
from brainage.data.cache import CachedVolumes, build_cache, normalise_intensity
from brainage.core.grids import template_grid


def _brain_like(shape, rng) -> np.ndarray:
    """A smooth head-like volume with texture (compresses like an MRI, not like noise or zeros)."""
    g = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*g, indexing="ij")
    r = np.sqrt(x**2 / 0.7 + y**2 / 0.8 + z**2 / 0.7)
    vol = (r < 1) * (600 + 300 * np.sin(8 * x) * np.cos(6 * y) + 50 * rng.standard_normal(shape))
    return np.clip(vol, 0, None).astype(np.float32)


def _timeit(fn, n) -> float:
    fn(0)  # warm-up (page cache, allocator)
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=6, help="volumes per grid")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        caches = {}
        for res in (1, 2):
            grid = template_grid(res)
            paths = {}
            for i in range(args.n):
                paths[f"sub-{i:03d}"] = tmp / f"res{res}_{i}.nii.gz"
                nib.Nifti1Image(_brain_like(grid.shape, rng), grid.affine).to_filename(paths[f"sub-{i:03d}"])
            table = pd.DataFrame({"participant_id": list(paths), "age": 50.0, "split": "train"})
            build_cache(paths, table, tmp / f"c{res}" / "volumes.npy", tmp / f"c{res}" / "index.tsv")
            cache = CachedVolumes(tmp / f"c{res}" / "volumes.npy", tmp / f"c{res}" / "index.tsv")
            caches[res] = (cache, paths)
            ids = list(paths)
            t_nii = _timeit(lambda i: normalise_intensity(nib.load(str(paths[ids[i % len(ids)]])).get_fdata(dtype=np.float32)), args.n)
            t_mm = _timeit(lambda i: cache.row(i % len(ids)), args.n)
            print(f"(a) read {res} mm {grid.shape}: nibabel .nii.gz {t_nii*1e3:.1f} ms/vol, float16 memmap "
                  f"{t_mm*1e3:.1f} ms/vol -> {t_nii/t_mm:.1f}x faster (target >= 5x at 1 mm)")

        cfg = AugmentConfig(p=1.0)  # every transform applied: the worst case of both paths
        for res in (2, 1):
            cache, _ = caches[res]
            vol = torch.from_numpy(cache.row(0))[None]
            draws = [sample_params(cfg, cache.shape, np.random.default_rng(i)) for i in range(args.n + 1)]
            draws = [AugmentParams(d.translate, d.rotate, d.crop, None) for d in draws]
            t_seq = _timeit(lambda i: augment_volume(vol, draws[i], cfg, folded=False), args.n if res == 2 else 2)
            t_fold = _timeit(lambda i: augment_volume(vol, draws[i], cfg, folded=True), args.n if res == 2 else 2)
            print(f"(b) augment {res} mm (translate+rotate+crop/resize, 1 thread): one after the other "
                  f"{t_seq*1e3:.0f} ms/vol, folded single resample {t_fold*1e3:.0f} ms/vol -> {t_seq/t_fold:.1f}x "
                  f"(target >= 1.5x)")

        # (c) whole loader at 2 mm, the study's p = 0.5 augmentation. Batches of 2 (several per
        # epoch, as in training): with one batch per epoch, 2 workers would get 2 and 1 of 3
        # batches and the slower worker would set the pace.
        cache, paths = caches[2]
        cfg = AugmentConfig()
        ids = list(paths)
        epochs = 4
        n_epoch = epochs * len(ids)

        def naive(i):
            x = torch.from_numpy(normalise_intensity(nib.load(str(paths[ids[i % len(ids)]])).get_fdata(dtype=np.float32)))[None]
            return augment_volume(x, sample_params(cfg, cache.shape, np.random.default_rng(i)), cfg, folded=False)

        t = time.perf_counter()
        for i in range(n_epoch):
            naive(i)
        naive_rate = n_epoch / (time.perf_counter() - t)
        from brainage.train.data import VolumeViews as _Volumes, collate as _collate

        ds = _Volumes(cache, np.arange(len(ids)), np.full(len(ids), 50.0), cfg, 1, 0, 1, augment_here=True)
        batches = [[(e, i), (e, i + 1)] for e in range(epochs) for i in range(0, len(ids) - 1, 2)]
        rates = {}
        for workers in (0, args.workers):
            loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=workers, collate_fn=_collate)
            t = time.perf_counter()
            n = sum(len(x) for x, _, _ in loader)
            rates[workers] = n / (time.perf_counter() - t)
        print(f"(c) loader 2 mm with augmentation: naive (nibabel + sequential, main process) {naive_rate:.1f} vol/s, "
              f"cache + folded in the main process {rates[0]:.1f} vol/s -> {rates[0]/naive_rate:.1f}x, "
              f"cache + folded + {args.workers} workers {rates[args.workers]:.1f} vol/s -> {rates[args.workers]/naive_rate:.1f}x "
              f"({torch.get_num_threads()} torch thread per process; workers share the machine's cores)")


if __name__ == "__main__":
    main()
