"""A tiny generated image-caption set (solid and two-colour swatches) for fast, download-free training runs."""

from __future__ import annotations

import random

from PIL import Image

from mm_sbert.data.image_caption_corpus import ImageCaptionCorpus

SWATCH_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 215, 20),
    "purple": (140, 40, 180),
    "orange": (245, 130, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "pink": (250, 150, 200),
    "brown": (120, 70, 30),
    "cyan": (40, 210, 220),
    "gray": (128, 128, 128),
}
_SOLID_TEMPLATES = ("a {c} image", "a picture that is all {c}", "one big {c} square", "the photo is {c}")
_SPLIT_TEMPLATES = (
    "{l} on the left and {r} on the right",
    "a {l} square next to a {r} square",
    "left is {l} and right is {r}",
    "{r} on the right with {l} on the left",
)


def color_swatches(
    num_images: int = 12,
    captions_per_image: int = 3,
    image_size: int = 32,
    seed: int = 0,
    num_solid: int | None = None,
) -> ImageCaptionCorpus:
    """Images that are one colour, or one colour on the left half and another on the right, with captions saying so.

    The first images are solid colours, the rest two-colour splits; every caption names its image's colours (and
    sides), so a model that reads colours can retrieve each image from any of its captions. Caption words are in
    the tiny test vocabulary, so a random tiny BERT learns the set in a few dozen steps.

    Args:
        num_images: number of distinct images (at most 12 solid + 132 two-colour).
        captions_per_image: captions per image (at most 4), in different wordings.
        image_size: side of the square images in pixels.
        seed: which two-colour combinations are drawn.
        num_solid: how many of the images are solid colours (at most 12); default: half of them.
    """
    names = list(SWATCH_COLORS)
    splits = [(left, right) for left in names for right in names if left != right]
    if not 1 <= num_images <= len(names) + len(splits):
        raise ValueError(f"color_swatches makes 1 to {len(names) + len(splits)} images, got num_images={num_images}")
    if not 1 <= captions_per_image <= len(_SOLID_TEMPLATES):
        raise ValueError(f"captions_per_image must be 1 to {len(_SOLID_TEMPLATES)}, got {captions_per_image}")
    random.Random(seed).shuffle(splits)
    num_solid = min(num_images, (num_images + 1) // 2 if num_solid is None else num_solid, len(names))
    specs = [(name, name) for name in names[:num_solid]] + splits[: num_images - num_solid]
    images, captions = [], []
    for left, right in specs:
        image = Image.new("RGB", (image_size, image_size), SWATCH_COLORS[left])
        if left != right:
            image.paste(SWATCH_COLORS[right], (image_size // 2, 0, image_size, image_size))
            captions.append([t.format(l=left, r=right) for t in _SPLIT_TEMPLATES[:captions_per_image]])
        else:
            captions.append([t.format(c=left) for t in _SOLID_TEMPLATES[:captions_per_image]])
        images.append(image)
    return ImageCaptionCorpus.from_pairs(images, captions)
