from __future__ import annotations

import json

import pytest
import torch

from mm_sbert.retrieval import EmbeddingIndex, IndexCorruptedError, IndexWriter, VectorSearch
from mm_sbert.retrieval.vector_search import (
    CONFIG_FILE,
    FAISS_FILE,
    INT8_CODES_FILE,
    default_factory,
    default_search_parameters,
)

APPROXIMATE = ["int8", "binary", "hnsw", "ivf"]
# Options under which each precision's candidate pool is the whole 200-row collection.
COVERING = {
    "int8": {"rescore_multiplier": 20},
    "binary": {"rescore_multiplier": 20},
    "hnsw": {"rescore_multiplier": 20, "search_parameters": "efSearch=256"},
    "ivf": {"rescore_multiplier": 20, "search_parameters": "nprobe=1000"},
}


def clustered(n: int = 200, dim: int = 64, seed: int = 0) -> torch.Tensor:
    """Rows around 10 centres, as real embeddings are: near neighbours are clearly nearer than the rest."""
    centres = torch.randn(10, dim, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed + 1))
    return centres[torch.arange(n) % 10] + 0.5 * noise


def queries(seed: int = 1) -> torch.Tensor:
    return clustered(6, seed=seed)


@pytest.mark.parametrize("precision", APPROXIMATE)
def test_rescored_top_k_equals_exact_search_when_the_pool_covers_the_collection(precision):
    corpus = clustered()
    exact_scores, exact_rows = EmbeddingIndex(corpus).search(queries(), top_k=10)
    index = EmbeddingIndex(corpus, precision=precision, search_options=COVERING[precision])
    assert index.precision == precision
    assert (index.vector_search.candidates(torch.nn.functional.normalize(queries()), 200) >= 0).all()
    scores, rows = index.search(queries(), top_k=10)
    assert rows.tolist() == exact_rows.tolist()
    torch.testing.assert_close(scores, exact_scores, rtol=0, atol=1e-6)
    # One query alone (a [D] vector) takes the same path.
    single_scores, single_rows = index.search(queries()[2], top_k=10)
    assert single_rows.tolist() == exact_rows[2:3].tolist()
    torch.testing.assert_close(single_scores, exact_scores[2:3], rtol=0, atol=1e-6)


@pytest.mark.parametrize("precision", ["int8", "hnsw", "ivf"])
def test_default_pool_holds_the_exact_top_k_of_clustered_data_and_then_equals_exact_search(precision):
    corpus = clustered(500)
    exact_scores, exact_rows = EmbeddingIndex(corpus).search(queries(), top_k=5)
    options = {"search_parameters": "nprobe=1000"} if precision == "ivf" else None
    index = EmbeddingIndex(corpus, precision=precision, search_options=options)
    pool = index.vector_search.candidates(torch.nn.functional.normalize(queries()), 5 * 4)
    for exact, candidates in zip(exact_rows.tolist(), pool.tolist()):
        assert set(exact) <= set(candidates)
    scores, rows = index.search(queries(), top_k=5)
    assert rows.tolist() == exact_rows.tolist()
    torch.testing.assert_close(scores, exact_scores, rtol=0, atol=1e-6)


def test_exact_true_bypasses_the_quantised_search():
    corpus = clustered()
    index = EmbeddingIndex(corpus, precision="binary", search_options={"rescore_multiplier": 1})
    exact_rows = EmbeddingIndex(corpus).search(queries(), top_k=10)[1]
    assert index.search(queries(), top_k=10, exact=True)[1].tolist() == exact_rows.tolist()
    # One binary candidate per hit is a different (worse) ranking on 64-d data: the flag is what made them equal.
    assert index.search(queries(), top_k=10)[1].tolist() != exact_rows.tolist()


@pytest.mark.parametrize("precision", APPROXIMATE)
def test_save_open_round_trip_gives_identical_results(tmp_path, precision):
    index = EmbeddingIndex(clustered(), ids=[f"img{i}" for i in range(200)], precision=precision)
    scores, rows = index.search(queries(), top_k=7)
    index.save(str(tmp_path / "index"))
    reopened = EmbeddingIndex.open(str(tmp_path / "index"))
    assert reopened.precision == precision
    assert repr(reopened.vector_search) == repr(index.vector_search)
    reopened_scores, reopened_rows = reopened.search(queries(), top_k=7)
    assert torch.equal(reopened_rows, rows)
    assert torch.equal(reopened_scores, scores)
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["precision"] == precision
    assert CONFIG_FILE in manifest["files"]
    assert (INT8_CODES_FILE if precision == "int8" else FAISS_FILE) in manifest["files"]


def test_a_changed_search_file_is_refused_on_open(tmp_path):
    EmbeddingIndex(clustered(), precision="int8").save(str(tmp_path / "index"))
    codes_path = tmp_path / "index" / INT8_CODES_FILE
    data = bytearray(codes_path.read_bytes())
    data[-1] ^= 0xFF
    codes_path.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptedError, match="does not match its sha256 checksum"):
        EmbeddingIndex.open(str(tmp_path / "index"))


