"""The Flickr8k benchmark's ranking arithmetic on hand-made inputs (the full script is too slow for a test)."""

from __future__ import annotations

import pytest
import torch
from benchmark_helpers import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("flickr8k")


def test_recall_counts_gold_within_the_first_m(bench):
    ranked = torch.tensor([[3, 1, 2, 0, 4, 5, 6, 7, 8, 9], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])
    gold = torch.tensor([1, 7])
    assert bench.recall(ranked, gold) == {1: 0.0, 5: 0.5, 10: 1.0}


def test_rerank_reorders_only_the_top_k(bench):
    rows = torch.tensor([[10, 11, 12, 13, 14]])
    logits = torch.tensor([0.1, 0.9, 0.5])  # CE prefers row 11, then 12, then 10
    assert bench.rerank(rows, logits, 3).tolist() == [[11, 12, 10, 13, 14]]


def test_text_retrieval_hit_is_any_caption_of_the_image(bench):
    # Two images with two captions each; caption 4 is a distractor (owner -1).
    space = bench.SearchSpace(["a", "b"], [0, 1, 2, 3, 4], [0, 0, 1, 1, -1])
    images = torch.eye(2)
    captions = torch.tensor([[0.0, 1.0], [0.9, 0.1], [1.0, 0.0], [0.2, 0.8], [0.95, 0.05]])
    embeddings = {"images": torch.nn.functional.normalize(images), "captions": torch.nn.functional.normalize(captions)}
    t2i, i2t, _ = bench.evaluate_be(space, embeddings, [0, 1, 2, 3], [0, 1], 0.0)
    # Captions 1 and 3 find their image first, 0 and 2 the other one (2 images: R@5 is certain).
    assert t2i == {1: 0.5, 5: 1.0, 10: 1.0}
    # Image 0's best caption is 2 (image 1's), then the distractor 4, then its own caption 1; image 1 finds 0 (wrong)
    # then 3 (its own).
    assert i2t[1] == 0.0 and i2t[5] == 1.0


class CountingCrossEncoder:
    def __init__(self):
        self.pairs_seen = 0

    def predict(self, inputs, **kwargs):
        self.pairs_seen += len(inputs)
        return torch.tensor([float(len(caption)) for caption, _ in inputs])


def test_pair_scorer_computes_each_pair_once(bench):
    cross_encoder = CountingCrossEncoder()
    scorer = bench.PairScorer(cross_encoder, {0: "a", 1: "bbb"}, {"x": object(), "y": object()}, batch_size=2)
    logits, seconds = scorer.score([(0, "x"), (1, "y"), (0, "x")])
    assert logits.tolist() == [1.0, 3.0, 1.0]
    assert cross_encoder.pairs_seen == 2
    again, _ = scorer.score([(1, "y"), (1, "x")])
    assert again.tolist() == [3.0, 3.0]
    assert cross_encoder.pairs_seen == 3  # only (1, "x") was new
    assert seconds >= 0.0


def test_full_cross_encoding_ranks_by_logit(bench):
    class DiagonalCrossEncoder:
        def predict(self, inputs, **kwargs):
            return torch.tensor([1.0 if caption[-1] == image else 0.0 for caption, image in inputs])

    captions = {0: "cap-a", 1: "cap-b", 2: "cap-c"}
    scorer = bench.PairScorer(DiagonalCrossEncoder(), captions, {"a": "a", "b": "b", "c": "c"}, batch_size=4)
    t2i, i2t, _, pairs = bench.evaluate_full_ce(scorer, [0, 1, 2], [0, 1, 2], ["a", "b", "c"])
    assert pairs == 9
    assert t2i[1] == 1.0 and i2t[1] == 1.0
