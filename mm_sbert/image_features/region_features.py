from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

BoxFormat = Literal["oscar", "m3p", "none"]
"""How a region's box is appended to its feature vector.

- ``"oscar"``: ``x1, y1, x2, y2, w, h`` (6 numbers, normalised), as OSCAR / VinVL do.
- ``"m3p"``: ``x1, y1, x2, y2, w * h`` (5 numbers), as M3P does.
- ``"none"``: nothing appended.
"""

BOX_FORMAT_WIDTHS: dict[str, int] = {"oscar": 6, "m3p": 5, "none": 0}

# Normalised boxes may overshoot [0, 1] by rounding in detector outputs; anything beyond this is a unit mistake.
_BOX_TOLERANCE = 1e-3


def _as_float_tensor(value: np.ndarray | torch.Tensor | Sequence, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    else:
        try:
            tensor = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"RegionFeatures.{name} must be array-like, got {type(value).__name__}") from exc
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"RegionFeatures.{name} must hold numbers, got dtype {tensor.dtype}")
    return tensor.float() if tensor.dtype != torch.float16 else tensor


@dataclass
class RegionFeatures:
    """Object-region features of one image, the way OSCAR / M3P consume an image.

    Args:
        features: ``[R, D]`` one feature vector per region (e.g. 2048-d Faster R-CNN features).
        boxes: ``[R, 4]`` region boxes as normalised ``x1, y1, x2, y2`` in ``[0, 1]``.
        image_size: optional ``(width, height)`` of the source image in pixels.
        labels: optional object label per region (kept for inspection; not fed to the model).
        tags: optional words for the whole image, most confident first (e.g. an ImageNet classifier's top classes
            from :class:`~mm_sbert.image_features.ImageNetTagger`). A model built with ``add_od_labels=True`` reads
            them as OSCAR reads its detector's object labels: ``[CLS] caption [SEP] tags [SEP] regions``.
        tag_scores: optional confidence per tag (e.g. class probabilities), kept for inspection and storage.

    Example:
        >>> import torch
        >>> regions = RegionFeatures(torch.randn(36, 2048), torch.tensor([[0.1, 0.2, 0.5, 0.9]] * 36))
        >>> regions.region_vectors("oscar").shape
        torch.Size([36, 2054])
    """

    features: torch.Tensor
    boxes: torch.Tensor
    image_size: tuple[int, int] | None = None
    labels: list[str] | None = field(default=None)
    tags: list[str] | None = field(default=None)
    tag_scores: list[float] | None = field(default=None)

    def __post_init__(self) -> None:
        self.features = _as_float_tensor(self.features, "features")
        self.boxes = _as_float_tensor(self.boxes, "boxes").float()
        if self.features.ndim != 2:
            raise ValueError(
                f"RegionFeatures.features must have shape [num_regions, feature_dim], got {tuple(self.features.shape)}"
            )
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(
                "RegionFeatures.boxes must have shape [num_regions, 4] (normalised x1, y1, x2, y2), "
                f"got {tuple(self.boxes.shape)}"
            )
        if self.boxes.shape[0] != self.features.shape[0]:
            raise ValueError(
                f"RegionFeatures has {self.features.shape[0]} feature rows but {self.boxes.shape[0]} boxes; "
                "every region needs exactly one box"
            )
        if not torch.isfinite(self.features).all():
            raise ValueError("RegionFeatures.features contains NaN or infinite values")
        if len(self.boxes):
            if not torch.isfinite(self.boxes).all():
                raise ValueError("RegionFeatures.boxes contains NaN or infinite values")
            if self.boxes.min() < -_BOX_TOLERANCE or self.boxes.max() > 1 + _BOX_TOLERANCE:
                raise ValueError(
                    "RegionFeatures.boxes must be normalised to [0, 1] (divide pixel coordinates by the image "
                    f"width/height, or use RegionFeatures.from_pixel_boxes); got values in "
                    f"[{self.boxes.min().item():.3g}, {self.boxes.max().item():.3g}]"
                )
            if (self.boxes[:, 2] < self.boxes[:, 0]).any() or (self.boxes[:, 3] < self.boxes[:, 1]).any():
                raise ValueError("RegionFeatures.boxes must be ordered x1, y1, x2, y2 with x2 >= x1 and y2 >= y1")
        if self.labels is not None and len(self.labels) != len(self.features):
            raise ValueError(
                f"RegionFeatures has {len(self.features)} regions but {len(self.labels)} labels; give one label per "
                "region or none"
            )
        self._check_tags()

    def _check_tags(self) -> None:
        if self.tags is not None:
            if isinstance(self.tags, str) or not all(isinstance(tag, str) and tag.strip() for tag in self.tags):
                raise ValueError(f"RegionFeatures.tags must be a list of non-empty strings, got {self.tags!r:.200}")
            self.tags = list(self.tags)
        if self.tag_scores is not None:
            if self.tags is None or len(self.tag_scores) != len(self.tags):
                raise ValueError(
                    f"RegionFeatures has {0 if self.tags is None else len(self.tags)} tags but "
                    f"{len(self.tag_scores)} tag scores; give one score per tag or none"
                )
            self.tag_scores = [float(score) for score in self.tag_scores]
            if not all(np.isfinite(self.tag_scores)):
                raise ValueError("RegionFeatures.tag_scores contains NaN or infinite values")

    @property
    def tag_text(self) -> str | None:
        """The tags as one text (space-separated, as OSCAR joins its object labels); ``None`` without tags."""
        return " ".join(self.tags) if self.tags else None

    @classmethod
    def from_pixel_boxes(
        cls,
        features: np.ndarray | torch.Tensor,
        boxes: np.ndarray | torch.Tensor,
        image_size: tuple[int, int],
        labels: list[str] | None = None,
    ) -> RegionFeatures:
        """Build from boxes in pixel coordinates (``x1, y1, x2, y2``) and the image's ``(width, height)``."""
        width, height = image_size
        if width <= 0 or height <= 0:
            raise ValueError(f"image_size must be positive (width, height), got {image_size}")
        pixel_boxes = _as_float_tensor(boxes, "boxes").float()
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        return cls(features, (pixel_boxes / scale).clamp(0, 1), image_size=(int(width), int(height)), labels=labels)

    @property
    def num_regions(self) -> int:
        return self.features.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.features.shape[1]

    def geometry(self, box_format: BoxFormat = "oscar") -> torch.Tensor:
        """The box numbers appended to each region's feature, ``[R, 6]`` (OSCAR), ``[R, 5]`` (M3P) or ``[R, 0]``."""
        x1, y1, x2, y2 = self.boxes.unbind(dim=1)
        width, height = x2 - x1, y2 - y1
        if box_format == "oscar":
            return torch.stack([x1, y1, x2, y2, width, height], dim=1)
        if box_format == "m3p":
            return torch.stack([x1, y1, x2, y2, width * height], dim=1)
        if box_format == "none":
            return self.boxes.new_zeros((self.num_regions, 0))
        raise ValueError(f"Unknown box_format {box_format!r}; expected one of {sorted(BOX_FORMAT_WIDTHS)}")

    def region_vectors(self, box_format: BoxFormat = "oscar") -> torch.Tensor:
        """``[R, D + box width]``: each region's feature with its box geometry appended (float32)."""
        return torch.cat([self.features.float(), self.geometry(box_format)], dim=1)

    def truncate(self, max_regions: int) -> RegionFeatures:
        """Keep the first ``max_regions`` regions (extractors emit them sorted by confidence)."""
        if self.num_regions <= max_regions:
            return self
        labels = self.labels[:max_regions] if self.labels is not None else None
        return RegionFeatures(
            self.features[:max_regions],
            self.boxes[:max_regions],
            self.image_size,
            labels,
            tags=self.tags,  # whole-image words: not per region, so all are kept
            tag_scores=self.tag_scores,
        )

    def __repr__(self) -> str:
        return (
            f"RegionFeatures(num_regions={self.num_regions}, feature_dim={self.feature_dim}, "
            f"image_size={self.image_size}{f', tags={self.tags}' if self.tags else ''})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RegionFeatures):
            return NotImplemented
        return (
            torch.equal(self.features, other.features)
            and torch.equal(self.boxes, other.boxes)
            and self.image_size == other.image_size
            and self.labels == other.labels
            and self.tags == other.tags
            and self.tag_scores == other.tag_scores
        )
