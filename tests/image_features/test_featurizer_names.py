from __future__ import annotations

import pytest

from mm_sbert.errors import InvalidInputError
from mm_sbert.image_features import ColorBlobFeaturizer, ColorGridFeaturizer, MobileNetV2GridFeaturizer
from mm_sbert.image_features.featurizer_names import featurizer_from_name


def test_names_give_the_built_in_featurizers_with_their_settings():
    assert featurizer_from_name("color-grid").grid_size == 3
    assert featurizer_from_name("color-grid", grid_size=5).grid_size == 5
    assert isinstance(featurizer_from_name("color-blob"), ColorBlobFeaturizer)
    grid = featurizer_from_name("mobilenet-grid", grid_size=2, num_tags=3)
    assert isinstance(grid, MobileNetV2GridFeaturizer) and (grid.grid_size, grid.num_tags) == (2, 3)
    assert isinstance(featurizer_from_name("color-grid"), ColorGridFeaturizer)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "sift"}, "Unknown featurizer 'sift'"),
        ({"name": "color-blob", "grid_size": 2}, "grid_size applies to the grid featurizers"),
        ({"name": "color-grid", "num_tags": 2}, "num_tags needs an ImageNet classifier"),
    ],
)
def test_settings_a_featurizer_does_not_have_are_refused(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        featurizer_from_name(**kwargs)


def test_a_grid_beyond_the_cnn_map_is_a_value_error():
    with pytest.raises(ValueError, match="grid_size must be between 1 and 7"):
        featurizer_from_name("mobilenet-grid", grid_size=8)
