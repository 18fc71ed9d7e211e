"""MilvusIndex against the exact EmbeddingIndex; every test starts and stops its own embedded milvus-lite engine."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from mm_sbert.retrieval import CooperativeRetriever, EmbeddingIndex, MilvusIndex


def random_embeddings(n: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def exact_index() -> EmbeddingIndex:
    return EmbeddingIndex(
        random_embeddings(300),
        ids=[f"img-{i}" for i in range(300)],
        items=[f"/images/{i}.jpg" for i in range(300)],
        metadata={"modality": "image", "model": "tiny"},
    )


def test_top_20_equals_the_exact_index_and_survives_an_engine_restart(tmp_path, exact_index):
    uri = str(tmp_path / "milvus.db")
    queries = random_embeddings(5, seed=1)
    exact_scores, exact_rows = exact_index.search(queries, top_k=20)
    with MilvusIndex.from_index(exact_index, uri) as milvus:
        scores, rows = milvus.search(queries, top_k=20)
        assert rows.tolist() == exact_rows.tolist()
        torch.testing.assert_close(scores, exact_scores, rtol=0, atol=1e-5)
        assert [milvus.row_id(row) for row in rows[0].tolist()] == [f"img-{row}" for row in exact_rows[0].tolist()]
    # A new client on the same file starts the engine again: the collection, its metadata and items are there.
    with MilvusIndex(uri) as reopened:
        assert (len(reopened), reopened.dim) == (300, 32)
        assert reopened.metadata == {"modality": "image", "model": "tiny"}
        assert reopened.row_id(7) == "img-7"  # not in a search result: fetched from the engine
        assert reopened.items(7) == "/images/7.jpg"
        assert reopened.search(queries, top_k=20)[1].tolist() == exact_rows.tolist()


def test_refuses_missing_collections_overwrites_and_forced_exact_search(tmp_path, exact_index):
    uri = str(tmp_path / "milvus.db")
    with pytest.raises(ValueError, match="has no collection 'mm_sbert'; build it with MilvusIndex.create"):
        MilvusIndex(uri)
    with MilvusIndex.from_index(exact_index, uri, collection_name="images") as milvus:
        with pytest.raises(ValueError, match="cannot force exact search"):
            milvus.search(random_embeddings(1), top_k=3, exact=True)
        with pytest.raises(ValueError, match=r"Query embeddings must be \[Q, 32\], got shape \(1, 8\)"):
            milvus.search(torch.randn(1, 8), top_k=3)
    with pytest.raises(ValueError, match="already has a collection 'images'; pass overwrite=True"):
        MilvusIndex.from_index(exact_index, uri, collection_name="images")
    with MilvusIndex.create(uri, random_embeddings(10), collection_name="images", overwrite=True) as replaced:
        assert len(replaced) == 10
        assert replaced.items is None  # no items given: the reranker must be handed them
        assert replaced.row_id(3) == 3


def make_image(index: int) -> Image.Image:
    colors = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
    image = Image.new("RGB", (32, 32), colors[index % 8])
    ImageDraw.Draw(image).rectangle([index * 3, 0, index * 3 + 8, 16], fill=colors[(index + 3) % 8])
    return image


def test_cooperative_retriever_reranks_what_milvus_retrieves_like_the_exact_index(tmp_path):
    from conftest import build_views

    bi_encoder, cross_encoder = build_views()
    with torch.no_grad():  # spread the fresh head's logits, so rankings do not hang on float noise
        cross_encoder[0].classifier.weight.mul_(500.0)
    images = [make_image(i) for i in range(8)]
    retriever = CooperativeRetriever(bi_encoder, cross_encoder, top_k=5, show_progress_bar=False)
    exact_index = retriever.index(images, ids=[f"img{i}" for i in range(8)])
    expected = retriever.search(["a red square", "a blue sky"])

    with MilvusIndex.from_index(exact_index, str(tmp_path / "milvus.db")) as milvus:
        milvus_retriever = CooperativeRetriever(bi_encoder, cross_encoder, top_k=5).use_index(milvus, items=images)
        hits = milvus_retriever.search(["a red square", "a blue sky"])
    assert [[hit.id for hit in query_hits] for query_hits in hits] == [[h.id for h in q] for q in expected]
    for query_hits, expected_hits in zip(hits, expected):
        for hit, expected_hit in zip(query_hits, expected_hits):
            assert hit.ce_score == pytest.approx(expected_hit.ce_score, abs=1e-5)
            assert hit.be_score == pytest.approx(expected_hit.be_score, abs=1e-5)
