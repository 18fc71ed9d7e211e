"""Words for an image from an ImageNet classifier: its most probable classes, as OSCAR-style object tags."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch

# The 1,000 ImageNet-1k class names in the classifiers' output order, as torchvision's models/_meta.py lists them
# (BSD-3-Clause; a list of facts shipped as package data so tagging works offline without torchvision).
CLASS_NAMES_FILE = Path(__file__).with_name("imagenet_classes.json")
NUM_IMAGENET_CLASSES = 1000


@cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, index ``i`` = output ``i`` of the MobileNetV2 / EfficientNet-Lite heads."""
    try:
        names = json.loads(CLASS_NAMES_FILE.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise FileNotFoundError(
            f"The ImageNet class names ship with mm_sbert as {CLASS_NAMES_FILE}, which is missing or damaged "
            f"({exc}); reinstall mm_sbert"
        ) from exc
    if len(names) != NUM_IMAGENET_CLASSES or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"{CLASS_NAMES_FILE} must list {NUM_IMAGENET_CLASSES} class names; reinstall mm_sbert")
    return tuple(names)


class ImageNetTagger:
    """Turns ImageNet logits into per-image tags: the ``num_tags`` most probable class names, most probable first,
    with their softmax probabilities.

    OSCAR feeds a detector's object labels to the transformer as words beside the caption; an ImageNet classifier's
    top classes are the closest words the bundled weights offer (``"golden retriever"``, ``"seashore"``): words a
    text backbone already understands. :class:`~mm_sbert.image_features.MobileNetV2GridFeaturizer` and
    :class:`~mm_sbert.image_features.EfficientNetLiteGridFeaturizer` use it when built with ``num_tags > 0``.

    Args:
        num_tags: classes kept per image (at least 1).
        class_names: one name per logit; default: the 1,000 ImageNet-1k names.

    Example:
        >>> tags, scores = ImageNetTagger(num_tags=3).tag(torch.randn(2, 1000))[0]
    """

    def __init__(self, num_tags: int = 5, class_names: tuple[str, ...] | list[str] | None = None) -> None:
        if isinstance(num_tags, bool) or not isinstance(num_tags, int) or num_tags < 1:
            raise ValueError(f"num_tags must be an integer >= 1, got {num_tags!r}")
        self.class_names = tuple(class_names) if class_names is not None else imagenet_class_names()
        if num_tags > len(self.class_names):
            raise ValueError(f"num_tags={num_tags} exceeds the {len(self.class_names)} classes")
        self.num_tags = num_tags

    def tag(self, logits: torch.Tensor) -> list[tuple[list[str], list[float]]]:
        """``[B, classes]`` logits -> per image ``(tags, probabilities)``, most probable first."""
        if logits.ndim != 2 or logits.shape[1] != len(self.class_names):
            raise ValueError(
                f"ImageNetTagger expects logits of shape [batch, {len(self.class_names)}], got {tuple(logits.shape)}"
            )
        probabilities = logits.float().softmax(dim=-1)
        top = probabilities.topk(self.num_tags, dim=-1)
        return [
            ([self.class_names[index] for index in indices.tolist()], [round(p, 6) for p in values.tolist()])
            for values, indices in zip(top.values, top.indices)
        ]
