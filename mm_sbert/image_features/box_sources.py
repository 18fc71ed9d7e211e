"""Where a :class:`DetectorFeaturizer` gets its boxes: ground truth from COCO JSON, or a torchvision detector."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import Field, field_validator

from mm_sbert.errors import InvalidFileError, InvalidInputError, UnknownIdError
from mm_sbert.storage import StrictSchema, read_json_file, validate_data

SOURCE_PATH_KEY = "source_path"


class _CocoImage(StrictSchema):
    id: int
    file_name: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class _CocoAnnotation(StrictSchema):
    image_id: int
    category_id: int
    bbox: list[float] = Field(min_length=4, max_length=4)
    iscrowd: int | bool = 0

    @field_validator("bbox")
    @classmethod
    def _size_not_negative(cls, bbox: list[float]) -> list[float]:
        if bbox[2] < 0 or bbox[3] < 0:
            raise ValueError("a bbox is [x, y, width, height] with width, height >= 0")
        return bbox


class _CocoCategory(StrictSchema):
    id: int
    name: str


class _CocoInstances(StrictSchema):
    """The keys of a COCO ``instances_*.json`` that :class:`CocoBoxes` reads."""

    images: list[_CocoImage]
    annotations: list[_CocoAnnotation]
    categories: list[_CocoCategory]


class CocoBoxes:
    """Ground-truth object boxes from a COCO instances JSON, as a box source for :class:`DetectorFeaturizer`.

    Called with an image, it returns that image's annotated boxes (pixels, ``x1, y1, x2, y2``, scaled to the image's
    actual size), their category names as labels, and no scores, largest box first so that keeping the top N keeps
    the biggest objects. The image is found by file name: images read by mm_sbert's :func:`load_image` carry their
    path in ``image.info["source_path"]``; a path or a COCO image id works too.

    Args:
        annotations_path: a COCO ``instances_*.json`` (``images``, ``annotations[].bbox`` as x, y, w, h,
            ``categories``).
        include_crowd: also return ``iscrowd`` boxes (crowd regions, off by default as in COCO detection training).

    Example:
        >>> boxes = CocoBoxes("coco/annotations/instances_train2017.json")
        >>> featurizer = DetectorFeaturizer(boxes, max_regions=36)
    """

    def __init__(self, annotations_path: str | os.PathLike, include_crowd: bool = False) -> None:
        self.annotations_path = str(annotations_path)
        self.include_crowd = bool(include_crowd)
        data = read_json_file(self.annotations_path, "COCO annotations file")
        if isinstance(data, dict) and "annotations" in data and "categories" not in data:
            raise InvalidFileError(
                f"'{self.annotations_path}' is not a COCO instances file: it has no categories (captions files have "
                "no boxes; use instances_*.json)"
            )
        data = validate_data(_CocoInstances, data, self.annotations_path, "COCO annotations file")
        categories = {category.id: category.name for category in data.categories}
        self._images = {image.id: {"width": image.width, "height": image.height} for image in data.images}
        self._by_file = {image.file_name: image.id for image in data.images}
        self._boxes: dict[int, list[tuple[float, list[float], str]]] = {image_id: [] for image_id in self._images}
        for number, annotation in enumerate(data.annotations):
            if annotation.iscrowd and not self.include_crowd:
                continue
            if annotation.image_id not in self._images:
                raise InvalidFileError(
                    f"The COCO annotations file '{self.annotations_path}' is invalid: field 'annotations.{number}."
                    f"image_id': image {annotation.image_id} is not in its images"
                )
            x, y, w, h = annotation.bbox
            entry = (w * h, [x, y, x + w, y + h], categories.get(annotation.category_id, "unknown"))
            self._boxes[annotation.image_id].append(entry)

    def image_id(self, image: Image.Image | str | os.PathLike | int) -> int:
        """The COCO image id of an image (by its source path's file name), a path, or an id."""
        if isinstance(image, Image.Image):
            source = image.info.get(SOURCE_PATH_KEY)
            if source is None:
                raise InvalidInputError(
                    "CocoBoxes finds an image's boxes by its file name, but this PIL image has no "
                    f"info['{SOURCE_PATH_KEY}']; load it with mm_sbert's load_image(path) or pass the path"
                )
            image = source
        if isinstance(image, (int, np.integer)):
            image_id = int(image)
        else:
            name = Path(image).name
            image_id = self._by_file.get(name)
            if image_id is None and Path(name).stem.isdigit():
                image_id = int(Path(name).stem)
        if image_id not in self._images:
            raise UnknownIdError(f"Image {image!r} is not in the COCO annotations '{self.annotations_path}'")
        return image_id

    def __call__(self, image: Image.Image | str | os.PathLike | int) -> dict[str, Any]:
        image_id = self.image_id(image)
        info = self._images[image_id]
        entries = sorted(self._boxes[image_id], key=lambda entry: -entry[0])
        boxes = torch.tensor([box for _, box, _ in entries], dtype=torch.float32).reshape(-1, 4)
        size = (info["width"], info["height"])
        if isinstance(image, Image.Image) and image.size == size[::-1] and size[0] != size[1]:
            # COCO boxes are in the stored pixel orientation; load_image applied an EXIF rotation, and rotating
            # boxes back is guesswork: better no object regions than wrong ones.
            warnings.warn(
                f"COCO image {image_id} is {image.size[0]}x{image.size[1]} after EXIF rotation but annotated as "
                f"{size[0]}x{size[1]}; its boxes are skipped",
                stacklevel=2,
            )
            return {"boxes": torch.zeros(0, 4), "scores": None, "labels": []}
        if isinstance(image, Image.Image) and image.size != size:
            # The file was resized since annotation: boxes scale with it.
            scale = torch.tensor([image.size[0] / info["width"], image.size[1] / info["height"]] * 2)
            boxes = boxes * scale
        return {"boxes": boxes, "scores": None, "labels": [label for _, _, label in entries]}

    def get_config_dict(self) -> dict[str, Any]:
        return {"annotations_path": self.annotations_path, "include_crowd": self.include_crowd}


class TorchvisionDetector:
    """A torchvision detection model (e.g. Faster R-CNN) as a box source; needs torchvision (an optional extra).

    Args:
        model: a torchvision detection model (``torchvision.models.detection.*``) with weights already loaded
            from a local file; it is put in eval mode.
        score_threshold: boxes below this score are dropped.
        device: where the detector runs.
        categories: names of the model's class indices (e.g. ``weights.meta["categories"]``), used as labels.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        score_threshold: float = 0.2,
        device: str = "cpu",
        categories: list[str] | None = None,
    ) -> None:
        try:
            import torchvision.transforms.functional as tvf
        except Exception as exc:  # torchvision fails with RuntimeError, not ImportError, beside a mismatched torch
            raise ImportError(
                "TorchvisionDetector needs a torchvision that matches your torch (pip install torchvision); "
                f"import failed with: {exc}"
            ) from exc
        self._to_tensor = tvf.to_tensor
        self.model = model.eval().to(device)
        self.score_threshold = float(score_threshold)
        self.device = device
        self.categories = categories

    def __call__(self, image: Image.Image) -> dict[str, Any]:
        with torch.inference_mode():
            output = self.model([self._to_tensor(image).to(self.device)])[0]
        keep = output["scores"] >= self.score_threshold
        labels = output["labels"][keep].tolist()
        names = [self.categories[label] if self.categories else str(label) for label in labels]
        return {"boxes": output["boxes"][keep].cpu(), "scores": output["scores"][keep].cpu(), "labels": names}
