from __future__ import annotations

import pytest
import torch
from PIL import Image

from mm_sbert.image_features import (
    ImageFeaturizer,
    MobileNetV2,
    MobileNetV2GridFeaturizer,
    load_image,
    mobilenet_v2_weights_path,
)
from tests.image_features.conftest import make_image


@pytest.fixture(scope="module")
def weights_path():
    try:
        return mobilenet_v2_weights_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def pretrained(weights_path) -> MobileNetV2GridFeaturizer:
    return MobileNetV2GridFeaturizer()


def random_featurizer(**kwargs) -> MobileNetV2GridFeaturizer:
    torch.manual_seed(0)
    return MobileNetV2GridFeaturizer(weights=None, **kwargs)


def test_imagenet_checkpoint_loads_strict(weights_path):
    state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    model = MobileNetV2()
    result = model.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in model.parameters()) == 3_504_872  # torchvision's mobilenet_v2 parameter count


def test_grid_regions_are_the_feature_map_cells(pretrained):
    image = make_image(3, (64, 48))
    regions = pretrained.featurize([image])[0]
    assert (regions.num_regions, regions.feature_dim, regions.image_size) == (50, 1280, (64, 48))
    with torch.no_grad():
        feature_map = pretrained.model.features(pretrained.to_tensor(image, 224)[None])[0]
    assert feature_map.shape == (1280, 7, 7)
    # region 1 + row * 7 + col is cell (row, col); region 0 is the mean of all cells
    torch.testing.assert_close(regions.features[1 + 2 * 7 + 5], feature_map[:, 2, 5])
    torch.testing.assert_close(regions.features[0], feature_map.mean(dim=(1, 2)))
    torch.testing.assert_close(regions.boxes[1 + 2 * 7 + 5], torch.tensor([5 / 7, 2 / 7, 6 / 7, 3 / 7]))
    assert regions.boxes[0].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert (regions.features >= 0).all() and (regions.features <= 6).all()  # ReLU6 output


def test_pretrained_logits_are_deterministic(pretrained):
    solid = pretrained.to_tensor(Image.new("RGB", (100, 80), (200, 30, 30)), 224)[None]
    with torch.no_grad():
        first, second = pretrained.model(solid), pretrained.model(solid.clone())
    assert torch.equal(first, second)
    assert first.shape == (1, 1000)


@pytest.mark.parametrize(
    "image_id, imagenet_class",
    [(121647, 963), (281789, 340), (466137, 850)],  # pizza, zebra, teddy bear
)
def test_pretrained_recognises_coco_objects(pretrained, shared_data, image_id, imagenet_class):
    # An independent check of the architecture: a wrong layer (stride, residual, ReLU6) ruins ImageNet top-1.
    path = shared_data / "coco-mini-train" / "images" / f"{image_id:012d}.jpg"
    with torch.no_grad():
        logits = pretrained.model(pretrained.to_tensor(load_image(path), 224)[None])
    assert logits.argmax().item() == imagenet_class


def test_batching_does_not_change_features():
    featurizer = random_featurizer(image_size=64, batch_size=2, include_global=False)
    images = [make_image(seed, (40 + seed, 36)) for seed in range(5)]
    batched = featurizer.featurize(images)
    single = [featurizer.featurize([image])[0] for image in images]
    assert len(batched) == 5 and batched[0].num_regions == 4
    for a, b in zip(batched, single):
        torch.testing.assert_close(a.features, b.features, rtol=1e-4, atol=1e-4)
        assert torch.equal(a.boxes, b.boxes)
    assert not torch.allclose(batched[0].features, batched[1].features)


def test_random_weights_are_saved_and_reload_identically(tmp_path):
    featurizer = random_featurizer(image_size=64)
    featurizer.save(str(tmp_path / "feat"))
    assert (tmp_path / "feat" / "mobilenet_v2.safetensors").is_file()
    torch.manual_seed(123)  # a reload must not depend on the global seed
    loaded = ImageFeaturizer.load(str(tmp_path / "feat"))
    image = make_image(1)
    assert isinstance(loaded, MobileNetV2GridFeaturizer) and loaded.image_size == 64
    assert torch.equal(loaded.featurize([image])[0].features, featurizer.featurize([image])[0].features)


def test_package_weights_are_saved_by_reference(tmp_path, pretrained):
    pretrained.save(str(tmp_path / "feat"))
    files = sorted(p.name for p in (tmp_path / "feat").iterdir())
    assert files == ["featurizer_config.json"]  # no 14 MB copy
    loaded = ImageFeaturizer.load(str(tmp_path / "feat"))
    assert loaded.weights_sha256.startswith("b0353104")
    image = make_image(2)
    assert torch.equal(loaded.featurize([image])[0].features, pretrained.featurize([image])[0].features)


def test_weights_file_that_changed_since_saving_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.manual_seed(0)
    torch.save(MobileNetV2().state_dict(), path)
    MobileNetV2GridFeaturizer(weights=path, image_size=64).save(str(tmp_path / "feat"))
    torch.manual_seed(1)
    torch.save(MobileNetV2().state_dict(), path)
    with pytest.raises(ValueError, match="sha256"):
        ImageFeaturizer.load(str(tmp_path / "feat"))


def test_bad_weights_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        MobileNetV2GridFeaturizer(weights=tmp_path / "nope.pth")
    torch.save({"features.0.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth"):
        MobileNetV2GridFeaturizer(weights=tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="multiple of 32"):
        MobileNetV2GridFeaturizer(weights=None, image_size=100)


def test_greyscale_and_exif_rotated_jpegs(tmp_path):
    featurizer = random_featurizer(image_size=64, include_global=False)
    grey = Image.fromarray((torch.arange(48 * 40).reshape(40, 48) % 256).to(torch.uint8).numpy(), "L")
    grey.save(tmp_path / "grey.jpg")
    colour = make_image(4, (48, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    colour.rotate(90, expand=True).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    colour.save(tmp_path / "upright.jpg", quality=100)
    grey_regions, rotated, upright = featurizer.featurize(
        [load_image(tmp_path / name) for name in ("grey.jpg", "rotated.jpg", "upright.jpg")]
    )
    assert grey_regions.image_size == (48, 40)
    assert rotated.image_size == upright.image_size == (48, 32)
    # the same picture up to JPEG noise: far closer than to another image
    assert (rotated.features - upright.features).abs().mean() < 0.2 * upright.features.abs().mean()
