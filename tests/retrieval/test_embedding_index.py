from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from sentence_transformers import util

from mm_sbert.retrieval import EmbeddingIndex, IndexCorruptedError, IndexWriter, exact_search

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def random_embeddings(n: int, dim: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("corpus_chunk_size, query_chunk_size", [(65536, 256), (37, 2)])
def test_exact_search_equals_semantic_search(corpus_chunk_size, query_chunk_size):
    corpus, queries = random_embeddings(500), random_embeddings(7, seed=1)
    reference = util.semantic_search(queries, corpus, top_k=10)
    normalized = torch.nn.functional.normalize
    scores, rows = exact_search(
        normalized(queries, dim=1),
        normalized(corpus, dim=1),
        top_k=10,
        corpus_chunk_size=corpus_chunk_size,
        query_chunk_size=query_chunk_size,
    )
    assert rows.tolist() == [[hit["corpus_id"] for hit in hits] for hits in reference]
    expected = torch.tensor([[hit["score"] for hit in hits] for hits in reference])
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)


def test_index_search_normalizes_and_caps_top_k():
    corpus = random_embeddings(30) * 7.0  # not normalised: the index normalises, as cosine similarity needs
    index = EmbeddingIndex(corpus, ids=[f"item{i}" for i in range(30)])
    reference = util.semantic_search(random_embeddings(3, seed=2), corpus, top_k=50)
    scores, rows = index.search(random_embeddings(3, seed=2) * 0.1, top_k=50)
    assert rows.shape == (3, 30)
    assert rows.tolist() == [[hit["corpus_id"] for hit in hits] for hits in reference]
    torch.testing.assert_close(scores[:, 0], torch.tensor([hits[0]["score"] for hits in reference]), atol=1e-6, rtol=0)
    assert index.row_id(int(rows[0, 0])) == f"item{int(rows[0, 0])}"


def test_float16_index_keeps_the_ranking_of_well_separated_scores():
    corpus = random_embeddings(200, dim=32)
    exact_scores, exact_rows = EmbeddingIndex(corpus).search(corpus[:5], top_k=1)
    half_scores, half_rows = EmbeddingIndex(corpus, dtype="float16").search(corpus[:5], top_k=1)
    assert exact_rows.flatten().tolist() == [0, 1, 2, 3, 4]  # each row is its own nearest neighbour
    assert half_rows.flatten().tolist() == [0, 1, 2, 3, 4]
    torch.testing.assert_close(half_scores, exact_scores, atol=2e-3, rtol=0)


def test_faiss_flat_index_matches_exact_search_and_is_persisted(tmp_path):
    corpus, queries = random_embeddings(300), random_embeddings(4, seed=3)
    index = EmbeddingIndex(corpus)
    exact_scores, exact_rows = index.search(queries, top_k=5)
    index.build_ann("Flat")
    ann_scores, ann_rows = index.search(queries, top_k=5)
    assert ann_rows.tolist() == exact_rows.tolist()
    torch.testing.assert_close(ann_scores, exact_scores, atol=1e-5, rtol=0)
    index.save(str(tmp_path / "index"))
    reopened = EmbeddingIndex.open(str(tmp_path / "index"))
    assert reopened.ann_factory == "Flat"
    assert reopened.search(queries, top_k=5)[1].tolist() == exact_rows.tolist()


def test_save_open_round_trip_is_bit_exact_and_memory_mapped(tmp_path):
    corpus = random_embeddings(100)
    index = EmbeddingIndex(corpus, ids=list(range(100, 200)), items=[f"c{i}" for i in range(100)], metadata={"a": 1})
    index.save(str(tmp_path / "index"))
    reopened = EmbeddingIndex.open(str(tmp_path / "index"))
    assert isinstance(reopened.embeddings, np.memmap)
    np.testing.assert_array_equal(np.asarray(reopened.embeddings), index.embeddings)
    assert reopened.ids == list(range(100, 200))
    assert reopened.items == [f"c{i}" for i in range(100)]
    assert reopened.metadata == {"a": 1}
    queries = random_embeddings(3, seed=4)
    assert torch.equal(reopened.search(queries, 7)[0], index.search(queries, 7)[0])


def test_save_replaces_an_existing_index(tmp_path):
    path = str(tmp_path / "index")
    EmbeddingIndex(random_embeddings(10)).save(path)
    EmbeddingIndex(random_embeddings(20)).save(path)
    assert len(EmbeddingIndex.open(path)) == 20
    assert os.listdir(tmp_path) == ["index"]  # no temporary folder left behind


@pytest.fixture
def saved_index(tmp_path) -> str:
    path = str(tmp_path / "index")
    EmbeddingIndex(random_embeddings(64), ids=[f"id{i}" for i in range(64)]).save(path)
    return path


