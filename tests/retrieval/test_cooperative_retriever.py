from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image, ImageDraw
from sentence_transformers import util

from mm_sbert.retrieval import CooperativeRetriever, Hit, combine_scores

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLORS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
CAPTIONS = ["a red square", "two green circles", "a blue sky", "yellow sun", "a black cat at night"]


def make_image(index: int) -> Image.Image:
    image = Image.new("RGB", (32, 32), COLORS[index % len(COLORS)])
    ImageDraw.Draw(image).rectangle([index * 3, 0, index * 3 + 8, 16], fill=COLORS[(index + 3) % len(COLORS)])
    return image


IMAGES = [make_image(i) for i in range(8)]


def spread_head(cross_encoder) -> None:
    # The tiny model's fresh head gives logits ~1e-4 apart; scaling it makes the rankings robust to float noise.
    with torch.no_grad():
        cross_encoder[0].classifier.weight.mul_(500.0)


@pytest.fixture(scope="module")
def views():
    from conftest import build_views

    bi_encoder, cross_encoder = build_views()
    spread_head(cross_encoder)
    return bi_encoder, cross_encoder


class RecordingCrossEncoder:
    """Passes predict() through to a real cross-encoder and keeps the pairs it was given."""

    def __init__(self, cross_encoder) -> None:
        self.cross_encoder, self.pairs = cross_encoder, []

    def predict(self, pairs, **kwargs):
        self.pairs.extend(pairs)
        return self.cross_encoder.predict(pairs, **kwargs)


def reference_coop(bi_encoder, cross_encoder, queries, collection, top_k, caption_first):
    """BE top-k by util.semantic_search, then CE logits sorted best first: computed without the retriever."""
    query_embeddings = bi_encoder.encode(queries, convert_to_tensor=True)
    collection_embeddings = bi_encoder.encode(collection, convert_to_tensor=True)
    results = []
    for query, hits in zip(queries, util.semantic_search(query_embeddings, collection_embeddings, top_k=top_k)):
        rows = [hit["corpus_id"] for hit in hits]
        pairs = [(query, collection[row]) if caption_first else (collection[row], query) for row in rows]
        logits = cross_encoder.predict(pairs, activation_fn=torch.nn.Identity()).tolist()
        be_scores = [hit["score"] for hit in hits]
        results.append(sorted(zip(logits, rows, be_scores), key=lambda entry: entry[0], reverse=True))
    return results


def test_text_to_image_coop_equals_ce_scores_sorted_over_be_top_k(views):
    bi_encoder, cross_encoder = views
    recorder = RecordingCrossEncoder(cross_encoder)
    retriever = CooperativeRetriever(bi_encoder, recorder, top_k=4)
    retriever.index(IMAGES)
    results = retriever.search(CAPTIONS)
    expected = reference_coop(bi_encoder, cross_encoder, CAPTIONS, IMAGES, 4, caption_first=True)
    for hits, reference in zip(results, expected):
        assert [hit.corpus_id for hit in hits] == [row for _, row, _ in reference]
        expected_logits = [logit for logit, _, _ in reference]
        torch.testing.assert_close([hit.ce_score for hit in hits], expected_logits, atol=1e-5, rtol=0)
        torch.testing.assert_close([hit.be_score for hit in hits], [be for _, _, be in reference], atol=1e-6, rtol=0)
        scores = [hit.score for hit in hits]
        assert scores == sorted(scores, reverse=True)  # best first, not the reference code's worst-first
    assert all(isinstance(caption, str) and isinstance(image, Image.Image) for caption, image in recorder.pairs)
    assert len(recorder.pairs) == len(CAPTIONS) * 4


def test_image_to_text_coop_builds_caption_image_pairs(views):
    bi_encoder, cross_encoder = views
    recorder = RecordingCrossEncoder(cross_encoder)
    retriever = CooperativeRetriever(bi_encoder, recorder, top_k=3)
    retriever.index(CAPTIONS, ids=[f"cap{i}" for i in range(len(CAPTIONS))])
    queries = IMAGES[:3]
    results = retriever.search(queries)
    expected = reference_coop(bi_encoder, cross_encoder, queries, CAPTIONS, 3, caption_first=False)
    for hits, reference in zip(results, expected):
        assert [hit.id for hit in hits] == [f"cap{row}" for _, row, _ in reference]
        expected_logits = [logit for logit, _, _ in reference]
        torch.testing.assert_close([hit.ce_score for hit in hits], expected_logits, atol=1e-5, rtol=0)
    # (caption, image) whatever the direction
    assert all(isinstance(caption, str) and isinstance(image, Image.Image) for caption, image in recorder.pairs)


def test_single_query_returns_one_ranked_list_and_hits_read_like_semantic_search(views):
    bi_encoder, cross_encoder = views
    retriever = CooperativeRetriever(bi_encoder, cross_encoder, top_k=3)
    retriever.index(IMAGES)
    hits = retriever.search(CAPTIONS[0])
    assert isinstance(hits, list) and all(isinstance(hit, Hit) for hit in hits) and len(hits) == 3
    assert hits == retriever.search([CAPTIONS[0]])[0]
    assert hits[0]["corpus_id"] == hits[0].corpus_id and hits[0]["score"] == hits[0].score


def test_without_rerank_the_ranking_is_semantic_search(views):
    bi_encoder, cross_encoder = views
    retriever = CooperativeRetriever(bi_encoder, cross_encoder, top_k=5)
    retriever.index(IMAGES)
    results = retriever.search(CAPTIONS, rerank=False)
    reference = util.semantic_search(
        bi_encoder.encode(CAPTIONS, convert_to_tensor=True), bi_encoder.encode(IMAGES, convert_to_tensor=True), top_k=5
    )
    for hits, ref in zip(results, reference):
        assert [hit.corpus_id for hit in hits] == [entry["corpus_id"] for entry in ref]
        torch.testing.assert_close([hit.score for hit in hits], [entry["score"] for entry in ref], atol=1e-6, rtol=0)
        assert all(hit.ce_score is None for hit in hits)


