"""Inputs that would give a silently wrong result fail with an error naming the input's index (issue 18)."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import build_views
from PIL import Image

from mm_sbert import ImageLoadError, RegionFeatures

BOX = [[0.1, 0.1, 0.5, 0.5]]


def regions(value: float = 1.0, count: int = 2) -> RegionFeatures:
    return RegionFeatures(torch.full((count, 19), value), torch.tensor(BOX * count))


def test_finite_but_huge_region_features_are_refused_naming_the_input():
    bi_encoder, cross_encoder = build_views("bert")
    message = "its region features reach 3e+38; this model's image projection overflows float32 above"
    with pytest.raises(ValueError, match=re.escape(f"Input 2: {message}")):
        bi_encoder.encode([regions(), "a red circle", regions(3e38)])
    with pytest.raises(ValueError, match=re.escape(f"Input 1: {message}")):
        cross_encoder.predict([("a red circle", regions()), ("a red circle", regions(3e38))])


def test_features_that_overflow_inside_the_transformer_fail_instead_of_giving_nan():
    bi_encoder, _ = build_views("bert")
    # 1e36 passes the projection but overflows in the LayerNorm / attention behind it.
    with pytest.raises(ValueError, match=re.escape("NaN or infinite outputs for input(s) [0] of this batch of 2")):
        bi_encoder.encode([regions(1e36), regions()])


def test_region_features_made_non_finite_after_construction_are_refused_naming_the_input():
    broken = regions()
    broken.features[1, 3] = float("nan")
    bi_encoder, _ = build_views("bert")
    with pytest.raises(ValueError, match="Input 1: its region features contain NaN or infinite values"):
        bi_encoder.encode([regions(), broken])
    with pytest.raises(ValueError, match="Input 0: its region features contain NaN or infinite values"):
        bi_encoder[0].preprocess([broken])


def test_a_model_that_produces_nan_says_so_instead_of_returning_it():
    bi_encoder, cross_encoder = build_views("bert")
    with torch.no_grad():
        bi_encoder[0].backbone.encoder.layer[0].output.dense.bias[0] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or infinite outputs for input\(s\) \[0, 1\] of this batch of 2"):
        bi_encoder.encode(["a red circle", "two green triangles"])
    with pytest.raises(ValueError, match="NaN or infinite outputs"):
        cross_encoder.predict([("a red circle", regions())])


def test_a_caption_that_looks_like_an_image_path_says_how_to_pass_it_as_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bi_encoder, cross_encoder = build_views("bert")
    caption = "my holiday photo.jpg"
    with pytest.raises(ImageLoadError, match=re.escape(f"Input 1: image file not found: '{caption}'; ")) as error:
        bi_encoder.encode(["a red circle", caption])
    assert f"If it is a caption, pass it as {{'text': {caption!r}}}" in str(error.value)
    with pytest.raises(ValueError, match=re.escape("got two images; this model scores (text, image) pairs; 'my")):
        cross_encoder.predict([(caption, Image.new("RGB", (8, 8)))])
    # The advice works: as a dict it is a caption (tokenized, no image part), for encode and predict alike.
    module = bi_encoder[0]
    features = module.preprocess([{"text": caption}])
    assert features["input_ids"].tolist() == module.tokenizer([caption])["input_ids"]
    assert features["region_mask"].shape == (1, 0)
    assert bi_encoder.encode([{"text": caption}]).shape == (1, 32)
    image = Image.new("RGB", (8, 8), "red")
    assert cross_encoder.predict([{"text": caption, "image": image}]).shape == ()
