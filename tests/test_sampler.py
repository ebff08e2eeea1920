"""data/sampler.py: the data order is a function of (seed, epoch) and resumes mid-epoch; each
sample's augmentation draws are a function of its seed and leave the global RNGs alone."""
import random

import numpy as np
import torch

from data.sampler import ResumableSampler, SeededSamples, sample_seed


def test_sampler_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch():
    data = list(range(10))
    full = ResumableSampler(data, num_replicas=1, rank=0, seed=7, batch_size=2)
    full.set_epoch(3)
    order = list(full)
    again = ResumableSampler(data, num_replicas=1, rank=0, seed=7, batch_size=2)
    again.set_epoch(3)
    assert list(again) == order
    assert sorted(i for i, _ in order) == data
    full.set_epoch(4)
    assert [i for i, _ in full] != [i for i, _ in order]
    # Starting 2 batches into epoch 3 yields the rest of the same order, with the same sample seeds.
    again.set_epoch(3, skip_batches=2)
    assert list(again) == order[4:] and len(again) == 6
    # Sample seeds depend on (seed, epoch, index) only.
    assert order[0][1] == sample_seed(7, 3, order[0][0])
    # Two ranks split an epoch into disjoint halves.
    shards = []
    for rank in (0, 1):
        s = ResumableSampler(data, num_replicas=2, rank=rank, seed=7, batch_size=2)
        s.set_epoch(0)
        shards.append([i for i, _ in s])
    assert len(shards[0]) == len(shards[1]) == 5 and not set(shards[0]) & set(shards[1])


class _DrawNumbers:
    """A dataset whose items are draws from the global RNGs, like the augmentations."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return (random.random(), float(np.random.rand()), float(torch.rand(())))


def test_seeded_samples_repeat_their_draws_and_leave_global_rng_alone():
    samples = SeededSamples(_DrawNumbers())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    before = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    first = samples[(0, 123)]
    assert samples[(2, 123)] == first  # the draw depends on the seed, not the index or history
    assert samples[(0, 124)] != first
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == before