@pytest.mark.parametrize("score", ["combination", "combination_normalized"])
def test_combined_scores_order_the_hits(views, score):
    bi_encoder, cross_encoder = views
    retriever = CooperativeRetriever(bi_encoder, cross_encoder, top_k=5)
    retriever.index(IMAGES)
    hits = retriever.search(CAPTIONS[1], score=score, lam=0.3)
    be_scores = torch.tensor([[hit.be_score for hit in hits]])
    ce_scores = torch.tensor([[hit.ce_score for hit in hits]])
    expected = combine_scores(be_scores, ce_scores, score, lam=0.3)[0].tolist()
    torch.testing.assert_close([hit.score for hit in hits], expected, atol=1e-6, rtol=0)
    assert expected == sorted(expected, reverse=True)


def test_joint_model_reranks_with_its_own_head(views):
    bi_encoder, cross_encoder = views
    joint = CooperativeRetriever(bi_encoder, top_k=4)  # no cross-encoder given: bi_encoder.to_cross_encoder()
    assert joint.cross_encoder[0] is bi_encoder[0]
    separate = CooperativeRetriever(bi_encoder, cross_encoder, top_k=4)
    joint.index(IMAGES)
    separate.use_index(joint.embedding_index, IMAGES)
    joint_hits, separate_hits = joint.search(CAPTIONS[2]), separate.search(CAPTIONS[2])
    assert [hit.corpus_id for hit in joint_hits] == [hit.corpus_id for hit in separate_hits]
    assert [hit.ce_score for hit in joint_hits] == [hit.ce_score for hit in separate_hits]


def test_reopened_image_collection_needs_its_items_to_rerank(views, tmp_path):
    bi_encoder, cross_encoder = views
    original = CooperativeRetriever(bi_encoder, cross_encoder, top_k=3)
    original.index(IMAGES, path=str(tmp_path / "index"))
    reopened = CooperativeRetriever(bi_encoder, cross_encoder, top_k=3).open(str(tmp_path / "index"))
    assert len(reopened.search(CAPTIONS[0], rerank=False)) == 3
    with pytest.raises(ValueError, match="pass items="):
        reopened.search(CAPTIONS[0])
    reopened.open(str(tmp_path / "index"), items=lambda row: IMAGES[row])
    # The items handed over reach the cross-encoder: the reranked hits are the original retriever's.
    expected = [(hit.corpus_id, hit.ce_score) for hit in original.search(CAPTIONS[0])]
    got = [(hit.corpus_id, hit.ce_score) for hit in reopened.search(CAPTIONS[0])]
    assert [row for row, _ in got] == [row for row, _ in expected]
    torch.testing.assert_close([score for _, score in got], [score for _, score in expected], rtol=0, atol=1e-6)


def test_misuse_is_named(views):
    bi_encoder, cross_encoder = views
    retriever = CooperativeRetriever(bi_encoder, cross_encoder)
    with pytest.raises(RuntimeError, match="call index"):
        retriever.search(CAPTIONS[0])
    retriever.index(CAPTIONS)
    with pytest.raises(ValueError, match="queries are texts and so is the collection"):
        retriever.search("a caption query")
    with pytest.raises(ValueError, match="mix captions and images"):
        retriever.index([CAPTIONS[0], IMAGES[0]])


def test_persisted_collection_gives_identical_results_in_a_new_process(views, tmp_path):
    bi_encoder, cross_encoder = views
    paths = []
    for index, image in enumerate(IMAGES):
        paths.append(str(tmp_path / f"image{index}.png"))
        image.save(paths[-1])
    retriever = CooperativeRetriever(bi_encoder, cross_encoder, top_k=4)
    retriever.index(paths, ids=[f"img{i}" for i in range(len(paths))], path=str(tmp_path / "index"))
    # One explicit thread count in both processes: the default policy follows the load of the moment, and a sum
    # split over other threads rounds differently in the last bits.
    expected = [[hit.to_dict() for hit in hits] for hits in retriever.search(CAPTIONS, threads=1)]

    code = f"""
        import json, sys
        sys.path.insert(0, "tests")
        from conftest import build_views
        from tests.retrieval.test_cooperative_retriever import CAPTIONS, spread_head
        from mm_sbert.retrieval import CooperativeRetriever
        bi_encoder, cross_encoder = build_views()
        spread_head(cross_encoder)
        retriever = CooperativeRetriever(bi_encoder, cross_encoder, top_k=4).open({str(tmp_path / "index")!r})
        print(json.dumps([[hit.to_dict() for hit in hits] for hits in retriever.search(CAPTIONS, threads=1)]))
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


def test_top_k_zero_and_nan_query_embeddings_are_refused(views):
    bi_encoder, cross_encoder = views
    retriever = CooperativeRetriever(bi_encoder, cross_encoder, top_k=3)
    retriever.index(IMAGES)
    with pytest.raises(ValueError, match="top_k must be an integer >= 1 .* got 0"):
        retriever.search(CAPTIONS[0], top_k=0)  # used to return the default 3 hits
    query = torch.full((1, bi_encoder.get_embedding_dimension()), float("nan"))
    with pytest.raises(ValueError, match="query embeddings hold NaN"):
        retriever.search(CAPTIONS[0], query_embeddings=query)
