"""Loaders of the processors: training batches shuffled by (seed, epoch) and split over ranks, evaluation
clips each once; every loader's worker seeds come from its own generator (docs/method.md §4b)."""
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from torchlight.config import ConfigError
from torchlight.dist import get_rank, get_world_size
from torchlight.util import release_freed_host_memory


class ShardSampler(Sampler):
    """Rank r of N takes indices r, r+N, ...: every clip once over all ranks, no padding duplicates."""

    def __init__(self, n):
        self.indices = range(get_rank(), n, get_world_size())

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def loader_seed(seed, rank, epoch):
    """Seed of a loader's own generator (its workers' seeds) in `epoch`, independent of any global stream."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


def make_loader(dataset, cfg, train, pin_memory):
    """Training: shuffled by (seed, epoch), split across ranks, whole batches only; evaluation: each clip once."""
    world = get_world_size()
    per_rank = (cfg["batch_size"] // world) if train else cfg["test_batch_size"]
    if train and len(dataset) < cfg["batch_size"]:  # else no step: an epoch of nothing
        raise ConfigError(f"batch_size {cfg['batch_size']} is larger than the {len(dataset)} training clips "
                          f"of {getattr(dataset, 'data_path', 'the training set')}: lower batch_size")
    if train:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=get_rank(), shuffle=True,
                                     seed=cfg["seed"], drop_last=True)
    else:
        sampler = ShardSampler(len(dataset))
    workers = cfg["num_workers"]
    # An own generator: the workers' seeds are never drawn from the global stream (see seed_loaders).
    generator = torch.Generator().manual_seed(loader_seed(cfg["seed"], get_rank(), 0))
    # Persistent workers: the feeder's epoch (augmentation seeds) is in shared memory.
    return DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      drop_last=train, persistent_workers=workers > 0, generator=generator,
                      worker_init_fn=release_freed_host_memory)


def seed_loaders(loaders, seed, epoch):
    """Reseed every loader's generator for `epoch`: a resumed run's loaders draw what the uninterrupted
    run's drew, and a persistent loader created anew on resume takes nothing from the global stream."""
    for loader in loaders:
        loader.generator.manual_seed(loader_seed(seed, get_rank(), epoch))

