"""The host's multi-process encoding (``encode(..., pool=...)``) over images from raw photos and from a feature store,
with 2 CPU processes: the same embeddings as one process (issue 31.5)."""

from __future__ import annotations

import numpy as np
from conftest import build_views

from mm_sbert.demo import SyntheticScenes
from mm_sbert.image_features import ColorGridFeaturizer, FeatureStore


def test_two_processes_encode_photos_and_stored_features_like_one(tmp_path):
    bi_encoder, _ = build_views("bert")
    paths = SyntheticScenes(6, captions_per_image=1, seed=0).save_images(str(tmp_path / "images"))
    store = FeatureStore.build(
        tmp_path / "store", paths, ColorGridFeaturizer(grid_size=2, resize_to=32), show_progress_bar=False
    )
    stored = store.get_many(store.ids)
    pool = bi_encoder.start_multi_process_pool(["cpu", "cpu"])
    try:
        from_photos = bi_encoder.encode(paths, pool=pool, batch_size=2, chunk_size=2)
        from_store = bi_encoder.encode(stored, pool=pool, batch_size=2, chunk_size=2)
    finally:
        bi_encoder.stop_multi_process_pool(pool)
    np.testing.assert_allclose(from_photos, bi_encoder.encode(paths, batch_size=2), atol=1e-6)
    np.testing.assert_allclose(from_store, bi_encoder.encode(stored, batch_size=2), atol=1e-6)
    assert from_photos.shape == (6, bi_encoder.get_embedding_dimension())
