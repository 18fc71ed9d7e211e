from __future__ import annotations

from torch.utils.data import BatchSampler, ConcatDataset, SequentialSampler

from mm_sbert.training import AlternatingBatchSampler


def sampler(world_size, sizes=(8, 8), batch_size=2):
    datasets = [list(range(size)) for size in sizes]
    batch_samplers = [BatchSampler(SequentialSampler(d), batch_size, drop_last=True) for d in datasets]
    return AlternatingBatchSampler(ConcatDataset(datasets), batch_samplers=batch_samplers, world_size=world_size)


def dataset_of(batch, first_size=8):
    return "be" if batch[0] < first_size else "ce"


def test_one_process_is_plain_round_robin():
    batches = list(sampler(1))
    assert [dataset_of(b) for b in batches] == ["be", "ce"] * 4
    assert batches[:2] == [[0, 1], [8, 9]]
    assert len(sampler(1)) == 8


def test_every_rank_runs_the_same_objective_at_each_step():
    stream = list(sampler(2))
    assert len(stream) == len(sampler(2)) == 8
    # The dataloader shards the stream: batch i goes to rank i % world_size.
    for rank in (0, 1):
        assert [dataset_of(b) for b in stream[rank::2]] == ["be", "ce", "be", "ce"]
    # Ranks get different batches of the same objective.
    assert stream[0] != stream[1]


def test_epoch_ends_after_the_last_full_round():
    assert [dataset_of(b, first_size=6) for b in sampler(2, sizes=(6, 8))] == ["be", "be", "ce", "ce"]
    assert len(sampler(2, sizes=(6, 8))) == 4
