from __future__ import annotations

import numpy as np
import pytest
import torch

from mm_sbert import MMSentenceTransformer
from mm_sbert.image_features import (
    CachedFeaturizer,
    ColorGridFeaturizer,
    FeatureStore,
    MobileNetV2GridFeaturizer,
    load_image,
)
from tests.conftest import build_views
from tests.image_features.test_feature_store import CountingFeaturizer


def test_each_image_is_featurized_once_across_epochs(image_folder):
    bi_encoder, _ = build_views()
    counting = CountingFeaturizer()
    bi_encoder[0].featurizer = CachedFeaturizer(counting)
    paths = [str(path) for path in image_folder]
    first = bi_encoder.encode(paths, batch_size=4)
    second = bi_encoder.encode(list(reversed(paths)), batch_size=3)
    assert counting.images == 6  # the second epoch is served from the cache
    np.testing.assert_allclose(first, second[::-1], rtol=1e-5, atol=1e-6)  # batches differ: float noise only
    assert bi_encoder[0].featurizer.hits == 6 and bi_encoder[0].featurizer.misses == 6


def test_same_pixels_share_an_entry_and_lru_evicts(image_folder):
    counting = CountingFeaturizer()
    cached = CachedFeaturizer(counting, max_items=2)
    images = [load_image(path) for path in image_folder[:3]]
    result = cached.featurize([images[0], images[0].copy(), images[1]])
    assert counting.images == 2 and result[0] is result[1]
    cached.featurize([images[2]])  # evicts images[0]
    cached.featurize([images[1], images[0]])
    assert counting.images == 4 and len(cached.cache) == 2


def test_store_backed_cache_skips_featurizing(tmp_path, image_folder):
    store = FeatureStore.build(tmp_path / "store", image_folder[:3], ColorGridFeaturizer(grid_size=2, resize_to=32))
    counting = CountingFeaturizer()
    cached = CachedFeaturizer(counting, store=store)
    results = cached.featurize([load_image(path) for path in image_folder[:4]])
    assert counting.images == 1  # only img3 is not in the store
    assert results[0] == store["img0"]
    with pytest.raises(ValueError, match="19-d"):
        CachedFeaturizer(MobileNetV2GridFeaturizer(weights=None, image_size=64), store=store)


def test_model_with_mobilenet_featurizer_saves_and_reloads_identically(tmp_path, image_folder):
    torch.manual_seed(0)
    featurizer = MobileNetV2GridFeaturizer(weights=None, image_size=64, include_global=True)
    bi_encoder, _ = build_views(featurizer=False, region_feature_dim=1280)
    bi_encoder[0].featurizer = CachedFeaturizer(featurizer)
    paths = [str(path) for path in image_folder[:3]]
    before = bi_encoder.encode(paths)
    bi_encoder.save(str(tmp_path / "model"))
    loaded = MMSentenceTransformer(str(tmp_path / "model"), device="cpu")
    assert isinstance(loaded[0].featurizer, MobileNetV2GridFeaturizer)  # the cache is not part of the model
    assert loaded[0].featurizer.image_size == 64
    np.testing.assert_allclose(loaded.encode(paths), before, rtol=1e-5, atol=1e-6)
