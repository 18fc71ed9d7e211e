from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from mm_sbert.image_features.box_sources import CocoBoxes
from mm_sbert.image_features.image_featurizer import ImageFeaturizer, register_featurizer
from mm_sbert.image_features.mobilenet_v2_grid_featurizer import MobileNetV2GridFeaturizer
from mm_sbert.image_features.region_features import RegionFeatures
from mm_sbert.image_features.roi_align import roi_align

BACKBONE_FOLDER = "backbone"
# Box sources that can be rebuilt from their config when a model is loaded; any other callable must be re-attached.
SAVABLE_BOX_SOURCES: dict[str, type] = {"CocoBoxes": CocoBoxes}

BoxSource = Callable[[Image.Image], Any]


@register_featurizer
class DetectorFeaturizer(ImageFeaturizer):
    """Object regions: boxes from a detector (any callable), features RoIAlign-pooled from a CNN feature map.

    For each image, ``box_source(image)`` returns the boxes in pixels (``x1, y1, x2, y2``) as an ``[N, 4]`` array
    or list, or a ``(boxes, scores[, labels])`` *tuple*, or a ``{"boxes", "scores", "labels"}`` dict (torchvision
    detection output). Boxes are sorted by score (when given), filtered by ``min_score``, and the first
    ``max_regions`` kept (OSCAR used 10-100, commonly 36 or 50). The image runs through the backbone's ``features`` at
    ``image_size x image_size``; each box's feature is the mean of its ``pool_size x pool_size`` RoIAlign grid on
    that map (1280-d with MobileNetV2). With ``include_global`` the mean-pooled whole map comes first, box
    ``(0, 0, 1, 1)``, so an image without detections still has one region.

    Ready-made box sources: :class:`CocoBoxes` (ground truth from COCO JSON; saved with the model) and
    :class:`TorchvisionDetector` (Faster R-CNN etc. when torchvision is installed; re-attach it after loading with
    ``featurizer.box_source = ...``).

    Args:
        box_source: callable image -> boxes (see above).
        backbone: a :class:`MobileNetV2GridFeaturizer` whose network is used; default ImageNet MobileNetV2.
        max_regions: object boxes kept per image (the whole-image region comes on top).
        include_global: prepend the whole-image region.
        image_size: square input size of the backbone (448 gives a 14 x 14 map, fine enough for small boxes).
        pool_size: RoIAlign grid per box, averaged into one vector.
        sampling_ratio: bilinear samples per RoIAlign bin and axis.
        min_score: drop boxes scoring below this (ignored when the source gives no scores).
    """

    config_keys = ["max_regions", "include_global", "image_size", "pool_size", "sampling_ratio", "min_score"]

    def __init__(
        self,
        box_source: BoxSource | None = None,
        backbone: MobileNetV2GridFeaturizer | None = None,
        max_regions: int = 36,
        include_global: bool = True,
        image_size: int = 448,
        pool_size: int = 2,
        sampling_ratio: int = 2,
        min_score: float | None = None,
    ) -> None:
        if max_regions < 1 or pool_size < 1 or sampling_ratio < 1:
            raise ValueError(
                "DetectorFeaturizer needs max_regions, pool_size and sampling_ratio >= 1, got "
                f"max_regions={max_regions}, pool_size={pool_size}, sampling_ratio={sampling_ratio}"
            )
        if image_size < 32 or image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32 (the backbone's stride), got {image_size}")
        self.box_source = box_source
        self.backbone = backbone if backbone is not None else MobileNetV2GridFeaturizer()
        self.max_regions = int(max_regions)
        self.include_global = bool(include_global)
        self.image_size = int(image_size)
        self.pool_size = int(pool_size)
        self.sampling_ratio = int(sampling_ratio)
        self.min_score = None if min_score is None else float(min_score)
        self.feature_dim = self.backbone.feature_dim

    def to(self, device: str | torch.device) -> DetectorFeaturizer:
        self.backbone.to(device)
        return self

    def featurize(self, images: Sequence[Image.Image]) -> list[RegionFeatures]:
        if self.box_source is None:
            raise ValueError(
                "This DetectorFeaturizer has no box source (a custom detector is not saved with the model); set "
                "featurizer.box_source = <callable image -> boxes> before featurizing raw images"
            )
        detections = [self.detect(image) for image in images]
        results: list[RegionFeatures] = []
        index = 0
        for batch, maps in self.backbone.feature_maps(images, self.image_size):
            map_h, map_w = maps.shape[-2:]
            batch_detections = detections[index : index + len(batch)]
            index += len(batch)
            # normalised boxes scaled to feature-map units: the resize to image_size is a pure per-axis scaling
            scale = torch.tensor([map_w, map_h, map_w, map_h], dtype=maps.dtype)
            pooled = roi_align(
                maps,
                [(boxes * scale).to(maps.device) for boxes, _ in batch_detections],
                self.pool_size,
                spatial_scale=1.0,
                sampling_ratio=self.sampling_ratio,
                aligned=True,
            ).mean(dim=(2, 3))
            pooled = pooled.float().cpu().split([len(boxes) for boxes, _ in batch_detections])
            global_features = maps.mean(dim=(2, 3)).float().cpu()
            for image, (boxes, labels), features, whole in zip(batch, batch_detections, pooled, global_features):
                if self.include_global:
                    features = torch.cat([whole[None], features])
                    boxes = torch.cat([torch.tensor([[0.0, 0.0, 1.0, 1.0]]), boxes])
                    labels = None if labels is None else ["<image>", *labels]
                else:
                    features = features.clone()  # a split() view would keep the whole batch's storage alive
                results.append(RegionFeatures(features, boxes, image_size=image.size, labels=labels))
        return results

    def detect(self, image: Image.Image) -> tuple[torch.Tensor, list[str] | None]:
        """One image's kept boxes, normalised ``[N, 4]``, best first, and their labels (if the source has any)."""
        output = self.box_source(image)
        scores = labels = None
        if isinstance(output, dict):
            boxes, scores, labels = output.get("boxes"), output.get("scores"), output.get("labels")
        elif isinstance(output, tuple):  # a list is a list of boxes; only a tuple carries scores / labels
            if len(output) not in (2, 3):
                raise ValueError(f"A box source's tuple must be (boxes, scores[, labels]), got {len(output)} items")
            boxes, scores = output[0], output[1]
            labels = output[2] if len(output) == 3 else None
        else:
            boxes = output
        boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
        if labels is not None:
            labels = [str(label) for label in (labels.tolist() if hasattr(labels, "tolist") else labels)]
            if len(labels) != len(boxes):
                raise ValueError(f"The box source returned {len(boxes)} boxes but {len(labels)} labels")
        order = torch.arange(len(boxes))
        if scores is not None:
            scores = torch.as_tensor(np.asarray(scores, dtype=np.float32)).reshape(-1)
            if len(scores) != len(boxes):
                raise ValueError(f"The box source returned {len(boxes)} boxes but {len(scores)} scores")
            order = torch.argsort(scores, descending=True, stable=True)
            if self.min_score is not None:
                order = order[scores[order] >= self.min_score]
        order = order[: self.max_regions]
        width, height = image.size
        normalised = (boxes[order] / torch.tensor([width, height, width, height], dtype=torch.float32)).clamp(0, 1)
        # a box given as x2 < x1 is a source bug worth surfacing; after clamping, keep the order valid
        if (normalised[:, 2] < normalised[:, 0]).any() or (normalised[:, 3] < normalised[:, 1]).any():
            raise ValueError("The box source returned boxes with x2 < x1 or y2 < y1; expected pixel x1, y1, x2, y2")
        kept_labels = None if labels is None else [labels[i] for i in order.tolist()]
        return normalised, kept_labels

    # ------------------------------------------------------------------ persistence

    def get_config_dict(self) -> dict[str, Any]:
        config = super().get_config_dict()
        source = self.box_source
        if source is not None and type(source).__name__ in SAVABLE_BOX_SOURCES:
            config["box_source"] = {"type": type(source).__name__, "config": source.get_config_dict()}
        else:
            config["box_source"] = None
        return config

    def save(self, output_path: str) -> None:
        super().save(output_path)
        self.backbone.save(os.path.join(output_path, BACKBONE_FOLDER))

    @classmethod
    def _from_saved(cls, input_path: str, config: dict[str, Any]) -> DetectorFeaturizer:
        config = dict(config)
        saved_source = config.pop("box_source", None)
        box_source = None
        if saved_source is not None:
            box_source = SAVABLE_BOX_SOURCES[saved_source["type"]](**saved_source["config"])
        backbone = ImageFeaturizer.load(os.path.join(input_path, BACKBONE_FOLDER))
        return cls(box_source=box_source, backbone=backbone, **config)
