from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from PIL import Image

from mm_sbert.image_features.region_features import RegionFeatures
from mm_sbert.storage.file_schema import StrictSchema

FEATURIZER_CONFIG_NAME = "featurizer_config.json"

FEATURIZER_REGISTRY: dict[str, type[ImageFeaturizer]] = {}


class _FeaturizerConfigFile(StrictSchema):
    type: str
    config: dict[str, Any] = {}


def register_featurizer(cls: type[ImageFeaturizer]) -> type[ImageFeaturizer]:
    """Class decorator: make a featurizer loadable by name from a saved model."""
    FEATURIZER_REGISTRY[cls.__name__] = cls
    return cls


class ImageFeaturizer(ABC):
    """Turns RGB images into :class:`RegionFeatures`: the one interface every image extractor implements.

    Subclasses set :attr:`feature_dim`, implement :meth:`featurize`, list their constructor arguments in
    :attr:`config_keys`, and, when they hold weights, override :meth:`save` / :meth:`load`. Decorate them with
    :func:`register_featurizer` so a saved model can rebuild them by name.
    """

    config_keys: ClassVar[list[str]] = []
    feature_dim: int

    @abstractmethod
    def featurize(self, images: Sequence[Image.Image]) -> list[RegionFeatures]:
        """Featurize a batch of RGB PIL images, one :class:`RegionFeatures` per image, in order."""

    def __call__(self, images: Sequence[Image.Image]) -> list[RegionFeatures]:
        return self.featurize(images)

    def get_config_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.config_keys}

    def save(self, output_path: str) -> None:
        """Write the featurizer's settings (and, in subclasses, weights) into ``output_path``."""
        os.makedirs(output_path, exist_ok=True)
        config = {"type": type(self).__name__, "config": self.get_config_dict()}
        with open(os.path.join(output_path, FEATURIZER_CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)

    @classmethod
    def load(cls, input_path: str) -> ImageFeaturizer:
        """Rebuild a saved featurizer of whatever registered type it is."""
        from mm_sbert.errors import InvalidFileError
        from mm_sbert.storage import read_json_schema

        config_path = os.path.join(input_path, FEATURIZER_CONFIG_NAME)
        saved = read_json_schema(config_path, _FeaturizerConfigFile, "featurizer config")
        featurizer_cls = FEATURIZER_REGISTRY.get(saved.type)
        if featurizer_cls is None:
            raise InvalidFileError(
                f"{config_path} names featurizer type {saved.type!r}, which is not registered; known types: "
                f"{sorted(FEATURIZER_REGISTRY)}. Import the module that defines it before loading the model."
            )
        try:
            return featurizer_cls._from_saved(input_path, saved.config)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InvalidFileError):
                raise
            raise InvalidFileError(f"The featurizer config '{config_path}' does not fit {saved.type}: {exc}") from exc

    @classmethod
    def _from_saved(cls, input_path: str, config: dict[str, Any]) -> ImageFeaturizer:
        return cls(**config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_config_dict()})"
