from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from mm_sbert import ColorGridFeaturizer, FeatureStore, RegionFeatures
from mm_sbert.data import StoreImageResolver
from mm_sbert.data.store_image_resolver import default_store_key, featurizer_from_store
from mm_sbert.image_features.feature_store import FeatureStoreError


def _regions(value: float) -> RegionFeatures:
    return RegionFeatures(torch.full((2, 3), value), torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]]))


@pytest.fixture
def store(tmp_path):
    return FeatureStore.write(tmp_path / "store", [("a", _regions(1.0)), ("b", _regions(2.0)), (7, _regions(3.0))])


def test_default_store_key_takes_file_stems_and_keeps_ids():
    assert default_store_key("images/dog.jpg") == "dog"
    assert default_store_key("/data/x/1000268201_693b08cb0e.jpg") == "1000268201_693b08cb0e"
    assert default_store_key("dog") == "dog"
    assert default_store_key(7) == 7


def test_batches_read_regions_from_the_store_by_path_or_id(store):
    dataset = Dataset.from_dict({"caption": ["x", "y", "z"], "image": ["img/b.png", "a", "7"], "label": [0, 1, 2]})
    dataset = StoreImageResolver(store).apply(dataset)
    batch = dataset[0:3]
    assert batch["caption"] == ["x", "y", "z"] and batch["label"] == [0, 1, 2]
    assert [regions.features[0, 0].item() for regions in batch["image"]] == [2.0, 1.0, 3.0]
    assert torch.equal(batch["image"][1].boxes, store["a"].boxes)


def test_a_missing_image_fails_before_training_naming_it(store):
    dataset = Dataset.from_dict({"caption": ["x", "y"], "image": ["img/a.png", "img/nope.png"], "label": [0, 1]})
    with pytest.raises(FeatureStoreError, match=r"lacks 1 image\(s\).*'img/nope.png' \(looked up as id 'nope'\)"):
        StoreImageResolver(store).apply(dataset)


def test_an_absent_image_column_is_named(store):
    dataset = Dataset.from_dict({"caption": ["x"], "picture": ["a"]})
    with pytest.raises(ValueError, match="no image column 'image'; its columns are \\['caption', 'picture'\\]"):
        StoreImageResolver(store).apply(dataset)


def test_featurizer_from_store_rebuilds_the_one_that_built_it(tmp_path):
    from PIL import Image

    featurizer = ColorGridFeaturizer(grid_size=2)
    image = tmp_path / "red.png"
    Image.new("RGB", (8, 8), "red").save(image)
    built = FeatureStore.build(tmp_path / "s", [str(image)], featurizer, show_progress_bar=False)
    rebuilt = featurizer_from_store(built)
    assert isinstance(rebuilt, ColorGridFeaturizer) and rebuilt.get_config_dict() == featurizer.get_config_dict()
    built.check_featurizer(rebuilt)
    with pytest.raises(FeatureStoreError, match="was built by ColorGridFeaturizer"):
        built.check_featurizer(ColorGridFeaturizer(grid_size=3))


def test_imported_features_record_no_featurizer(store):
    with pytest.raises(FeatureStoreError, match="does not record a featurizer"):
        featurizer_from_store(store)
