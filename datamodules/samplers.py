"""Samplers: evaluation data split over DDP ranks so that every sample is seen exactly once, and a
training shuffle that depends on (seed, epoch) alone, so that a resumed run replays it.

torch's `DistributedSampler` (what Lightning injects by default) pads the split with repeated
samples until every rank has the same count, so metrics from N processes differ from one
process whenever the split size is not a multiple of N. `UnpaddedDistributedSampler` gives
rank r the indices r, r + N, r + 2N, ... and nothing else; ranks may differ by one sample.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DistributedSampler, RandomSampler

from icolightning.distributed import rank_and_world


class UnpaddedDistributedSampler(DistributedSampler):
    """Rank r of N reads indices r::N in order: no padding, no shuffling, no duplicates.

    It is a `DistributedSampler`, so Lightning keeps it instead of injecting its padded one.
    Safe for evaluation and prediction, where ranks do not all-reduce per batch; not for
    training, where DDP expects the same number of steps on every rank.
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))


def evaluation_sampler(dataset: Sized, name: str = "evaluation", rank: int | None = None,
                       world: int | None = None) -> UnpaddedDistributedSampler | None:
    """The sampler of a validation/test loader: unpadded under DDP, None (sequential) otherwise.

    Rank and world size default to the running process group's (never the launcher's environment
    alone: without a group the shares could not be gathered into one metric). Every rank needs at least one
    sample: DDP broadcasts buffers at the first forward after a training step, so a rank without
    a batch would leave the others waiting.
    """
    if rank is None or world is None:
        rank, world = rank_and_world(environment=False)
    if world == 1:
        return None
    if len(dataset) < world:
        raise ValueError(f"the {name} split has {len(dataset)} samples, fewer than the {world} DDP ranks; "
                         "use fewer devices or a larger split")
    return UnpaddedDistributedSampler(dataset, num_replicas=world, rank=rank)


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
