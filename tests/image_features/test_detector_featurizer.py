from __future__ import annotations

import json

import pytest
import torch

from mm_sbert.image_features import (
    CocoBoxes,
    DetectorFeaturizer,
    ImageFeaturizer,
    MobileNetV2GridFeaturizer,
    load_image,
    roi_align,
)
from tests.image_features.conftest import make_image


@pytest.fixture(scope="module")
def backbone() -> MobileNetV2GridFeaturizer:
    torch.manual_seed(0)
    return MobileNetV2GridFeaturizer(weights=None, image_size=64)


def test_regions_are_roi_pooled_from_the_feature_map_in_score_order(backbone):
    image = make_image(0, (80, 60))
    boxes = torch.tensor([[0.0, 0.0, 40.0, 30.0], [20.0, 15.0, 80.0, 60.0], [10.0, 10.0, 20.0, 20.0]])
    scores = torch.tensor([0.2, 0.9, 0.5])
    featurizer = DetectorFeaturizer(
        lambda image: (boxes, scores, ["a", "b", "c"]), backbone, max_regions=2, image_size=128
    )
    regions = featurizer.featurize([image])[0]
    assert regions.labels == ["<image>", "b", "c"]
    torch.testing.assert_close(regions.boxes[1], torch.tensor([0.25, 0.25, 1.0, 1.0]))
    torch.testing.assert_close(regions.boxes[2], torch.tensor([0.125, 1 / 6, 0.25, 1 / 3]))
    with torch.no_grad():
        feature_map = backbone.model.features(backbone.to_tensor(image, 128)[None])  # [1, 1280, 4, 4]
    torch.testing.assert_close(regions.features[0], feature_map[0].mean(dim=(1, 2)))
    # box b covers map x 1..4, y 1..4 (a quarter of the way in): RoIAlign over those map coordinates
    expected = roi_align(feature_map, torch.tensor([[0, 1.0, 1.0, 4.0, 4.0]]), 2, sampling_ratio=2).mean(dim=(2, 3))
    torch.testing.assert_close(regions.features[1], expected[0])
    assert not torch.allclose(regions.features[1], regions.features[2])


def test_box_source_formats_and_min_score(backbone):
    image = make_image(1, (64, 64))
    box = [[0, 0, 32, 32], [32, 32, 64, 64]]
    as_array = DetectorFeaturizer(lambda image: box, backbone, include_global=False, image_size=64)
    as_dict = DetectorFeaturizer(
        lambda image: {"boxes": torch.tensor(box, dtype=torch.float32), "scores": torch.tensor([0.9, 0.1])},
        backbone,
        include_global=False,
        min_score=0.5,
        image_size=64,
    )
    all_regions, filtered = as_array.featurize([image])[0], as_dict.featurize([image])[0]
    assert all_regions.num_regions == 2 and filtered.num_regions == 1
    assert torch.equal(filtered.features[0], all_regions.features[0])
    empty = DetectorFeaturizer(lambda image: [], backbone, image_size=64).featurize([image])[0]
    assert empty.num_regions == 1 and empty.boxes[0].tolist() == [0, 0, 1, 1]


def test_batches_equal_single_images(backbone):
    images = [make_image(seed, (50 + 10 * seed, 40)) for seed in range(3)]
    featurizer = DetectorFeaturizer(lambda image: [[5, 5, 30, 30], [0, 0, image.size[0], 20]], backbone, image_size=64)
    batched = featurizer.featurize(images)
    for image, regions in zip(images, batched):
        torch.testing.assert_close(regions.features, featurizer.featurize([image])[0].features, rtol=1e-4, atol=1e-4)


def test_coco_boxes_from_instances_json(tmp_path, backbone):
    annotations = {
        "images": [{"id": 7, "file_name": "000000000007.jpg", "width": 100, "height": 50}],
        "annotations": [
            {"image_id": 7, "bbox": [10, 5, 20, 10], "category_id": 1, "iscrowd": 0},
            {"image_id": 7, "bbox": [0, 0, 50, 50], "category_id": 2, "iscrowd": 0},
            {"image_id": 7, "bbox": [0, 0, 100, 50], "category_id": 2, "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(annotations))
    make_image(0, (200, 100)).save(tmp_path / "000000000007.jpg")  # resized 2x since annotation
    source = CocoBoxes(path)
    image = load_image(tmp_path / "000000000007.jpg")
    found = source(image)
    assert found["labels"] == ["dog", "cat"]  # largest first, crowd dropped
    assert found["boxes"].tolist() == [[0, 0, 100, 100], [20, 10, 60, 30]]
    assert source(7)["boxes"].tolist() == [[0, 0, 50, 50], [10, 5, 30, 15]]
    with pytest.raises(KeyError, match="not in the COCO annotations"):
        source(8)
    rotated = make_image(0, (50, 100))
    rotated.info["source_path"] = str(tmp_path / "000000000007.jpg")
    with pytest.warns(UserWarning, match="EXIF rotation"):
        assert source(rotated)["boxes"].shape == (0, 4)
    featurizer = DetectorFeaturizer(source, backbone, image_size=64)
    regions = featurizer.featurize([image])[0]
    assert regions.labels == ["<image>", "dog", "cat"]
    torch.testing.assert_close(regions.boxes[2], torch.tensor([0.1, 0.1, 0.3, 0.3]))

    featurizer.save(str(tmp_path / "saved"))
    loaded = ImageFeaturizer.load(str(tmp_path / "saved"))
    assert isinstance(loaded.box_source, CocoBoxes) and loaded.max_regions == 36
    assert torch.equal(loaded.featurize([image])[0].features, regions.features)


def test_custom_box_source_must_be_reattached_after_loading(tmp_path, backbone):
    DetectorFeaturizer(lambda image: [], backbone, image_size=64).save(str(tmp_path / "saved"))
    loaded = ImageFeaturizer.load(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="box_source"):
        loaded.featurize([make_image(0)])
    loaded.box_source = lambda image: [[0, 0, 4, 4]]
    assert loaded.featurize([make_image(0)])[0].num_regions == 2


def test_real_coco_ground_truth_regions(shared_data, backbone):
    root = shared_data / "coco-mini-train"
    source = CocoBoxes(root / "instances_train2017.json")
    featurizer = DetectorFeaturizer(source, backbone, max_regions=36, image_size=64)
    paths = sorted((root / "images").glob("*.jpg"))[:3]
    regions = featurizer.featurize([load_image(path) for path in paths])
    for path, region in zip(paths, regions):
        expected = min(36, len(source(int(path.stem))["boxes"])) + 1
        assert region.num_regions == expected and region.feature_dim == 1280


def test_torchvision_detector_without_torchvision_says_what_to_install():
    try:
        import torchvision  # noqa: F401

        pytest.skip("torchvision imports here")
    except Exception:
        pass
    from mm_sbert.image_features import TorchvisionDetector

    with pytest.raises(ImportError, match="needs a torchvision that matches your torch"):
        TorchvisionDetector(torch.nn.Identity())