def test_truncated_embeddings_are_detected(saved_index):
    embeddings = os.path.join(saved_index, "embeddings.npy")
    with open(embeddings, "r+b") as f:
        f.truncate(os.path.getsize(embeddings) - 64)
    with pytest.raises(IndexCorruptedError, match="truncated"):
        EmbeddingIndex.open(saved_index)


def test_missing_manifest_means_an_interrupted_write(saved_index):
    os.remove(os.path.join(saved_index, "manifest.json"))
    with pytest.raises(IndexCorruptedError, match="not completely written"):
        EmbeddingIndex.open(saved_index)


def test_changed_bytes_fail_the_checksum(saved_index):
    embeddings = os.path.join(saved_index, "embeddings.npy")
    with open(embeddings, "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"\x00\x01\x02")
    with pytest.raises(IndexCorruptedError, match="checksum"):
        EmbeddingIndex.open(saved_index)
    # Without full verification the (same-size) change goes unnoticed: that is what verify=True is for.
    assert len(EmbeddingIndex.open(saved_index, verify=False)) == 64


def test_edited_ids_fail_the_checksum(saved_index):
    with open(os.path.join(saved_index, "ids.json"), "w") as f:
        json.dump([f"xx{i}" for i in range(64)], f)
    with pytest.raises(IndexCorruptedError, match="ids.json"):
        EmbeddingIndex.open(saved_index, verify=False)


def test_incomplete_writer_does_not_publish_an_index(tmp_path):
    path = str(tmp_path / "index")
    with pytest.raises(ValueError, match="Only 5 of 10 rows"):
        with IndexWriter(path, count=10, dim=16) as writer:
            writer.write(random_embeddings(5))
    assert not os.path.exists(path)
    assert os.listdir(tmp_path) == []


# The index module needs only numpy and torch: loading it alone keeps each fresh process to a few seconds
# (importing the whole package pulls in transformers).
LIGHT_IMPORT = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("embedding_index", "mm_sbert/retrieval/embedding_index.py")
module = importlib.util.module_from_spec(spec)
sys.modules["embedding_index"] = module
spec.loader.exec_module(module)
EmbeddingIndex, IndexWriter = module.EmbeddingIndex, module.IndexWriter
"""


def _run(code: str) -> subprocess.CompletedProcess:
    code = LIGHT_IMPORT + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_process_killed_mid_write_leaves_the_previous_index_intact(tmp_path):
    path = str(tmp_path / "index")
    old = EmbeddingIndex(random_embeddings(32), ids=[f"old{i}" for i in range(32)])
    old.save(path)
    queries = random_embeddings(2, seed=5)
    expected = old.search(queries, 3)
    result = _run(
        f"""
        import os, signal, torch
        with IndexWriter({path!r}, count=100, dim=16) as writer:
            writer.write(torch.randn(50, 16))
            os.kill(os.getpid(), signal.SIGKILL)  # dies half-way, as a crash or OOM kill would
        """
    )
    assert result.returncode == -9, result.stderr
    reopened = EmbeddingIndex.open(path)
    assert reopened.ids[0] == "old0"
    assert torch.equal(reopened.search(queries, 3)[1], expected[1])
    assert any(name.startswith(".index.tmp-") for name in os.listdir(tmp_path))  # the dead writer's leftovers


def test_index_written_by_a_killed_process_reopens_with_identical_results(tmp_path):
    path = str(tmp_path / "index")
    result = _run(
        f"""
        import json, os, signal, torch
        corpus = torch.randn(1000, 24, generator=torch.Generator().manual_seed(0))
        queries = torch.randn(3, 24, generator=torch.Generator().manual_seed(1))
        index = EmbeddingIndex(corpus, ids=[f"img{{i}}" for i in range(1000)])
        index.save({path!r})
        scores, rows = index.search(queries, 5)
        ids = [[index.row_id(r) for r in row] for row in rows.tolist()]
        print(json.dumps({{"scores": scores.tolist(), "ids": ids}}))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert result.returncode == -9, result.stderr
    before = json.loads(result.stdout)
    index = EmbeddingIndex.open(path)
    queries = torch.randn(3, 24, generator=torch.Generator().manual_seed(1))
    scores, rows = index.search(queries, 5)
    assert [[index.row_id(r) for r in row] for row in rows.tolist()] == before["ids"]
    assert scores.tolist() == before["scores"]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="3 ids for 4"):
        EmbeddingIndex(random_embeddings(4), ids=[1, 2, 3])
    with pytest.raises(ValueError, match="2-d"):
        EmbeddingIndex(np.zeros(5))
    with pytest.raises(ValueError, match="16-d"):
        EmbeddingIndex(random_embeddings(4)).search(torch.zeros(1, 8))
    with pytest.raises(FileNotFoundError, match="No embedding index"):
        EmbeddingIndex.open("/nonexistent/index")
    with pytest.raises(TypeError, match="ids\\[0\\]"):
        IndexWriter("/tmp/unused-index", count=1, dim=2, ids=[1.5])
