"""Training data: cached volumes with seeded augmentation draws, and each epoch's batches.

Every draw is derived from (seed, phase, epoch, subject, view), never from a shared stream, so
a resumed run reads the same batches with the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch

from brainage.data.cache import CachedVolumes
from brainage.train.augment import AugmentConfig, augment_volume, sample_params


class VolumeViews(torch.utils.data.Dataset):
    """Keys (epoch, i) -> (views (V, 1, D, H, W) or raw (1, 1, D, H, W), age, augmentation draws).

    Augmentation parameters are drawn from a generator seeded by (seed, phase, epoch, i, view),
    never from a shared stream. ``augment_here`` applies them in the worker (CPU training);
    otherwise the raw volume and the draws go to the training loop, which augments on the GPU.
    """

    def __init__(self, cache: CachedVolumes, rows, ages, aug: AugmentConfig | None, views: int,
                 seed: int, phase: int, augment_here: bool) -> None:
        self.cache, self.rows, self.ages = cache, np.asarray(rows), np.asarray(ages, dtype=np.float32)
        self.aug, self.views, self.seed, self.phase, self.augment_here = aug, views, seed, phase, augment_here

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        x = torch.from_numpy(self.cache.row(int(self.rows[i])))[None]
        params = None
        if self.aug is not None:
            shape = tuple(x.shape[1:])
            params = [
                sample_params(self.aug, shape, np.random.default_rng([self.seed, self.phase, epoch, i, v]))
                for v in range(self.views)
            ]
        if params is not None and self.augment_here:
            out = torch.stack([augment_volume(x, p, self.aug) for p in params])
            params = None
        else:
            out = x[None].expand(self.views if params is None else 1, *x.shape)
        return out, torch.tensor(self.ages[i]), params


def collate(items):
    xs, ys, ps = zip(*items)
    return torch.stack(xs), torch.stack(ys), list(ps)


def epoch_batches(n: int, batch_size: int, seed: int, phase: int, epoch: int, rank: int, world: int):
    """This process's batches of keys (epoch, i) for one epoch (drop_last; global order seeded)."""
    order = np.random.default_rng([seed, phase, epoch, 7]).permutation(n)
    local = batch_size // world
    batches = []
    for b in range(n // batch_size):
        chunk = order[b * batch_size : (b + 1) * batch_size][rank * local : (rank + 1) * local]
        batches.append([(epoch, int(i)) for i in chunk])
    return batches


def loader(dataset, batches, workers: int, pin: bool):
    # A private generator: creating the iterator must not draw from the global torch RNG, whose
    # state is checkpointed (dropout), or a mid-epoch resume would shift it by one draw.
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate, pin_memory=pin,
        persistent_workers=False, prefetch_factor=2 if workers else None, generator=torch.Generator().manual_seed(0),
    )
