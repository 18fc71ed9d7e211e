from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sentence_transformers.sentence_transformer.modules import Pooling
from tiny_models import tiny_bert

from mm_sbert import ColorBlobFeaturizer, ImageFeaturizer, MMSentenceTransformer, MultimodalTransformer
from mm_sbert.demo.synthetic_scenes import COLORS, SIZE_RADIUS, Scene, SceneObject, SyntheticScenes


def _render(*objects: SceneObject, image_size: int = 64) -> Image.Image:
    return SyntheticScenes(1, image_size=image_size).render(Scene(objects=objects, family=0))


def test_one_region_per_object_with_its_box_colour_and_order():
    scenes = SyntheticScenes(1, image_size=64)
    objects = (
        SceneObject("circle", "red", "large", "right"),
        SceneObject("square", "blue", "small", "top"),
        SceneObject("star", "green", "large", "left"),
    )
    (regions,) = ColorBlobFeaturizer()([_render(*objects)])
    assert regions.num_regions == 4  # the whole image, then one region per object
    torch.testing.assert_close(regions.boxes[0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    # Top to bottom, then left to right: the top square, then the left star and the right circle.
    for region, obj in zip(range(1, 4), (objects[1], objects[2], objects[0])):
        x1, y1, x2, y2 = (regions.boxes[region] * 64).tolist()
        cx, cy = scenes.slot_center(obj.slot)
        assert x1 < cx < x2 and y1 < cy < y2
        radius = SIZE_RADIUS[obj.size] * 64
        assert x2 - x1 == pytest.approx(2 * radius * (0.85 if obj.shape == "square" else 1.0), abs=2.5)
        torch.testing.assert_close(regions.features[region, :3], torch.tensor(COLORS[obj.color]) / 255.0)


def test_shape_features_tell_the_shapes_apart_at_both_sizes():
    featurizer = ColorBlobFeaturizer()
    for size in ("small", "large"):
        fill, bottom_heavy = {}, {}
        for shape in ("circle", "square", "triangle", "star"):
            (regions,) = featurizer([_render(SceneObject(shape, "purple", size, "bottom"))])
            assert regions.num_regions == 2
            fill[shape], bottom_heavy[shape] = regions.features[1, -2].item(), regions.features[1, -1].item()
        assert fill["square"] > fill["circle"] > max(fill["triangle"], fill["star"])
        assert fill["square"] == pytest.approx(1.0) and fill["circle"] == pytest.approx(np.pi / 4, abs=0.06)
        # The triangle stands on its base: its box's bottom half is fuller than its top half, unlike the others.
        assert (
            bottom_heavy["triangle"] > 0.3 > max(bottom_heavy["circle"], bottom_heavy["square"], bottom_heavy["star"])
        )


def test_background_only_gives_the_whole_image_and_noise_is_dropped():
    image = np.full((32, 32, 3), 240, dtype=np.uint8)
    image[5, 5] = (255, 0, 0)  # one saturated pixel: below min_pixels
    (regions,) = ColorBlobFeaturizer(min_pixels=4)([Image.fromarray(image)])
    assert regions.num_regions == 1 and regions.feature_dim == ColorBlobFeaturizer().feature_dim


def test_max_regions_keeps_the_largest_blobs():
    image = np.full((40, 40, 3), 240, dtype=np.uint8)
    image[2:4, 2:4] = (255, 0, 0)  # 4 pixels
    image[10:20, 10:20] = (0, 0, 255)  # 100 pixels
    image[30:36, 30:36] = (0, 255, 0)  # 36 pixels
    (regions,) = ColorBlobFeaturizer(max_regions=2)([Image.fromarray(image)])
    assert regions.num_regions == 3
    torch.testing.assert_close(regions.features[1:, :3], torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))


def test_deterministic_and_restored_from_its_config(tmp_path):
    featurizer = ColorBlobFeaturizer(hue_bins=6, saturation_threshold=0.4, min_pixels=2, max_regions=5)
    image = SyntheticScenes(3, seed=4).images[2]
    featurizer.save(str(tmp_path))
    restored = ImageFeaturizer.load(str(tmp_path))
    assert isinstance(restored, ColorBlobFeaturizer) and restored.get_config_dict() == featurizer.get_config_dict()
    assert featurizer([image])[0] == restored([image])[0]


@pytest.mark.parametrize(
    "kwargs", [{"hue_bins": 0}, {"saturation_threshold": 1.0}, {"min_pixels": 0}, {"max_regions": 0}]
)
def test_bad_settings_are_clear_errors(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ColorBlobFeaturizer(**kwargs)


def test_a_model_reads_scenes_with_different_object_counts_in_one_batch(tmp_path):
    featurizer = ColorBlobFeaturizer()
    backbone, tokenizer = tiny_bert(seed=0)
    module = MultimodalTransformer(
        backbone=backbone, tokenizer=tokenizer, featurizer=featurizer, region_feature_dim=featurizer.feature_dim
    )
    model = MMSentenceTransformer(modules=[module, Pooling(module.get_embedding_dimension(), "mean")], device="cpu")
    images = SyntheticScenes(6, seed=2).images
    assert len({regions.num_regions for regions in featurizer(images)}) > 1
    batched = model.encode(images, batch_size=6, convert_to_tensor=True)
    alone = torch.cat([model.encode([image], convert_to_tensor=True) for image in images])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)
    model.save(str(tmp_path))
    reloaded = MMSentenceTransformer(str(tmp_path), device="cpu")
    assert isinstance(reloaded[0].featurizer, ColorBlobFeaturizer)
    assert torch.equal(reloaded.encode(images, batch_size=6, convert_to_tensor=True), batched)
