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

from mm_sbert.errors import MMSbertError, StorageError, UnsafePathError, UnsupportedFormatError
from mm_sbert.image_features import FeatureStoreError
from mm_sbert.retrieval import EmbeddingIndex, IndexCorruptedError, IndexWriter, exact_search
from mm_sbert.storage import file_record

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def random_embeddings(n: int, dim: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


# query_chunk_size 1: every query goes through the one-query (numpy matrix-vector) path.
@pytest.mark.parametrize("corpus_chunk_size, query_chunk_size", [(65536, 256), (37, 2), (37, 1), (65536, 1)])
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


def test_one_query_of_a_float16_memory_mapped_corpus_equals_the_batched_search(tmp_path):
    corpus = torch.nn.functional.normalize(random_embeddings(300, dim=32), dim=1)
    path = tmp_path / "corpus.npy"
    np.save(path, corpus.numpy().astype(np.float16))
    mapped = np.load(path, mmap_mode="r")
    queries = torch.nn.functional.normalize(random_embeddings(4, dim=32, seed=3), dim=1)
    batched_scores, batched_rows = exact_search(queries, mapped, top_k=5, corpus_chunk_size=64)
    for i in range(4):
        scores, rows = exact_search(queries[i : i + 1], mapped, top_k=5, corpus_chunk_size=64)
        assert rows.tolist() == batched_rows[i : i + 1].tolist()
        torch.testing.assert_close(scores, batched_scores[i : i + 1], rtol=0, atol=1e-6)


def test_one_query_that_requires_grad_is_searched_like_a_plain_one():
    corpus = torch.nn.functional.normalize(random_embeddings(50), dim=1)
    query = torch.nn.functional.normalize(random_embeddings(1, seed=4), dim=1)
    plain = exact_search(query, corpus, top_k=5)
    tracked = exact_search(query.clone().requires_grad_(True), corpus, top_k=5)
    assert tracked[1].tolist() == plain[1].tolist()
    torch.testing.assert_close(tracked[0].detach(), plain[0], rtol=0, atol=0)


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


def test_build_ann_is_a_deprecated_alias_of_the_precision_search(tmp_path):
    corpus, queries = random_embeddings(300), random_embeddings(4, seed=3)
    index = EmbeddingIndex(corpus)
    exact_scores, exact_rows = index.search(queries, top_k=5)
    with pytest.warns(DeprecationWarning, match="precision='hnsw' or 'ivf'"):
        index.build_ann("Flat")
    assert index.precision == "ivf" and index.vector_search.factory == "Flat"
    ann_scores, ann_rows = index.search(queries, top_k=5)
    assert ann_rows.tolist() == exact_rows.tolist()
    torch.testing.assert_close(ann_scores, exact_scores, atol=1e-5, rtol=0)
    index.save(str(tmp_path / "index"))
    reopened = EmbeddingIndex.open(str(tmp_path / "index"))
    assert reopened.precision == "ivf"
    assert reopened.search(queries, top_k=5)[1].tolist() == exact_rows.tolist()
    assert not hasattr(EmbeddingIndex, "_ann_search")


def test_a_folder_written_by_the_retired_build_ann_is_served_by_the_precision_search(tmp_path):
    import faiss

    from mm_sbert.storage import file_record

    corpus, queries = random_embeddings(200), random_embeddings(3, seed=5)
    path = tmp_path / "old"
    EmbeddingIndex(corpus).save(str(path))
    ann = faiss.index_factory(corpus.shape[1], "HNSW8", faiss.METRIC_INNER_PRODUCT)
    ann.add(np.ascontiguousarray(EmbeddingIndex(corpus).embeddings))
    faiss.write_index(ann, str(path / "faiss.index"))  # what build_ann + save wrote
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["ann_factory"] = "HNSW8"
    manifest["files"]["faiss.index"] = file_record(path / "faiss.index")
    (path / "manifest.json").write_text(json.dumps(manifest))
    reopened = EmbeddingIndex.open(str(path))
    assert reopened.precision == "hnsw" and reopened.vector_search.factory == "HNSW8"
    exact = EmbeddingIndex(corpus).search(queries, top_k=5)[1]
    assert reopened.search(queries, top_k=5)[1].tolist() == exact.tolist()


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
    assert sorted(os.listdir(tmp_path)) == [".index.lock", "index"]  # the write lock, no temporary folder


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
    # The cheap checksum (size + first/last MiB) is checked on every open: verify=False catches it too.
    with pytest.raises(IndexCorruptedError, match=r"checksum in the manifest \(size \+ first/last MiB\)"):
        EmbeddingIndex.open(saved_index, verify=False)


def test_one_changed_byte_in_the_middle_of_a_big_file_needs_verify_true(tmp_path):
    path = str(tmp_path / "index")
    EmbeddingIndex(random_embeddings(20_000, dim=32)).save(path)  # 2.4 MiB: more than the first + last MiB
    embeddings = os.path.join(path, "embeddings.npy")
    with open(embeddings, "r+b") as f:
        f.seek(os.path.getsize(embeddings) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    assert len(EmbeddingIndex.open(path, verify=False)) == 20_000  # what the cheap check does not read
    with pytest.raises(IndexCorruptedError, match="sha256"):
        EmbeddingIndex.open(path, verify=True)
    with pytest.raises(IndexCorruptedError, match="sha256"):
        EmbeddingIndex.open(path)  # "auto": small enough for the full check


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
    assert os.listdir(tmp_path) == [".index.lock"]  # the write lock (kept, and free), no temporary folder


# The index module needs only numpy and torch: loading it alone keeps each fresh process to a few seconds
# (importing the whole package pulls in transformers).
LIGHT_IMPORT = """
import importlib.util, sys, types
package = types.ModuleType("mm_sbert")  # the package without its __init__ (which imports transformers)
package.__path__ = ["mm_sbert"]
sys.modules["mm_sbert"] = package
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


def _rewrite_manifest(path: str, edit) -> None:
    """Edit an index's manifest and recompute the records of every file it lists, as someone tampering would."""
    manifest_path = os.path.join(path, "manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    edit(manifest)
    for name in list(manifest["files"]):
        file_path = name if os.path.isabs(name) else os.path.join(path, name)
        if os.path.isfile(file_path):
            manifest["files"][name] = file_record(file_path)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)


def test_one_error_type_for_stored_folders():
    assert IndexCorruptedError is FeatureStoreError is StorageError
    assert issubclass(StorageError, MMSbertError)
    assert issubclass(StorageError, RuntimeError) and issubclass(StorageError, ValueError)  # the old bases


@pytest.mark.parametrize("name", ["/etc/hostname", "../outside.json"])
def test_manifest_file_names_outside_the_folder_are_refused(saved_index, tmp_path, name):
    (tmp_path / "outside.json").write_text("[]")
    target = name if os.path.isabs(name) else os.path.join(saved_index, name)
    if not os.path.isfile(target):
        pytest.skip(f"{target} does not exist on this machine")

    def add_outside_file(manifest):
        manifest["files"][name] = {}

    _rewrite_manifest(saved_index, add_outside_file)  # the checksums match: only the path is wrong
    with pytest.raises(UnsafePathError, match="lies outside that folder"):
        EmbeddingIndex.open(saved_index)


def test_symlink_leading_out_of_the_folder_is_refused(saved_index, tmp_path):
    outside = tmp_path / "ids.json"
    outside.write_text(json.dumps([f"x{i}" for i in range(64)]))
    os.remove(os.path.join(saved_index, "ids.json"))
    os.symlink(outside, os.path.join(saved_index, "ids.json"))
    _rewrite_manifest(saved_index, lambda manifest: None)
    with pytest.raises(UnsafePathError, match="'ids.json'"):
        EmbeddingIndex.open(saved_index)


@pytest.mark.parametrize("normalize", [True, False])
def test_manifest_records_whether_rows_are_normalized(tmp_path, normalize):
    corpus = random_embeddings(8) * 3.0
    index = EmbeddingIndex(corpus, normalize=normalize)
    index.save(str(tmp_path / "index"))
    with open(tmp_path / "index" / "manifest.json") as f:
        assert json.load(f)["normalized"] is normalize
    reopened = EmbeddingIndex.open(str(tmp_path / "index"))
    assert reopened.normalized is normalize
    expected = torch.nn.functional.normalize(corpus, dim=1) if normalize else corpus
    np.testing.assert_allclose(np.asarray(reopened.embeddings), expected.numpy(), rtol=1e-6, atol=1e-6)


def test_duplicate_ids_are_refused(tmp_path, saved_index):
    with pytest.raises(ValueError, match=r"ids must be unique.*duplicated: \['a'\]"):
        EmbeddingIndex(random_embeddings(3), ids=["a", "b", "a"])
    with pytest.raises(ValueError, match=r"duplicated: \[7\]"):
        IndexWriter(str(tmp_path / "w"), count=2, dim=16, ids=[7, np.int64(7)])
    assert len(EmbeddingIndex(random_embeddings(2), ids=[1, "1"])) == 2  # an int and a str are different ids
    with open(os.path.join(saved_index, "ids.json"), "w") as f:
        json.dump(["same"] * 64, f)
    _rewrite_manifest(saved_index, lambda manifest: None)
    with pytest.raises(IndexCorruptedError, match="ids must be unique"):
        EmbeddingIndex.open(saved_index)


def _refused_in_every_entry(tmp_path, corpus: np.ndarray, bad_row: int, problem: str) -> None:
    """``corpus`` (with a bad row) is refused, row named, when built, written after 10 rows, and added."""
    with pytest.raises(ValueError, match=rf"The embeddings hold {problem} \(rows \[{bad_row}\]\)"):
        EmbeddingIndex(corpus)
    with pytest.raises(ValueError, match=rf"The embeddings written hold {problem} \(rows \[{bad_row + 10}\]\)"):
        with IndexWriter(str(tmp_path / "w"), count=20, dim=16) as writer:
            writer.write(random_embeddings(10))
            writer.write(corpus)
    with pytest.raises(ValueError, match=rf"The embeddings added hold {problem} \(rows \[{bad_row}\]\)"):
        EmbeddingIndex(random_embeddings(5)).add(corpus)


def test_all_zero_rows_and_queries_are_refused(tmp_path):
    corpus = random_embeddings(5)
    corpus[2] = 0.0
    _refused_in_every_entry(tmp_path, corpus, 2, "only zeros")
    with pytest.raises(ValueError, match=r"The query embeddings hold only zeros \(rows \[0\]\)"):
        EmbeddingIndex(random_embeddings(5)).search(np.zeros((1, 16), dtype=np.float32))
    almost = random_embeddings(5)
    almost[2] = 0.0
    almost[2, 7] = 1e-30  # tiny is still a direction
    assert len(EmbeddingIndex(almost).search(almost[2:3], top_k=1)[0]) == 1


def test_nan_rows_and_queries_are_refused(saved_index, tmp_path):
    corpus = random_embeddings(5)
    corpus[3, 2] = float("nan")
    _refused_in_every_entry(tmp_path, corpus, 3, "NaN or infinite values")
    index = EmbeddingIndex(random_embeddings(5))
    query = random_embeddings(2, seed=9)
    query[1, 0] = float("inf")
    with pytest.raises(ValueError, match=r"The query embeddings hold NaN or infinite values \(rows \[1\]\)"):
        index.search(query)
    # NaN rows written into a stored index behind its back (checksums recomputed): a clear error, not NaN scores
    embeddings = np.load(os.path.join(saved_index, "embeddings.npy"))
    embeddings[10] = np.nan
    np.save(os.path.join(saved_index, "embeddings.npy"), embeddings)
    _rewrite_manifest(saved_index, lambda manifest: None)
    with pytest.raises(IndexCorruptedError, match=r"holds NaN embeddings \(rows \[10\]\)"):
        EmbeddingIndex.open(saved_index).search(random_embeddings(1), top_k=3)


def test_unknown_format_version_and_empty_manifest(saved_index):
    _rewrite_manifest(saved_index, lambda manifest: manifest.update(version=99))
    with pytest.raises(UnsupportedFormatError, match="format version 99; this mm_sbert reads versions 1..2"):
        EmbeddingIndex.open(saved_index)
    open(os.path.join(saved_index, "manifest.json"), "w").close()
    with pytest.raises(IndexCorruptedError, match="is empty"):
        EmbeddingIndex.open(saved_index)


def test_version_1_index_still_opens(saved_index):
    _rewrite_manifest(saved_index, lambda manifest: manifest.update(version=1))
    with open(os.path.join(saved_index, "manifest.json")) as f:
        manifest = json.load(f)
    for record in manifest["files"].values():
        record.pop("quick_sha256")  # version 1 had sizes and sha256s only
    with open(os.path.join(saved_index, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    assert EmbeddingIndex.open(saved_index, verify=False).ids[:2] == ["id0", "id1"]


def test_top_k_below_one_is_refused():
    with pytest.raises(ValueError, match="top_k must be an integer >= 1, got 0"):
        EmbeddingIndex(random_embeddings(4)).search(random_embeddings(1), top_k=0)


def test_extra_files_are_stored_listed_and_checked(tmp_path):
    path = str(tmp_path / "index")
    EmbeddingIndex(random_embeddings(4)).save(path, extra_files={"codes.bin": b"\x01\x02\x03"})
    index = EmbeddingIndex.open(path)
    assert sorted(index.files) == ["codes.bin", "embeddings.npy", "metadata.json"]
    with open(index.file_path("codes.bin"), "rb") as f:
        assert f.read() == b"\x01\x02\x03"
    with open(os.path.join(path, "codes.bin"), "wb") as f:
        f.write(b"\x01\x02\x04")
    with pytest.raises(IndexCorruptedError, match="codes.bin"):
        EmbeddingIndex.open(path)
    with pytest.raises(ValueError, match="plain file name"):
        IndexWriter(path, count=1, dim=2).add_file("../x", b"")
    with pytest.raises(ValueError, match="the index's own files"):
        IndexWriter(path, count=1, dim=2).add_file("ids.json", b"")


def test_remove_leftovers_deletes_only_the_dead_writers_folders(tmp_path):
    path = str(tmp_path / "index")
    EmbeddingIndex(random_embeddings(4)).save(path)
    os.makedirs(tmp_path / ".index.tmp-deadbeef")
    os.makedirs(tmp_path / ".other.tmp-deadbeef")
    live = f".index.tmp-{os.getppid()}-0123abcd"  # a writer that is still running (pytest's parent process)
    os.makedirs(tmp_path / live)
    assert IndexWriter.remove_leftovers(path) == [str(tmp_path / ".index.tmp-deadbeef")]
    assert sorted(os.listdir(tmp_path)) == [".index.lock", live, ".other.tmp-deadbeef", "index"]


def test_a_shared_scan_of_one_query_finds_the_exact_top_k():
    from mm_sbert.retrieval.embedding_index import SCAN_BLOCK_ROWS, exact_search

    generator = torch.Generator().manual_seed(0)
    corpus = torch.nn.functional.normalize(torch.randn(2 * SCAN_BLOCK_ROWS + 17, 8, generator=generator), dim=1)
    query = torch.nn.functional.normalize(torch.randn(1, 8, generator=generator), dim=1)
    expected_scores, expected_rows = (query @ corpus.T).topk(7)
    for stored in (corpus, corpus.numpy().astype(np.float16)):
        scores, rows = exact_search(query, stored, 7, workers=4)
        reference = exact_search(query, stored, 7)
        assert torch.equal(rows, reference[1]) and torch.allclose(scores, reference[0])
    assert torch.equal(exact_search(query, corpus, 7, workers=4)[1], expected_rows)


def test_the_scan_is_shared_out_only_when_other_processes_keep_cores_busy():
    from mm_sbert import ThreadPolicy

    assert ThreadPolicy(cores=2, other_load=0.0).scan_workers() == 1  # quiet: BLAS splits the product
    assert ThreadPolicy(cores=2, other_load=1.0).scan_workers() == 4
    assert ThreadPolicy(cores=2, other_load=1.0).scan_workers(threads=1) == 1  # an explicit count is kept
    assert ThreadPolicy(threads=2, cores=2, other_load=1.0).scan_workers() == 1
    assert ThreadPolicy(cores=1, other_load=3.0).scan_workers() == 1
