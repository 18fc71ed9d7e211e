from __future__ import annotations

from collections.abc import Iterator
from itertools import accumulate

import torch
from sentence_transformers.base.sampler import RoundRobinBatchSampler


def distributed_world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


class AlternatingBatchSampler(RoundRobinBatchSampler):
    """Round robin over the datasets that keeps the alternation under DDP: each dataset yields world-size batches.

    Under DDP the dataloader hands batch ``i`` of this stream to rank ``i % world_size``. The host's round robin
    (``BE, CE, BE, CE, ...``) on 2 processes would give rank 0 every bi-encoder batch and rank 1 every
    cross-encoder batch, so every optimizer step would average one objective's gradient on one rank with the
    other objective's on the other: the objectives would be summed, not alternated. Emitting ``world_size``
    consecutive batches per dataset (``BE, BE, CE, CE, ...`` on 2 processes) gives every rank the same
    objective at the same step. On one process it is the host's round robin.

    Args:
        dataset: the concatenation of the datasets (one per objective step of a round).
        batch_samplers: one batch sampler per dataset.
        generator / seed: as for the host's samplers.
        world_size: processes sharing the stream; default: the initialised process group's size, else 1.
    """

    def __init__(self, *args, world_size: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.world_size = world_size or distributed_world_size()

    def __iter__(self) -> Iterator[list[int]]:
        if self.generator and self.seed is not None:
            self.generator.manual_seed(self.seed + self.epoch)
        sample_offsets = [0, *accumulate(len(dataset) for dataset in self.dataset.datasets)]
        iterators = [iter(sampler) for sampler in self.batch_samplers]
        while True:
            round_batches = []
            for offset, iterator in zip(sample_offsets, iterators):
                for _ in range(self.world_size):
                    batch = next(iterator, None)
                    if batch is None:  # one dataset is exhausted: the epoch ends after the last full round
                        return
                    round_batches.append([index + offset for index in batch])
            yield from round_batches

    def __len__(self) -> int:
        rounds = min(len(sampler) for sampler in self.batch_samplers) // self.world_size
        return rounds * self.world_size * len(self.batch_samplers)
