"""The built-in featurizers by short name (``color-grid``, ``color-blob``, ``mobilenet-grid``, ``efficientnet-grid``),
the names ``mm-sbert featurize --featurizer`` and ``mm-sbert train --featurizer`` take."""

from __future__ import annotations

from mm_sbert.errors import InvalidInputError
from mm_sbert.image_features.image_featurizer import ImageFeaturizer

FEATURIZER_NAMES = ("color-grid", "color-blob", "mobilenet-grid", "efficientnet-grid")
# The featurizers whose regions are cells of a grid that grid_size sets.
GRID_FEATURIZERS = ("color-grid", "mobilenet-grid", "efficientnet-grid")
# The ImageNet classifiers, which can also tag each image with its most probable classes.
TAGGING_FEATURIZERS = ("mobilenet-grid", "efficientnet-grid")


def featurizer_from_name(name: str, grid_size: int | None = None, num_tags: int = 0) -> ImageFeaturizer:
    """A new built-in featurizer by its short name.

    Args:
        name: one of :data:`FEATURIZER_NAMES`: ``"color-grid"`` (:class:`ColorGridFeaturizer`, 3 x 3 cells by
            default), ``"color-blob"`` (:class:`ColorBlobFeaturizer`, one region per coloured object),
            ``"mobilenet-grid"`` (:class:`MobileNetV2GridFeaturizer`) or ``"efficientnet-grid"``
            (:class:`EfficientNetLiteGridFeaturizer`).
        grid_size: cells per side of a grid featurizer (the CNN grids: their feature map average-pooled to this many;
            ``None``: no pooling).
        num_tags: with an ImageNet grid: also tag each image with its ``num_tags`` most probable classes.

    Raises:
        InvalidInputError: an unknown name, or ``grid_size`` / ``num_tags`` for a featurizer without a grid / tags.
        ValueError: ``grid_size`` out of the featurizer's range.
        FileNotFoundError: a CNN's weights are not installed (the message says which package ships them).
    """
    if name not in FEATURIZER_NAMES:
        raise InvalidInputError(f"Unknown featurizer {name!r}; expected one of {', '.join(FEATURIZER_NAMES)}")
    if grid_size is not None and name not in GRID_FEATURIZERS:
        raise InvalidInputError(f"grid_size applies to the grid featurizers {GRID_FEATURIZERS}, not to {name!r}")
    if num_tags and name not in TAGGING_FEATURIZERS:
        raise InvalidInputError(f"num_tags needs an ImageNet classifier {TAGGING_FEATURIZERS}, not {name!r}")
    from mm_sbert.image_features.color_blob_featurizer import ColorBlobFeaturizer
    from mm_sbert.image_features.color_grid_featurizer import ColorGridFeaturizer

    if name == "color-blob":
        return ColorBlobFeaturizer()
    if name == "color-grid":
        return ColorGridFeaturizer(grid_size=3 if grid_size is None else grid_size)
    if name == "mobilenet-grid":
        from mm_sbert.image_features.mobilenet_v2_grid_featurizer import MobileNetV2GridFeaturizer

        return MobileNetV2GridFeaturizer(grid_size=grid_size, num_tags=num_tags)
    from mm_sbert.image_features.efficientnet_lite_grid_featurizer import EfficientNetLiteGridFeaturizer

    return EfficientNetLiteGridFeaturizer(grid_size=grid_size, num_tags=num_tags)
