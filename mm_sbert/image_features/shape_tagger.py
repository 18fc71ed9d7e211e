"""Words for an image of flat coloured shapes: a weight-free object tagger, "red circle" per object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from mm_sbert.image_features.color_blob_featurizer import bottom_heaviness, find_color_blobs

# How full its bounding box a filled shape is: a square fills it, a circle pi / 4 of it, a triangle and a five-point
# star about half, the triangle with its weight in the bottom half (it stands on its base).
_SQUARE_FILL = 0.9
_CIRCLE_FILL = 0.65
_TRIANGLE_BOTTOM_HEAVINESS = 0.3


class ShapeTagger:
    """Tags an image of flat coloured shapes on a plain background with one ``"<colour> <shape>"`` word pair per
    object, objects in reading order (line by line from the top, each line from the left).

    OSCAR reads a detector's object labels beside the regions, VinVL's with their attributes ("red shirt"); this is
    that detector for the generated scenes of :class:`~mm_sbert.demo.SyntheticScenes`: pixels whose HSV saturation
    exceeds ``saturation_threshold`` are object pixels, each 8-connected blob of at least ``min_pixels`` of them is
    an object, named by the nearest of ``colors`` (mean RGB) and by how full its box is (square, circle, triangle,
    star). The tags name what is in the image; which object is where stays in the regions and the tags' order, or,
    with ``place_words``, is said in each tag too ("red circle left": the third of the image the object's box centre
    lies in, by column and row, as :data:`place_word` names it), as a dense-captioning detector names what it sees
    and where.

    Args:
        colors: colour name -> RGB (0-255) of the colours the images use.
        saturation_threshold: HSV saturation (0-1) above which a pixel belongs to an object.
        min_pixels: smaller blobs are noise (anti-aliased edges) and are dropped.
        place_words: end each tag with where the object is ("left", "top", "top left", "centre", ...).

    Example:
        >>> ShapeTagger({"red": (220, 40, 40), "blue": (40, 80, 220)}).tag(image)
        ['red circle', 'blue square']
        >>> ShapeTagger({"red": (220, 40, 40), "blue": (40, 80, 220)}, place_words=True).tag(image)
        ['red circle left', 'blue square right']
    """

    def __init__(
        self,
        colors: Mapping[str, Sequence[int]],
        saturation_threshold: float = 0.3,
        min_pixels: int = 4,
        place_words: bool = False,
    ) -> None:
        if not isinstance(colors, Mapping) or not colors or not all(isinstance(n, str) and n.strip() for n in colors):
            raise ValueError(f"ShapeTagger needs colour names (non-empty strings) -> RGB, got {colors!r:.200}")
        rgb = np.asarray([list(value) for value in colors.values()], dtype=np.float32)
        if rgb.ndim != 2 or rgb.shape[1] != 3 or not np.isfinite(rgb).all() or (rgb < 0).any() or (rgb > 255).any():
            raise ValueError(f"ShapeTagger's colours must be RGB triples of 0-255, got {colors!r:.200}")
        if not 0.0 < saturation_threshold < 1.0 or min_pixels < 1:
            raise ValueError(
                f"ShapeTagger needs 0 < saturation_threshold < 1 and min_pixels >= 1, got {saturation_threshold}, "
                f"{min_pixels}"
            )
        self.color_names = list(colors)
        self.color_values = rgb
        self.saturation_threshold = saturation_threshold
        self.min_pixels = min_pixels
        self.place_words = bool(place_words)

    def tag(self, image: Image.Image) -> list[str]:
        """The image's tags, one per object in reading order (empty for an image without objects)."""
        rgb, _, labels, blobs = find_color_blobs(image, self.saturation_threshold, self.min_pixels)
        objects = []
        for label, box in blobs:
            mask = labels[box] == label
            color = rgb[box][mask].mean(axis=0) * 255.0
            name = self.color_names[int(((self.color_values - color) ** 2).sum(axis=1).argmin())]
            centre = ((box[0].start + box[0].stop) / 2, (box[1].start + box[1].stop) / 2)
            tag = f"{name} {_shape_name(mask)}"
            if self.place_words:
                tag += " " + place_word(centre[0] / rgb.shape[0], centre[1] / rgb.shape[1])
            objects.append((centre, tag))
        return [tag for _, tag in _reading_order(objects, line_height=rgb.shape[0] / 8)]


def place_word(y: float, x: float) -> str:
    """Where a point (fractions of the image's height and width) lies, in the words captions use: the column's
    ("left", "right") in the middle row, the row's ("top", "bottom") in the centre column, both in a corner ("top
    left"), "centre" in the middle."""
    row = ("top", "middle", "bottom")[min(int(y * 3), 2)]
    column = ("left", "centre", "right")[min(int(x * 3), 2)]
    if row == "middle":
        return column
    return row if column == "centre" else f"{row} {column}"


def _reading_order(objects: list[tuple[tuple[float, float], str]], line_height: float) -> list[tuple[Any, str]]:
    """Objects (box centre (y, x), tag) line by line, top to bottom, each line left to right; centres less than
    ``line_height`` below a line's first object are on that line (a triangle's box sits lower than a circle's)."""
    lines: list[list[tuple[tuple[float, float], str]]] = []
    for item in sorted(objects):
        if lines and item[0][0] - lines[-1][0][0][0] < line_height:
            lines[-1].append(item)
        else:
            lines.append([item])
    return [item for line in lines for item in sorted(line, key=lambda item: item[0][1])]


def _shape_name(mask: np.ndarray) -> str:
    """The shape a filled blob is, from how full its box is and whether its bottom half is fuller."""
    fill = float(mask.mean())
    if fill > _SQUARE_FILL:
        return "square"
    if fill > _CIRCLE_FILL:
        return "circle"
    return "triangle" if bottom_heaviness(mask) > _TRIANGLE_BOTTOM_HEAVINESS else "star"
