from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from mm_sbert.image_features.image_featurizer import ImageFeaturizer, register_featurizer
from mm_sbert.image_features.region_features import RegionFeatures


@register_featurizer
class ColorBlobFeaturizer(ImageFeaturizer):
    """A weight-free object "detector" for plain backgrounds: one region per connected blob of colour.

    The object-region counterpart of :class:`ColorGridFeaturizer`, as the paper's Faster R-CNN regions are to a grid:
    pixels whose saturation exceeds ``saturation_threshold`` are object pixels, each 8-connected component of at
    least ``min_pixels`` of them is a region with its bounding box, and the whole image comes first. Each region's
    feature describes its colour (mean and standard deviation of R, G, B over the object's pixels, a hue histogram
    weighted by saturation) and its shape (the fraction of its box it fills, and how much fuller the box's bottom
    half is than its top half), so one region carries what a caption says about one object: colour, shape, size
    (the box) and position (the box). Regions are ordered by their box centres, top to bottom, then left to right.

    Args:
        hue_bins: bins of the hue histogram.
        saturation_threshold: HSV saturation (0-1) above which a pixel belongs to an object.
        min_pixels: smaller blobs are noise (anti-aliased edges) and are dropped.
        max_regions: keep at most this many blobs, the largest ones.
    """

    config_keys = ["hue_bins", "saturation_threshold", "min_pixels", "max_regions"]

    def __init__(
        self, hue_bins: int = 12, saturation_threshold: float = 0.3, min_pixels: int = 4, max_regions: int = 16
    ) -> None:
        if hue_bins < 1 or not 0.0 < saturation_threshold < 1.0 or min_pixels < 1 or max_regions < 1:
            raise ValueError(
                f"ColorBlobFeaturizer needs hue_bins >= 1, 0 < saturation_threshold < 1, min_pixels >= 1 and "
                f"max_regions >= 1; got hue_bins={hue_bins}, saturation_threshold={saturation_threshold}, "
                f"min_pixels={min_pixels}, max_regions={max_regions}"
            )
        self.hue_bins = hue_bins
        self.saturation_threshold = saturation_threshold
        self.min_pixels = min_pixels
        self.max_regions = max_regions
        self.feature_dim = 3 + 3 + hue_bins + 2

    def featurize(self, images: Sequence[Image.Image]) -> list[RegionFeatures]:
        return [self._featurize_one(image) for image in images]

    def _featurize_one(self, image: Image.Image) -> RegionFeatures:
        image = image.convert("RGB")
        width, height = image.size
        rgb, hsv, labels, blobs = find_color_blobs(image, self.saturation_threshold, self.min_pixels)
        saturated = labels > 0
        pixel_counts = np.bincount(labels.ravel())
        if len(blobs) > self.max_regions:
            blobs = sorted(blobs, key=lambda blob: -pixel_counts[blob[0]])[: self.max_regions]
        # By box centre (twice the centre: start + stop), top to bottom, then left to right.
        blobs.sort(key=lambda blob: (blob[1][0].start + blob[1][0].stop, blob[1][1].start + blob[1][1].stop))

        features = [self._describe(rgb, hsv, np.ones(saturated.shape, dtype=bool), saturated)]
        boxes = [(0.0, 0.0, 1.0, 1.0)]
        for label, (rows, cols) in blobs:
            mask = labels[rows, cols] == label
            features.append(self._describe(rgb[rows, cols], hsv[rows, cols], mask, mask))
            boxes.append((cols.start / width, rows.start / height, cols.stop / width, rows.stop / height))
        return RegionFeatures(
            torch.from_numpy(np.stack(features)), torch.tensor(boxes, dtype=torch.float32), image_size=image.size
        )

    def _describe(self, rgb: np.ndarray, hsv: np.ndarray, region: np.ndarray, objects: np.ndarray) -> np.ndarray:
        """Colour of the object pixels in ``region`` (the whole region if it has none) and the region's fill."""
        pixels = rgb[objects] if objects.any() else rgb[region]
        hue, saturation = hsv[..., 0][region], hsv[..., 1][region]
        histogram, _ = np.histogram(hue, bins=self.hue_bins, range=(0.0, 1.0), weights=saturation)
        histogram = histogram / max(len(hue), 1)
        shape = np.array([objects.mean(), bottom_heaviness(objects)], dtype=np.float32)
        return np.concatenate([pixels.mean(0), pixels.std(0), histogram.astype(np.float32), shape]).astype(np.float32)


def find_color_blobs(
    image: Image.Image, saturation_threshold: float, min_pixels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, tuple[slice, slice]]]]:
    """An image of coloured objects on a plain background as RGB and HSV arrays (0-1), the label of every pixel's
    blob (0: background) and the blobs that count: ``(label, box)`` of each 8-connected component of pixels with
    HSV saturation above ``saturation_threshold`` that has at least ``min_pixels`` of them (smaller ones are the
    anti-aliased edges), in label order."""
    image = image.convert("RGB")
    rgb = np.asarray(image, dtype=np.float32) / 255.0
    hsv = np.asarray(image.convert("HSV"), dtype=np.float32) / 255.0
    labels, _ = ndimage.label(hsv[..., 1] > saturation_threshold, structure=np.ones((3, 3), dtype=bool))
    pixel_counts = np.bincount(labels.ravel())
    blobs = [
        (label, box)
        for label, box in enumerate(ndimage.find_objects(labels), start=1)
        if box is not None and pixel_counts[label] >= min_pixels
    ]
    return rgb, hsv, labels, blobs


def bottom_heaviness(mask: np.ndarray) -> float:
    """How much fuller a blob's bottom half is than its top half (a triangle standing on its base: about 0.5)."""
    half = mask.shape[0] // 2
    return float(mask[-half:].mean() - mask[:half].mean()) if half else 0.0
