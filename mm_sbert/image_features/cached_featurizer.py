from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from mm_sbert.image_features.box_sources import SOURCE_PATH_KEY
from mm_sbert.image_features.feature_store import FeatureStore
from mm_sbert.image_features.image_featurizer import ImageFeaturizer
from mm_sbert.image_features.region_features import RegionFeatures


class CachedFeaturizer(ImageFeaturizer):
    """Wraps a featurizer so each image is featurized once per process (e.g. across training epochs).

    Images are keyed by a hash of their pixels, so the same picture is featurized once whether it comes as a path
    (decoding still happens each time) or as a PIL image, and an edited file is featurized again. With a
    :class:`FeatureStore`, images whose file stem (or ``store_key(path)``) is a store id are read from the store
    instead of featurized.

    Saving a model saves the wrapped featurizer: the cache is a runtime aid, not part of the model.

    Args:
        featurizer: the featurizer doing the work on a miss.
        max_items: keep at most this many images (least recently used dropped); ``None``: no limit.
        store: optional precomputed features to consult first.
        store_key: maps an image's source path to its store id; default: the file name without extension.

    Example:
        >>> model[0].featurizer = CachedFeaturizer(model[0].featurizer)
    """

    def __init__(
        self,
        featurizer: ImageFeaturizer,
        max_items: int | None = None,
        store: FeatureStore | None = None,
        store_key: Callable[[str], Any] | None = None,
    ) -> None:
        if isinstance(featurizer, CachedFeaturizer):
            raise ValueError("The featurizer is already cached; wrap the plain featurizer once")
        if store is not None and store.feature_dim != featurizer.feature_dim:
            raise ValueError(
                f"The store '{store.path}' holds {store.feature_dim}-d features but {featurizer!r} yields "
                f"{featurizer.feature_dim}-d; they cannot stand in for each other"
            )
        self.featurizer = featurizer
        self.feature_dim = featurizer.feature_dim
        self.max_items = max_items
        self.store = store
        self.store_key = store_key or (lambda path: Path(path).stem)
        self.cache: OrderedDict[tuple, RegionFeatures] = OrderedDict()
        self.hits = self.misses = 0

    def featurize(self, images: Sequence[Image.Image]) -> list[RegionFeatures]:
        keys = [self._key(image) for image in images]
        results: list[RegionFeatures | None] = [None] * len(images)
        missing: dict[tuple, list[int]] = {}
        for index, (image, key) in enumerate(zip(images, keys)):
            if key in self.cache:
                self.cache.move_to_end(key)
                results[index] = self.cache[key]
                self.hits += 1
                continue
            stored = self._from_store(image)
            if stored is not None:
                results[index] = stored
                self._remember(key, stored)
                self.hits += 1
                continue
            missing.setdefault(key, []).append(index)
        if missing:
            first = [indices[0] for indices in missing.values()]
            self.misses += len(first)
            for key, regions in zip(missing, self.featurizer.featurize([images[i] for i in first])):
                self._remember(key, regions)
                for index in missing[key]:
                    results[index] = regions
        return results

    def _from_store(self, image: Image.Image) -> RegionFeatures | None:
        source = image.info.get(SOURCE_PATH_KEY)
        if self.store is None or source is None:
            return None
        store_id = self.store_key(source)
        return self.store[store_id] if store_id in self.store else None

    def _remember(self, key: tuple, regions: RegionFeatures) -> None:
        self.cache[key] = regions
        if self.max_items is not None:
            while len(self.cache) > self.max_items:
                self.cache.popitem(last=False)

    @staticmethod
    def _key(image: Image.Image) -> tuple:
        # Pixels, not the source path: PIL copies info (and so the path) into crops and resizes of an image, and
        # hashing costs ~1 ms per megapixel against ~50 ms to featurize.
        digest = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
        return ("pixels", image.mode, image.size, digest)

    def clear(self) -> None:
        self.cache.clear()
        self.hits = self.misses = 0

    # The cache is not part of the model: saving / config / repr go to the wrapped featurizer.
    def get_config_dict(self) -> dict[str, Any]:
        return self.featurizer.get_config_dict()

    def save(self, output_path: str) -> None:
        self.featurizer.save(output_path)

    def to(self, device: Any) -> CachedFeaturizer:
        if hasattr(self.featurizer, "to"):
            self.featurizer.to(device)
        return self

    def __repr__(self) -> str:
        return (
            f"CachedFeaturizer({self.featurizer!r}, cached={len(self.cache)}, hits={self.hits}, misses={self.misses})"
        )
