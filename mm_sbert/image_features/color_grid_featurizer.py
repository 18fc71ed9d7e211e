from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from mm_sbert.image_features.image_featurizer import ImageFeaturizer, register_featurizer
from mm_sbert.image_features.region_features import RegionFeatures
from mm_sbert.image_features.shape_tagger import ShapeTagger


@register_featurizer
class ColorGridFeaturizer(ImageFeaturizer):
    """A weight-free, deterministic featurizer: one region per grid cell, plus the whole image.

    Each region's feature describes its colours: mean and standard deviation of R, G, B, a hue histogram
    weighted by saturation, and the fraction of saturated ("object") pixels; with ``mask_size`` also the outline of
    what it shows: the fraction of saturated pixels in each of ``mask_size x mask_size`` blocks of the region (a
    circle and a square of one colour and size differ only there). It needs no download, runs fast on a CPU, and
    is what the tests and the synthetic demo scenes use; real photos want a CNN or detector featurizer instead.
    With ``tag_colors`` each image also gets OSCAR-style tags from a :class:`ShapeTagger` ("red circle" per object),
    which a model built with ``add_od_labels=True`` reads beside the caption; with ``tag_places`` each tag also says
    where its object is ("red circle left").

    Args:
        grid_size: cells per side; the image yields ``grid_size ** 2 + 1`` regions.
        hue_bins: bins of the hue histogram.
        resize_to: images are resized to this square size first, so any input size gives the same regions.
        mask_size: blocks per side of each region's outline; 0 leaves the outline out.
        tag_colors: colour name -> RGB (0-255) of the colours the scenes use: tag each image's objects with
            :class:`ShapeTagger`; ``None`` (default): no tags.
        tag_places: end each tag with its object's place (:class:`ShapeTagger`'s ``place_words``); needs
            ``tag_colors``.
    """

    config_keys = ["grid_size", "hue_bins", "resize_to", "mask_size", "tag_colors", "tag_places"]

    def __init__(
        self,
        grid_size: int = 4,
        hue_bins: int = 12,
        resize_to: int = 96,
        mask_size: int = 0,
        tag_colors: dict[str, list[int]] | None = None,
        tag_places: bool = False,
    ) -> None:
        if grid_size < 1 or hue_bins < 1 or resize_to < grid_size or not 0 <= mask_size <= resize_to // grid_size:
            raise ValueError(
                f"ColorGridFeaturizer needs grid_size >= 1, hue_bins >= 1, resize_to >= grid_size and 0 <= mask_size "
                f"<= resize_to // grid_size; got grid_size={grid_size}, hue_bins={hue_bins}, resize_to={resize_to}, "
                f"mask_size={mask_size}"
            )
        self.grid_size = grid_size
        self.hue_bins = hue_bins
        self.resize_to = resize_to
        self.mask_size = mask_size
        if tag_places and tag_colors is None:
            raise ValueError("ColorGridFeaturizer(tag_places=True) needs tag_colors: places are said in the tags")
        self.tag_places = bool(tag_places)
        # ShapeTagger checks the colours.
        self.tagger = None if tag_colors is None else ShapeTagger(tag_colors, place_words=self.tag_places)
        self.tag_colors = None if tag_colors is None else {name: list(rgb) for name, rgb in tag_colors.items()}
        self.feature_dim = 3 + 3 + hue_bins + 1 + mask_size**2

    def get_config_dict(self) -> dict[str, Any]:
        config = super().get_config_dict()
        if config["tag_colors"] is None:
            del config["tag_colors"]  # the settings of a store or model from before tags, so both still match
        if not config["tag_places"]:
            del config["tag_places"]
        return config

    def featurize(self, images: Sequence[Image.Image]) -> list[RegionFeatures]:
        return [self._featurize_one(image) for image in images]

    def _featurize_one(self, image: Image.Image) -> RegionFeatures:
        size = self.resize_to
        rgb = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
        hsv = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR).convert("HSV"), np.float32) / 255.0
        cells = [(0.0, 0.0, 1.0, 1.0)]
        step = 1.0 / self.grid_size
        for row in range(self.grid_size):
            for col in range(self.grid_size):
                cells.append((col * step, row * step, (col + 1) * step, (row + 1) * step))
        features = []
        for x1, y1, x2, y2 in cells:
            rows = slice(round(y1 * size), round(y2 * size))
            cols = slice(round(x1 * size), round(x2 * size))
            features.append(self._describe(rgb[rows, cols], hsv[rows, cols]))
        return RegionFeatures(
            torch.from_numpy(np.stack(features)),
            torch.tensor(cells, dtype=torch.float32),
            image_size=image.size,
            tags=(self.tagger.tag(image) or None) if self.tagger is not None else None,
        )

    def _describe(self, rgb: np.ndarray, hsv: np.ndarray) -> np.ndarray:
        pixels = rgb.reshape(-1, 3)
        hue, saturation = hsv[..., 0].reshape(-1), hsv[..., 1].reshape(-1)
        histogram, _ = np.histogram(hue, bins=self.hue_bins, range=(0.0, 1.0), weights=saturation)
        histogram = histogram / max(len(hue), 1)
        mask = hsv[..., 1] > 0.3
        saturated = np.array([mask.mean()], dtype=np.float32)
        parts = [pixels.mean(0), pixels.std(0), histogram.astype(np.float32), saturated]
        if self.mask_size:
            rows = np.array_split(np.arange(mask.shape[0]), self.mask_size)
            cols = np.array_split(np.arange(mask.shape[1]), self.mask_size)
            parts.append(np.array([mask[np.ix_(r, c)].mean() for r in rows for c in cols], dtype=np.float32))
        return np.concatenate(parts).astype(np.float32)