def test_search_files_are_extra_files_of_the_index(tmp_path):
    # The precision's files go through the index's extra-files mechanism: listed, checked, found with file_path().
    index = EmbeddingIndex(clustered(), precision="int8")
    index.save(str(tmp_path / "index"), extra_files={"notes.txt": b"hello"})
    reopened = EmbeddingIndex.open(str(tmp_path / "index"))
    assert reopened.file_path(INT8_CODES_FILE) == str(tmp_path / "index" / INT8_CODES_FILE)
    assert open(reopened.file_path("notes.txt"), "rb").read() == b"hello"
    assert torch.equal(reopened.search(queries(), top_k=5)[1], index.search(queries(), top_k=5)[1])
    with IndexWriter(str(tmp_path / "other"), count=1, dim=2) as writer:
        with pytest.raises(ValueError, match="'vector_search.json' is one of the index's own files"):
            writer.add_file(CONFIG_FILE, b"{}")
        writer.write(torch.tensor([[1.0, 0.0]]))


def test_a_search_file_missing_from_the_manifest_is_refused_on_open(tmp_path):
    EmbeddingIndex(clustered(), precision="hnsw").save(str(tmp_path / "index"))
    manifest_path = tmp_path / "index" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["files"][FAISS_FILE]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(
        IndexCorruptedError, match="The hnsw search of the index at .* is unreadable .*vector_search.faiss"
    ):
        EmbeddingIndex.open(str(tmp_path / "index"))


def test_index_writer_set_precision_persists_the_search(tmp_path):
    corpus = torch.nn.functional.normalize(clustered(), dim=1).numpy()
    with IndexWriter(str(tmp_path / "index"), count=200, dim=64) as writer:
        writer.write(corpus[:120])
        writer.write(corpus[120:])
        writer.set_precision("binary", {"rescore_multiplier": 20})
    reopened = EmbeddingIndex.open(str(tmp_path / "index"))
    assert reopened.precision == "binary"
    assert reopened.search(queries(), top_k=10)[1].tolist() == EmbeddingIndex(corpus).search(queries(), 10)[1].tolist()


def test_float32_index_has_no_search_file(tmp_path):
    EmbeddingIndex(clustered()).save(str(tmp_path / "index"))
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["precision"] == "float32"
    assert CONFIG_FILE not in manifest["files"]
    assert EmbeddingIndex.open(str(tmp_path / "index")).vector_search is None


def test_bad_precision_and_options_are_refused():
    with pytest.raises(ValueError, match=r"precision must be one of \['float32', 'int8', 'binary', 'hnsw', 'ivf'\]"):
        EmbeddingIndex(clustered(), precision="int4")
    with pytest.raises(ValueError, match=r"search_options \['rescore_multiplier'\] need a precision"):
        EmbeddingIndex(clustered(), search_options={"rescore_multiplier": 2})
    with pytest.raises(ValueError, match="rescore_multiplier must be >= 1, got 0"):
        VectorSearch("int8", rescore_multiplier=0)
    with pytest.raises(ValueError, match="factory= applies to precision 'hnsw', 'ivf' or 'binary', not 'int8'"):
        VectorSearch("int8", factory="HNSW32")
    # binary takes a binary IVF (BIVF<n>) only
    with pytest.raises(ValueError, match="A binary factory is a FAISS binary IVF such as 'BIVF4096', got 'HNSW32'"):
        VectorSearch("binary", factory="HNSW32")


def test_a_narrow_ivf_probe_raises_instead_of_returning_fewer_hits():
    index = EmbeddingIndex(
        clustered(), precision="ivf", search_options={"factory": "IVF5,Flat", "search_parameters": "nprobe=1"}
    )
    with pytest.raises(RuntimeError, match="returned fewer than 200 candidates"):
        index.search(queries(), top_k=200)


def test_query_width_must_match():
    index = EmbeddingIndex(clustered(), precision="int8")
    with pytest.raises(ValueError, match="Query embeddings are 8-d but the index is 64-d"):
        index.search(torch.randn(2, 8), top_k=3)


def test_default_factories():
    assert default_factory("hnsw", 10**6) == "HNSW32"
    assert default_factory("ivf", 10**6) == "IVF1000,Flat"
    assert default_factory("ivf", 100) == "IVF2,Flat"
    assert default_search_parameters("ivf", "IVF1000,Flat") == "nprobe=125"
    assert default_search_parameters("ivf", "IVF25,Flat") == "nprobe=16"
    assert default_search_parameters("ivf", "IVF2,Flat") == "nprobe=2"
    assert default_search_parameters("hnsw", "HNSW32") == "efSearch=128"
