from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mm_sbert import ColorGridFeaturizer, ImageFeaturizer


def test_regions_are_whole_image_plus_grid_cells():
    featurizer = ColorGridFeaturizer(grid_size=2, hue_bins=6, resize_to=32)
    (regions,) = featurizer([Image.new("RGB", (40, 30), "white")])
    assert regions.num_regions == 5 and regions.feature_dim == featurizer.feature_dim == 3 + 3 + 6 + 1
    torch.testing.assert_close(regions.boxes[0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(regions.boxes[4], torch.tensor([0.5, 0.5, 1.0, 1.0]))
    assert regions.image_size == (40, 30)


def test_features_describe_where_the_colour_is():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[:, :16] = (255, 0, 0)  # left half red, right half black
    featurizer = ColorGridFeaturizer(grid_size=2, hue_bins=6, resize_to=32)
    (regions,) = featurizer([Image.fromarray(image)])
    top_left, top_right = regions.features[1], regions.features[2]
    torch.testing.assert_close(top_left[:3], torch.tensor([1.0, 0.0, 0.0]))  # mean RGB
    torch.testing.assert_close(top_right[:3], torch.tensor([0.0, 0.0, 0.0]))
    assert top_left[6] == pytest.approx(1.0, abs=0.02)  # red falls in the first hue bin, fully saturated
    assert top_left[-1] == pytest.approx(1.0) and top_right[-1] == pytest.approx(0.0)  # saturated fraction


def test_deterministic_and_restored_from_its_config(tmp_path):
    featurizer = ColorGridFeaturizer(grid_size=3, hue_bins=4, resize_to=48)
    image = Image.effect_noise((50, 50), 40).convert("RGB")
    featurizer.save(str(tmp_path))
    restored = ImageFeaturizer.load(str(tmp_path))
    assert isinstance(restored, ColorGridFeaturizer) and restored.get_config_dict() == featurizer.get_config_dict()
    assert featurizer([image])[0] == restored([image])[0]


def test_unknown_featurizer_type_is_a_clear_error(tmp_path):
    (tmp_path / "featurizer_config.json").write_text('{"type": "NoSuchFeaturizer", "config": {}}')
    with pytest.raises(ValueError, match="NoSuchFeaturizer"):
        ImageFeaturizer.load(str(tmp_path))


def test_mask_size_adds_each_regions_outline_and_tells_a_circle_from_a_square():
    from PIL import ImageDraw

    def drawn(shape: str) -> Image.Image:
        image = Image.new("RGB", (32, 32), "white")
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)((0, 0, 15, 15), fill=(200, 0, 0))
        return image

    plain = ColorGridFeaturizer(grid_size=2, hue_bins=6, resize_to=32)
    outlined = ColorGridFeaturizer(grid_size=2, hue_bins=6, resize_to=32, mask_size=4)
    assert outlined.feature_dim == plain.feature_dim + 16
    circle, square = outlined([drawn("circle"), drawn("square")])
    # The colour part is the plain featurizer's, and the outline follows it.
    torch.testing.assert_close(circle.features[:, : plain.feature_dim], plain([drawn("circle")])[0].features)
    corner, centre = plain.feature_dim, plain.feature_dim + 5  # top-left block of the 4x4 outline, and one inside
    top_left = 1  # the grid cell holding the shape
    assert square.features[top_left, corner] == pytest.approx(1.0, abs=0.05)
    assert circle.features[top_left, corner] < 0.5
    assert circle.features[top_left, centre] == square.features[top_left, centre] == pytest.approx(1.0)
    assert circle.features[2:, plain.feature_dim :].abs().sum() == 0  # cells without a shape have no outline
    with pytest.raises(ValueError, match="mask_size <= resize_to // grid_size"):
        ColorGridFeaturizer(grid_size=2, resize_to=32, mask_size=17)
