from __future__ import annotations

import pytest

from mm_sbert.demo import color_swatches
from mm_sbert.demo.color_swatches import SWATCH_COLORS


def test_pixels_match_the_captions():
    corpus = color_swatches(num_images=4, captions_per_image=2, image_size=8, num_solid=2)
    assert corpus.captions[:2] == ["a red image", "a picture that is all red"]
    assert corpus.images[0].getpixel((0, 0)) == corpus.images[0].getpixel((7, 7)) == SWATCH_COLORS["red"]
    left, right = corpus.captions[4].split(" on the left and ")
    right = right.removesuffix(" on the right")
    assert corpus.images[2].getpixel((0, 4)) == SWATCH_COLORS[left]
    assert corpus.images[2].getpixel((7, 4)) == SWATCH_COLORS[right]


def test_same_seed_same_set_and_all_images_distinct():
    a, b = color_swatches(num_images=30, seed=1), color_swatches(num_images=30, seed=1)
    assert a.captions == b.captions
    assert len({image.tobytes() for image in a.images}) == 30


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="1 to 144"):
        color_swatches(num_images=0)
    with pytest.raises(ValueError, match="captions_per_image"):
        color_swatches(captions_per_image=9)
