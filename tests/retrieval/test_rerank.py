"""rerank(): the one path from (queries, candidate rows) to a reranked order, with its pair-score cache."""

from __future__ import annotations

import pytest
import torch

from mm_sbert.retrieval import PairScoreCache, combine_scores, rerank

CAPTIONS = ["c0", "c1"]
IMAGES = ["i0.jpg", "i1.jpg", "i2.jpg"]
# The cross-encoder logit of each (caption, image) pair.
LOGITS = {
    ("c0", "i0.jpg"): 1.0,
    ("c0", "i1.jpg"): 3.0,
    ("c0", "i2.jpg"): 2.0,
    ("c1", "i0.jpg"): -1.0,
    ("c1", "i1.jpg"): 0.5,
    ("c1", "i2.jpg"): 4.0,
}


class TableCrossEncoder:
    """Logits from LOGITS; records every pair it is asked to score (pairs must be (caption, image))."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    def predict(self, pairs, **kwargs):
        self.pairs.extend(pairs)
        return torch.tensor([LOGITS[pair] for pair in pairs])


ROWS = torch.tensor([[0, 1, 2], [2, 0, 1]])  # the BE order of the images per caption
BE = torch.tensor([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]])


def test_captions_rank_images_by_the_cross_encoder_logit():
    cross_encoder = TableCrossEncoder()
    result = rerank(cross_encoder, CAPTIONS, IMAGES, ROWS, BE)
    assert result.rows.tolist() == [[1, 2, 0], [2, 1, 0]]
    assert result.ce_scores.tolist() == [[3.0, 2.0, 1.0], [4.0, 0.5, -1.0]]
    assert result.scores.tolist() == result.ce_scores.tolist()
    # The BE scores travel with their candidates.
    torch.testing.assert_close(result.be_scores, torch.tensor([[0.8, 0.7, 0.9], [0.6, 0.4, 0.5]]))
    assert result.ce_pairs == 6 and result.ce_seconds > 0
    assert cross_encoder.pairs == [("c0", "i0.jpg"), ("c0", "i1.jpg"), ("c0", "i2.jpg")] + [
        ("c1", "i2.jpg"),
        ("c1", "i0.jpg"),
        ("c1", "i1.jpg"),
    ]


def test_images_rank_captions_with_caption_image_pairs():
    cross_encoder = TableCrossEncoder()
    result = rerank(cross_encoder, ["i2.jpg"], CAPTIONS, [[0, 1]], [[0.5, 0.4]], query_modality="image")
    assert cross_encoder.pairs == [("c0", "i2.jpg"), ("c1", "i2.jpg")]
    assert result.rows.tolist() == [[1, 0]]


@pytest.mark.parametrize("score", ["combination", "combination_normalized"])
def test_combined_scores_order_the_candidates(score):
    result = rerank(TableCrossEncoder(), CAPTIONS, IMAGES, ROWS, BE, score=score, lam=0.7)
    ce = torch.tensor([[LOGITS[(c, IMAGES[r])] for r in rows] for c, rows in zip(CAPTIONS, ROWS.tolist())])
    expected = combine_scores(BE, ce, score, 0.7)
    order = expected.argsort(dim=1, descending=True, stable=True)
    assert result.rows.tolist() == ROWS.gather(1, order).tolist()
    torch.testing.assert_close(result.scores, expected.gather(1, order))


def test_be_score_keeps_the_bi_encoder_order_without_a_cross_encoder():
    result = rerank(None, CAPTIONS, IMAGES, ROWS, BE, score="be")
    assert result.rows.tolist() == ROWS.tolist() and result.ce_scores is None
    assert result.ce_seconds == 0.0 and result.ce_pairs == 0


def test_k_reranks_only_the_first_candidates():
    result = rerank(TableCrossEncoder(), CAPTIONS, IMAGES, ROWS, BE, k=2)
    assert result.rows.tolist() == [[1, 0], [2, 0]]


def test_cache_scores_each_pair_once_across_calls_and_directions():
    cross_encoder, cache = TableCrossEncoder(), PairScoreCache()
    first = rerank(cross_encoder, CAPTIONS, IMAGES, ROWS, BE, query_ids=["c0", "c1"], cache=cache)
    # The same queries again: nothing is cross-encoded, the logits and the charged seconds are the first call's.
    again = rerank(cross_encoder, CAPTIONS, IMAGES, ROWS, BE, query_ids=["c0", "c1"], cache=cache)
    assert len(cross_encoder.pairs) == 6 and again.ce_pairs == 0
    assert again.ce_scores.tolist() == first.ce_scores.tolist() and again.ce_seconds == first.ce_seconds
    # Image -> text: keys are (caption id, image id) whatever the direction, so these pairs are cached too.
    image_queries = rerank(
        cross_encoder,
        ["i1.jpg"],
        CAPTIONS,
        [[0, 1]],
        [[0.2, 0.1]],
        query_modality="image",
        query_ids=[1],
        candidate_ids=["c0", "c1"],
        cache=cache,
    )
    assert len(cross_encoder.pairs) == 6 and image_queries.ce_pairs == 0
    assert image_queries.ce_scores.tolist() == [[3.0, 0.5]]
    assert len(cache) == 6 and cache.get(("c1", 2))[0] == 4.0
    assert cache.seconds_of([("c0", 0), ("c0", 0)]) == cache.get(("c0", 0))[1]


def test_cache_reads_only_the_candidates_it_has_not_scored():
    read = []

    def image_of(row: int) -> str:
        read.append(row)
        return IMAGES[row]

    cache = PairScoreCache()
    rerank(TableCrossEncoder(), ["c0"], image_of, [[0, 1]], None, query_ids=["c0"], cache=cache)
    rerank(TableCrossEncoder(), ["c0"], image_of, [[0, 1, 2]], None, query_ids=["c0"], cache=cache)
    assert read == [0, 1, 2]


def test_misuse_is_named():
    with pytest.raises(ValueError, match="A cache needs query_ids"):
        rerank(TableCrossEncoder(), CAPTIONS, IMAGES, ROWS, BE, cache=PairScoreCache())
    with pytest.raises(ValueError, match="for 1 queries but 2 queries"):
        rerank(TableCrossEncoder(), CAPTIONS, IMAGES, ROWS[:1], BE[:1])
    with pytest.raises(ValueError, match=r"be_scores \(2, 2\) and rows \(2, 3\)"):
        rerank(TableCrossEncoder(), CAPTIONS, IMAGES, ROWS, BE[:, :2])
    with pytest.raises(ValueError, match="'combination' needs be_scores"):
        rerank(TableCrossEncoder(), CAPTIONS, IMAGES, ROWS, score="combination")
    with pytest.raises(ValueError, match="needs a cross-encoder"):
        rerank(None, CAPTIONS, IMAGES, ROWS, BE)
    with pytest.raises(ValueError, match="Unknown score 'bm25'"):
        rerank(TableCrossEncoder(), CAPTIONS, IMAGES, ROWS, BE, score="bm25")
    with pytest.raises(ValueError, match=r"rows must be \[num_queries, K\]"):
        rerank(TableCrossEncoder(), CAPTIONS, IMAGES, ROWS[0], BE[0])


def test_eager_cross_encoder_scores_each_query_once_with_the_predict_logits():
    from conftest import build_views

    from mm_sbert import RegionFeatures
    from mm_sbert.retrieval.cooperative_retriever import cross_encoder_logits, eager_module

    _, cross_encoder = build_views(featurizer=False)
    assert eager_module(cross_encoder) is cross_encoder[0]
    generator = torch.Generator().manual_seed(0)
    images = [
        RegionFeatures(torch.rand(count, 16, generator=generator), torch.tensor([[0.0, 0.0, 1.0, 1.0]] * count))
        for count in (3, 1, 2, 3)
    ]
    captions = ["a red square", "two blue circles on a green field"]
    rows = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    result = rerank(cross_encoder, captions, images, rows, batch_size=3)  # batches of 3: padding differs per batch
    for query, caption in enumerate(captions):
        expected = cross_encoder_logits(cross_encoder, [(caption, images[row]) for row in rows[query].tolist()])
        got = result.ce_scores[query][torch.argsort(result.rows[query])]
        assert torch.allclose(got, expected[torch.argsort(rows[query])], atol=1e-5)
    cross_encoder[0].train()
    assert eager_module(cross_encoder) is None
