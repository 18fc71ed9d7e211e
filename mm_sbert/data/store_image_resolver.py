"""Training rows whose image column names images (paths or ids) that a :class:`FeatureStore` holds."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mm_sbert.image_features.feature_store import (
    FeatureStore,
    FeatureStoreError,
    ImageId,
)
from mm_sbert.image_features.image_featurizer import FEATURIZER_REGISTRY, ImageFeaturizer


def default_store_key(image: Any) -> ImageId:
    """The store id of an image reference: a path's file name without extension (as `mm-sbert featurize` names
    them); an id (int, or str without folder or extension) as is."""
    if isinstance(image, os.PathLike) or (isinstance(image, str) and (Path(image).suffix or os.sep in image)):
        return Path(image).stem
    return image


class StoreImageResolver:
    """Resolves the image column of training batches to :class:`RegionFeatures` read from a feature store.

    A training dataset then holds light image references (paths or store ids) and no image is decoded or
    featurized while training: each batch reads its regions from the memory-mapped store. Install it on a
    ``datasets.Dataset`` with :meth:`apply` (a lazy ``set_transform``, which the host trainer keeps and wraps), the
    way sentence-transformers' own ``resolve_ids`` resolves id columns. :meth:`apply` first checks that the store
    holds every referenced image, so a missing image fails before training starts, with its name.

    Args:
        store: the feature store (or its folder).
        image_column: the column holding the image references.
        store_key: maps a reference to its store id; default :func:`default_store_key` (file name without extension
            for paths, the value itself for ids).

    Example:
        >>> store = FeatureStore("flickr8k_features")                      # built by `mm-sbert featurize`
        >>> train = StoreImageResolver(store).apply(corpus.to_dataset())   # image column: paths -> RegionFeatures
    """

    def __init__(
        self,
        store: FeatureStore | str | os.PathLike,
        image_column: str = "image",
        store_key: Callable[[Any], ImageId] = default_store_key,
    ) -> None:
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store)
        self.image_column = image_column
        self.store_key = store_key

    def check(self, images: Iterable[Any], what: str = "the training data") -> None:
        """Raise :class:`FeatureStoreError` naming the first images of ``what`` the store lacks (and how many)."""
        missing = [image for image in dict.fromkeys(images) if self.store_key(image) not in self.store]
        if missing:
            examples = ", ".join(repr(image) for image in missing[:3])
            raise FeatureStoreError(
                f"The feature store '{self.store.path}' lacks {len(missing)} image(s) of {what}, e.g. "
                f"{examples} (looked up as id {self.store_key(missing[0])!r}); featurize them into the store first "
                "(`mm-sbert featurize ... --output STORE` resumes and adds them)"
            )

    def resolve(self, images: Iterable[Any], what: str = "the data") -> list[Any]:
        """The stored :class:`RegionFeatures` of ``images`` (paths or ids), after :meth:`check`."""
        images = list(images)
        self.check(images, what)
        return self.store.get_many(self.store_key(image) for image in images)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        batch = dict(batch)
        batch[self.image_column] = self.store.get_many(self.store_key(image) for image in batch[self.image_column])
        return batch

    def apply(self, dataset: Any) -> Any:
        """Check ``dataset``'s image column against the store, then resolve it lazily; returns the dataset."""
        if self.image_column not in dataset.column_names:
            raise ValueError(
                f"The dataset has no image column {self.image_column!r}; its columns are {dataset.column_names}"
            )
        self.check(dataset[self.image_column])
        dataset.set_transform(self)
        return dataset


def featurizer_from_store(store: FeatureStore) -> ImageFeaturizer:
    """Rebuild the featurizer that built ``store`` (its type and settings are in the manifest), so a model trained
    on the store featurizes new images into the same regions."""
    recorded = store.featurizer_config
    if recorded is None:
        raise FeatureStoreError(
            f"The feature store '{store.path}' does not record a featurizer (its features were imported); name the "
            "featurizer the model should use for new images"
        )
    featurizer_class = FEATURIZER_REGISTRY.get(recorded["type"])
    if featurizer_class is None:
        raise FeatureStoreError(
            f"The feature store '{store.path}' was built by the featurizer {recorded['type']!r}, which this "
            f"installation does not know (known: {sorted(FEATURIZER_REGISTRY)})"
        )
    config = {key: value for key, value in recorded["config"].items() if key != "weights_sha256"}
    return featurizer_class(**config)
