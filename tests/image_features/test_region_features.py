from __future__ import annotations

import pytest
import torch

from mm_sbert import RegionFeatures


def test_oscar_geometry_is_box_plus_width_and_height():
    regions = RegionFeatures(torch.ones(2, 3), torch.tensor([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]]))
    vectors = regions.region_vectors("oscar")
    assert vectors.shape == (2, 3 + 6)
    torch.testing.assert_close(vectors[0, 3:], torch.tensor([0.1, 0.2, 0.5, 0.9, 0.4, 0.7]))
    torch.testing.assert_close(vectors[1, 3:], torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0]))


def test_m3p_geometry_appends_area():
    regions = RegionFeatures(torch.zeros(1, 2), torch.tensor([[0.2, 0.2, 0.6, 0.7]]))
    torch.testing.assert_close(regions.geometry("m3p"), torch.tensor([[0.2, 0.2, 0.6, 0.7, 0.4 * 0.5]]))
    assert regions.geometry("none").shape == (1, 0)


def test_from_pixel_boxes_normalises_by_image_size():
    regions = RegionFeatures.from_pixel_boxes(torch.zeros(1, 4), torch.tensor([[32, 16, 64, 48]]), (128, 64))
    torch.testing.assert_close(regions.boxes, torch.tensor([[0.25, 0.25, 0.5, 0.75]]))
    assert regions.image_size == (128, 64)


@pytest.mark.parametrize(
    ("features", "boxes", "message"),
    [
        (torch.zeros(3), torch.zeros(3, 4), "features must have shape"),
        (torch.zeros(3, 8), torch.zeros(3, 5), "boxes must have shape"),
        (torch.zeros(3, 8), torch.zeros(2, 4), "3 feature rows but 2 boxes"),
        (torch.zeros(1, 8), torch.tensor([[10.0, 10.0, 50.0, 50.0]]), "normalised to \\[0, 1\\]"),
        (torch.zeros(1, 8), torch.tensor([[0.5, 0.5, 0.2, 0.9]]), "x2 >= x1"),
        (torch.full((1, 8), float("nan")), torch.zeros(1, 4), "NaN"),
    ],
)
def test_bad_shapes_and_values_are_refused(features, boxes, message):
    with pytest.raises(ValueError, match=message):
        RegionFeatures(features, boxes)


def test_truncate_keeps_the_first_regions():
    regions = RegionFeatures(torch.arange(10.0).view(5, 2), torch.zeros(5, 4), labels=list("abcde"))
    kept = regions.truncate(2)
    assert kept.num_regions == 2 and kept.labels == ["a", "b"]
    torch.testing.assert_close(kept.features, torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    assert regions.truncate(9) is regions


def test_an_image_with_no_regions_is_refused_not_embedded_like_an_empty_caption():
    from mm_sbert.errors import InvalidInputError
    from tests.conftest import build_module

    module = build_module("bert", featurizer=False)
    empty = RegionFeatures(torch.zeros(0, 16), torch.zeros(0, 4))
    with pytest.raises(InvalidInputError, match="Input 1: its image has no regions"):
        module.preprocess(["a caption", empty])
    with pytest.raises(InvalidInputError, match="Input 0: its image has no regions"):
        module.preprocess([("a caption", empty)])
