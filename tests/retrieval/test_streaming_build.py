from __future__ import annotations

import numpy as np
import pytest
import torch

from mm_sbert import EmbeddingIndex
from mm_sbert.retrieval import build_index_streaming


def clustered(count: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim)).astype(np.float32)
    return (centres[rng.integers(0, 20, count)] + 0.3 * rng.standard_normal((count, dim))).astype(np.float32)


def chunks_of(rows: np.ndarray, size: int):
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


@pytest.mark.parametrize(
    ("precision", "dtype", "options"),
    [
        ("binary", "float16", {"rescore_multiplier": 4}),
        ("binary", "float32", None),
        ("binary", "float16", {"factory": "BIVF8", "search_parameters": "nprobe=2"}),
        ("float32", "float16", None),
    ],
)
def test_streamed_build_equals_the_in_memory_build(tmp_path, precision, dtype, options):
    rows = clustered(1500)
    queries = torch.from_numpy(clustered(7, seed=1))
    memory = EmbeddingIndex(rows, dtype=dtype, precision=precision, search_options=options)
    streamed = build_index_streaming(
        str(tmp_path / "index"),
        chunks_of(rows, 400),
        len(rows),
        32,
        precision=precision,
        dtype=dtype,
        search_options=options,
    )
    assert streamed.precision == precision and streamed.dtype == dtype
    np.testing.assert_array_equal(np.asarray(streamed.embeddings), memory.embeddings)
    expected_scores, expected_rows = memory.search(queries, 10)
    scores, found = streamed.search(queries, 10)
    assert torch.equal(found, expected_rows)
    torch.testing.assert_close(scores, expected_scores)
    # the folder reopens with the same search (a binary IVF keeps its lists and nprobe)
    again = EmbeddingIndex.open(str(tmp_path / "index"))
    assert torch.equal(again.search(queries, 10)[1], expected_rows)


def test_binary_ivf_trained_on_a_prefix_holds_every_row_and_finds_what_the_flat_scan_finds(tmp_path):
    rows = clustered(3000)
    queries = torch.from_numpy(rows[:20] + 0.01)
    flat = EmbeddingIndex(rows, precision="binary", search_options={"rescore_multiplier": 10})
    streamed = build_index_streaming(
        str(tmp_path / "index"),
        chunks_of(rows, 256),
        len(rows),
        32,
        dtype="float32",
        search_options={"factory": "BIVF8", "search_parameters": "nprobe=8", "rescore_multiplier": 10},
        train_size=600,  # lists from the first 600 rows; all 3,000 go in
    )
    assert streamed.vector_search._faiss.ntotal == len(rows)
    found, expected = streamed.search(queries, 10)[1].tolist(), flat.search(queries, 10)[1].tolist()
    # every list probed: the same candidates as the flat scan up to ties in Hamming distance
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, expected)])
    assert overlap >= 0.95


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ([np.ones((10, 31), dtype=np.float32)], r"Expected chunks of shape \[n, 32\]"),
        ([np.full((10, 32), np.nan, dtype=np.float32)], "NaN or infinite"),
        ([np.ones((10, 32), dtype=np.float32)], "Only 10 of 20 rows"),
        ([np.ones((15, 32), dtype=np.float32)] * 2, "overflows the index of 20 rows"),
    ],
)
def test_bad_streams_are_refused_and_nothing_is_written(tmp_path, chunks, message):
    with pytest.raises(ValueError, match=message):
        build_index_streaming(str(tmp_path / "index"), iter(chunks), 20, 32)
    assert not (tmp_path / "index").exists()


def test_unsupported_precision_is_refused(tmp_path):
    with pytest.raises(ValueError, match="supports precision 'float32' or 'binary'"):
        build_index_streaming(str(tmp_path / "index"), [], 0, 32, precision="hnsw")
