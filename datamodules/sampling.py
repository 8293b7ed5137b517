"""A training shuffle that depends on (seed, epoch) alone, so that a resumed run replays it."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import RandomSampler


class EpochShuffle(RandomSampler):
    """A fresh permutation every epoch, drawn from a generator seeded with `seed + epoch`.

    torch's RandomSampler seeds each epoch from the global generator when the epoch's iterator is
    created, and a resumed run creates one more iterator than an uninterrupted one (the restored
    epoch's), which shifts every later shuffle. Here the order is a function of the epoch, which
    Lightning sets before each epoch (`set_epoch`, as for DistributedSampler); StatefulDataLoader
    restores the position inside it. Under DDP Lightning swaps it for a DistributedSampler as it
    does for any RandomSampler.
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()
