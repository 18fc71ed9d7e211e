"""Image tags: the ImageNet tagger, the CNN grid featurizers that emit tags, EfficientNet-Lite2, tags in the store."""

from __future__ import annotations

import json

import pytest
import torch

from mm_sbert.image_features import (
    EfficientNetLiteGridFeaturizer,
    FeatureStore,
    ImageFeaturizer,
    ImageNetTagger,
    MobileNetV2GridFeaturizer,
    RegionFeatures,
    efficientnet_lite2_weights_path,
    imagenet_class_names,
    load_image,
)
from tests.image_features.conftest import make_image


@pytest.fixture(scope="module")
def efficientnet() -> EfficientNetLiteGridFeaturizer:
    try:
        efficientnet_lite2_weights_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return EfficientNetLiteGridFeaturizer(num_tags=3)


def test_class_names_ship_with_the_package_in_output_order():
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert (names[0], names[340], names[963]) == ("tench", "zebra", "pizza")


def test_tagger_keeps_the_most_probable_classes_first_with_their_probabilities():
    logits = torch.full((2, 1000), -5.0)
    logits[0, 340], logits[0, 963], logits[1, 0] = 4.0, 3.0, 9.0
    (tags, scores), (other_tags, _) = ImageNetTagger(num_tags=2).tag(logits)
    assert tags == ["zebra", "pizza"] and other_tags[0] == "tench"
    probabilities = logits[0].softmax(-1)
    assert scores == pytest.approx([probabilities[340].item(), probabilities[963].item()], abs=1e-6)
    with pytest.raises(ValueError, match="num_tags must be an integer >= 1"):
        ImageNetTagger(num_tags=0)
    with pytest.raises(ValueError, match=r"shape \[batch, 1000\]"):
        ImageNetTagger().tag(torch.zeros(2, 10))


def test_region_features_check_and_keep_their_tags():
    regions = RegionFeatures(torch.ones(3, 2), torch.tensor([[0, 0, 1, 1.0]] * 3), tags=["dog", "ball"])
    assert regions.tag_text == "dog ball" and regions.truncate(1).tags == ["dog", "ball"]
    assert regions != RegionFeatures(regions.features, regions.boxes)
    with pytest.raises(ValueError, match="2 tags but 1 tag scores"):
        RegionFeatures(regions.features, regions.boxes, tags=["dog", "ball"], tag_scores=[0.5])
    with pytest.raises(ValueError, match="list of non-empty strings"):
        RegionFeatures(regions.features, regions.boxes, tags="dog")


def test_mobilenet_grid_tags_come_from_its_classifier_and_leave_the_regions_alone():
    torch.manual_seed(0)
    tagging = MobileNetV2GridFeaturizer(weights=None, image_size=64, grid_size=1, num_tags=4)
    plain = MobileNetV2GridFeaturizer(weights=None, image_size=64, grid_size=1)
    plain.set_model(tagging.model)
    image = make_image(1, (50, 40))
    tagged, untagged = tagging.featurize([image])[0], plain.featurize([image])[0]
    assert torch.equal(tagged.features, untagged.features) and untagged.tags is None
    with torch.no_grad():
        logits = tagging.model(tagging.to_tensor(image, 64)[None])
    expected = [imagenet_class_names()[i] for i in logits[0].topk(4).indices.tolist()]
    assert tagged.tags == expected and tagged.tag_scores == sorted(tagged.tag_scores, reverse=True)


def test_efficientnet_lite2_grid_is_9_by_9_and_recognises_coco_objects(efficientnet, shared_data):
    path = shared_data / "coco-mini-train" / "images" / f"{121647:012d}.jpg"
    regions = efficientnet.featurize([load_image(path)])[0]
    assert (regions.num_regions, regions.feature_dim) == (82, 1280)  # whole image + 9 x 9 cells at 260 px
    torch.testing.assert_close(regions.boxes[1 + 9 + 2], torch.tensor([2 / 9, 1 / 9, 3 / 9, 2 / 9]))
    assert regions.tags[0] == "pizza" and len(regions.tags) == 3
    pixels = efficientnet.to_tensor(load_image(path), 260)
    assert pixels.min() >= -127 / 128 and pixels.max() <= 1.0  # TF scaling (x * 255 - 127) / 128


def test_efficientnet_featurizer_saves_by_reference_and_random_weights_embedded(efficientnet, tmp_path):
    efficientnet.save(str(tmp_path / "package"))
    config = json.loads((tmp_path / "package" / "featurizer_config.json").read_text())
    assert config["type"] == "EfficientNetLiteGridFeaturizer" and config["config"]["num_tags"] == 3
    assert not (tmp_path / "package" / "efficientnet_lite2.safetensors").exists()
    reloaded = ImageFeaturizer.load(str(tmp_path / "package"))
    image = make_image(2, (70, 60))
    assert reloaded.featurize([image])[0] == efficientnet.featurize([image])[0]

    torch.manual_seed(1)
    random = EfficientNetLiteGridFeaturizer(weights=None, image_size=64, grid_size=2)
    random.save(str(tmp_path / "random"))
    again = ImageFeaturizer.load(str(tmp_path / "random"))
    assert torch.equal(again.featurize([image])[0].features, random.featurize([image])[0].features)
    with pytest.raises(ValueError, match="grid_size must be between 1 and 2"):
        EfficientNetLiteGridFeaturizer(weights=None, image_size=64, grid_size=3)


def test_store_round_trips_tags_and_reads_stores_without_them(tmp_path):
    boxes = torch.tensor([[0, 0, 1, 1.0]] * 2)
    records = [
        ("a", RegionFeatures(torch.ones(2, 3), boxes, tags=["dog", "golden retriever"], tag_scores=[0.7, 0.1])),
        ("b", RegionFeatures(torch.zeros(2, 3), boxes)),
    ]
    store = FeatureStore.write(tmp_path / "tagged", records, show_progress_bar=False)
    assert store["a"] == records[0][1] and store["a"].tag_scores == [0.7, 0.1]
    assert store["b"].tags is None
    plain = FeatureStore.write(tmp_path / "plain", [("c", RegionFeatures(torch.ones(2, 3), boxes))])
    assert "tags" not in json.loads(next((tmp_path / "plain").glob("*.meta.json")).read_text())
    assert plain["c"].tags is None


def test_store_built_with_a_tagging_featurizer_keeps_its_tags(tmp_path):
    torch.manual_seed(0)
    featurizer = MobileNetV2GridFeaturizer(weights=None, image_size=64, grid_size=1, num_tags=2)
    images = [make_image(seed, (40, 30)) for seed in range(3)]
    store = FeatureStore.build(tmp_path / "store", images, featurizer, ids=[0, 1, 2], show_progress_bar=False)
    assert [store[i].tags for i in range(3)] == [regions.tags for regions in featurizer.featurize(images)]
    assert store.featurizer_config["config"]["num_tags"] == 2
