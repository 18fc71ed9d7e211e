from __future__ import annotations

from mm_sbert.image_features.box_sources import CocoBoxes, TorchvisionDetector
from mm_sbert.image_features.cached_featurizer import CachedFeaturizer
from mm_sbert.image_features.color_blob_featurizer import ColorBlobFeaturizer
from mm_sbert.image_features.color_grid_featurizer import ColorGridFeaturizer
from mm_sbert.image_features.detector_featurizer import DetectorFeaturizer
from mm_sbert.image_features.efficientnet_lite_grid_featurizer import (
    EfficientNetLiteGridFeaturizer,
    efficientnet_lite2_weights_path,
    load_efficientnet_lite2,
)
from mm_sbert.image_features.feature_store import FeatureStore, FeatureStoreError
from mm_sbert.image_features.image_featurizer import FEATURIZER_REGISTRY, ImageFeaturizer, register_featurizer
from mm_sbert.image_features.image_loading import ImageLoadError, load_image, looks_like_image_path
from mm_sbert.image_features.imagenet_tagger import ImageNetTagger, imagenet_class_names
from mm_sbert.image_features.mobilenet_v2 import MobileNetV2, load_mobilenet_v2, mobilenet_v2_weights_path
from mm_sbert.image_features.mobilenet_v2_grid_featurizer import MobileNetV2GridFeaturizer
from mm_sbert.image_features.precomputed import read_butd_tsv, read_npz_folder, read_oscar_tsv
from mm_sbert.image_features.region_features import BOX_FORMAT_WIDTHS, BoxFormat, RegionFeatures
from mm_sbert.image_features.roi_align import roi_align
from mm_sbert.image_features.shape_tagger import ShapeTagger

__all__ = [
    "BOX_FORMAT_WIDTHS",
    "BoxFormat",
    "CachedFeaturizer",
    "CocoBoxes",
    "ColorBlobFeaturizer",
    "ColorGridFeaturizer",
    "DetectorFeaturizer",
    "EfficientNetLiteGridFeaturizer",
    "FEATURIZER_REGISTRY",
    "FeatureStore",
    "FeatureStoreError",
    "ImageFeaturizer",
    "ImageLoadError",
    "ImageNetTagger",
    "MobileNetV2",
    "MobileNetV2GridFeaturizer",
    "RegionFeatures",
    "ShapeTagger",
    "TorchvisionDetector",
    "efficientnet_lite2_weights_path",
    "imagenet_class_names",
    "load_efficientnet_lite2",
    "load_image",
    "load_mobilenet_v2",
    "looks_like_image_path",
    "mobilenet_v2_weights_path",
    "read_butd_tsv",
    "read_npz_folder",
    "read_oscar_tsv",
    "register_featurizer",
    "roi_align",
]
