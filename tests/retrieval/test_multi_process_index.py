"""index(processes=2): the collection encoded in shards over two CPU processes, written as one index folder equal to
the one a single process writes (issue 31.5)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_views

from mm_sbert.demo import SyntheticScenes
from mm_sbert.retrieval import CooperativeRetriever, EmbeddingIndex
from mm_sbert.retrieval.index_folder import EMBEDDINGS_FOLDER


def test_two_processes_write_the_index_of_one(tmp_path):
    bi_encoder, cross_encoder = build_views("bert")
    paths = SyntheticScenes(7, captions_per_image=1, seed=0).save_images(str(tmp_path / "images"))
    retriever = CooperativeRetriever(bi_encoder, cross_encoder, show_progress_bar=False)
    # chunk_size 4: two chunks, the first split into shards of 2 over the processes, the second of 3 rows.
    retriever.index(paths, path=str(tmp_path / "one"), batch_size=2, chunk_size=4)
    retriever.index(paths, path=str(tmp_path / "two"), batch_size=2, chunk_size=4, processes=2)
    one = EmbeddingIndex.open(str(tmp_path / "one" / EMBEDDINGS_FOLDER))
    two = EmbeddingIndex.open(str(tmp_path / "two" / EMBEDDINGS_FOLDER))
    assert len(two) == len(paths)
    assert [two.row_id(row) for row in range(len(two))] == [one.row_id(row) for row in range(len(one))]
    np.testing.assert_allclose(np.asarray(two.embeddings), np.asarray(one.embeddings), atol=1e-6)
    hits = retriever.search("a red circle", rerank=False)
    assert [hit.id for hit in hits] == [
        hit.id for hit in CooperativeRetriever(bi_encoder).use_index(one).search("a red circle", rerank=False)
    ]


@pytest.mark.parametrize("processes", [0, -1, True, []])
def test_bad_process_counts_are_named(processes, tmp_path):
    bi_encoder, _ = build_views("bert")
    with pytest.raises(ValueError, match="processes"):
        CooperativeRetriever(bi_encoder).index(["a caption"], processes=processes)
