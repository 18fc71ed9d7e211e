from __future__ import annotations

from mm_sbert.image_features.color_grid_featurizer import ColorGridFeaturizer
from mm_sbert.image_features.image_featurizer import FEATURIZER_REGISTRY, ImageFeaturizer, register_featurizer
from mm_sbert.image_features.image_loading import ImageLoadError, load_image, looks_like_image_path
from mm_sbert.image_features.region_features import BOX_FORMAT_WIDTHS, BoxFormat, RegionFeatures

__all__ = [
    "BOX_FORMAT_WIDTHS",
    "BoxFormat",
    "ColorGridFeaturizer",
    "FEATURIZER_REGISTRY",
    "ImageFeaturizer",
    "ImageLoadError",
    "RegionFeatures",
    "load_image",
    "looks_like_image_path",
    "register_featurizer",
]
