"""Seeded, resumable sampling: which images each process sees, in which order, and the random state
each sample's augmentation draws from.

Both are functions of (run seed, epoch, dataset index) only, so the data is the same whatever the
number of DataLoader workers, and a run resumed mid-epoch sees exactly the batches the
uninterrupted run would have seen.
"""
import random
import signal
from contextlib import contextmanager
from typing import Callable, Iterator, Tuple

import numpy as np
import torch
import torch.utils.data as torch_data
from torch.utils.data.distributed import DistributedSampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation: a function of (run seed, epoch, dataset index) only,
    so the data is the same whatever the worker count, world size or resume point."""
    return int(np.random.SeedSequence([seed % 2 ** 32, epoch, index]).generate_state(1)[0])


@contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Run a block with random/numpy/torch(CPU) seeded by `seed`, restoring their states after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class SeededSamples(torch_data.Dataset):
    """Wraps a dataset so that item `(index, seed)` is `dataset[index]` drawn under `seed`.

    The augmentations draw from numpy's global RNG (as the original's); seeding per sample makes
    every sample's augmentation reproducible, which exact resume needs.
    """

    def __init__(self, dataset: torch_data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        with isolated_rng(seed):
            return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """DistributedSampler (seeded shuffle per epoch, one shard per rank) that can start mid-epoch
    and yields `(index, sample_seed)` for SeededSamples. Works without a process group."""

    def __init__(self, dataset: torch_data.Dataset, num_replicas: int, rank: int, seed: int, batch_size: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed % 2 ** 32, drop_last=True)
        self.batch_size = batch_size
        self.skip = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip_batches * self.batch_size

    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        order = list(super().__iter__())[self.skip:]
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in order])

    def __len__(self) -> int:
        return max(self.num_samples - self.skip, 0)


def _ignore_stop_signals(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; only the main process decides when to stop, and it
    # shuts the workers down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def resumable_loader(dataset: torch_data.Dataset, batch_size: int, num_workers: int, seed: int,
                     num_replicas: int, rank: int, collate_fn: Callable, pin_memory: bool = False
                     ) -> Tuple[torch_data.DataLoader, ResumableSampler]:
    """DataLoader over this rank's shard of `dataset`, whose order and augmentation depend only on
    (seed, epoch, index); start mid-epoch with `sampler.set_epoch(epoch, skip_batches)`."""
    sampler = ResumableSampler(dataset, num_replicas, rank, seed, batch_size)
    if sampler.batches_per_epoch() == 0:
        raise ValueError(f"the training set has {len(dataset)} images, fewer than one batch of "
                         f"{batch_size} per process x {num_replicas} process(es)")
    loader = torch_data.DataLoader(
        SeededSamples(dataset), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_fn, pin_memory=pin_memory, drop_last=True,
        worker_init_fn=_ignore_stop_signals if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed))
    return loader, sampler
