from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from mm_sbert.errors import (
    FeatureStoreError,
    InvalidFileError,
    InvalidInputError,
    InvalidInputTypeError,
    StorageError,
    UnknownIdError,
)
from mm_sbert.image_features.image_featurizer import ImageFeaturizer
from mm_sbert.image_features.image_loading import ImageLoadError, load_image
from mm_sbert.image_features.region_features import RegionFeatures
from mm_sbert.storage import (
    StrictSchema,
    atomic_write_bytes,
    bytes_record,
    check_output_path,
    exclusive_output,
    mark_owned_folder,
    read_json_schema,
    read_manifest,
    register_legacy_folder_kind,
    validate_data,
    verify_file,
)

MANIFEST_NAME = "manifest.json"
STORE_FORMAT = "mm_sbert-feature-store"
# 2: every file also has a cheap checksum (size + first/last MiB), checked on every open.
STORE_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
# One shard = these files; the manifest records each one's size and checksums.
SHARD_FILES = ("features.npy", "boxes.npy", "offsets.npy", "sizes.npy", "meta.json")

ImageId = int | str
StoreDtype = Literal["float32", "float16"]
# What a store's writer creates in its folder (``atomic_write_bytes`` writes ``.NAME.tmp-XXXXXXXX`` first): entries an
# interrupted run left behind, and nothing else, belong to the store.
OWNED_KIND = "feature-store"
OWNED_PATTERNS = (MANIFEST_NAME, f".{MANIFEST_NAME}.tmp-*", "shard-*", ".shard-*.tmp-*")


class _FileRecord(StrictSchema):
    size: int = Field(alias="bytes", ge=0)
    sha256: str
    quick_sha256: str | None = None


class _ShardEntry(StrictSchema):
    name: str
    num_images: int = Field(ge=0)
    num_regions: int = Field(ge=0)
    files: dict[Literal[SHARD_FILES], _FileRecord]

    @model_validator(mode="after")
    def _every_file(self) -> _ShardEntry:
        if set(self.files) != set(SHARD_FILES):
            raise ValueError(f"a shard lists the files {sorted(self.files)}, not {list(SHARD_FILES)}")
        return self


class _FeaturizerEntry(StrictSchema):
    type: str
    config: dict[str, Any]


class _StoreManifest(StrictSchema):
    format: Literal[STORE_FORMAT]
    version: int
    feature_dim: int | None = Field(ge=1)
    dtype: StoreDtype
    featurizer: _FeaturizerEntry | None = None
    shards: list[_ShardEntry]
    failed: dict[str, str] = {}
    complete: bool

    @model_validator(mode="after")
    def _width_known(self) -> _StoreManifest:
        if self.feature_dim is None and any(shard.num_images for shard in self.shards):
            raise ValueError("feature_dim is null but the shards hold images")
        return self


class _ShardMeta(StrictSchema):
    ids: list[int | str]
    labels: list[list[str] | None]
    # [tags, scores] or null per image; absent in stores written before tags.
    tags: list[Any] | None = None


def _is_legacy_store(folder: Path) -> bool:
    """A store written before the owner mark: its manifest names the store format (nothing else counts)."""
    manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    return isinstance(manifest, dict) and manifest.get("format") == STORE_FORMAT


register_legacy_folder_kind(OWNED_KIND, _is_legacy_store)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file, read from its header only."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version not in readers:
                raise InvalidFileError(f".npy format version {version}")
            shape, fortran, dtype = readers[version](f)
        except (ValueError, OSError, SyntaxError, TypeError) as exc:
            raise StorageError(f"'{path}' is not a valid .npy array file ({exc}); the store is corrupt") from None
    if fortran or dtype.hasobject:
        layout = "Fortran-ordered" if fortran else "object"
        raise StorageError(f"'{path}' holds a {layout} array; the store is corrupt")
    return tuple(shape), dtype


__all__ = ["FeatureStore", "FeatureStoreError"]


def _key(image_id: Any) -> str:
    if isinstance(image_id, (bool, float)) or not isinstance(image_id, (int, np.integer, str)):
        raise InvalidInputTypeError(f"Image ids must be int or str, got {type(image_id).__name__}: {image_id!r}")
    return str(int(image_id)) if isinstance(image_id, (int, np.integer)) else image_id


# Settings that change speed, not features: a resumed run may use other values.
_RUNTIME_KEYS = {"batch_size"}


def _featurizer_identity(featurizer: ImageFeaturizer) -> dict[str, Any]:
    """``{"type", "config"}`` of the featurizer doing the work (a caching wrapper is looked through)."""
    while isinstance(getattr(featurizer, "featurizer", None), ImageFeaturizer):
        featurizer = featurizer.featurizer
    return {"type": type(featurizer).__name__, "config": featurizer.get_config_dict()}


def same_featurizer(first: ImageFeaturizer, second: ImageFeaturizer) -> bool:
    """Whether two featurizers turn an image into the same regions (same type and settings, speed settings aside)."""
    return _same_featurizer(_featurizer_identity(first), _featurizer_identity(second))


def _same_featurizer(saved: dict[str, Any] | None, current: dict[str, Any] | None) -> bool:
    if saved is None or current is None:
        return saved == current
    strip = lambda config: {k: v for k, v in config.items() if k not in _RUNTIME_KEYS}  # noqa: E731
    return saved["type"] == current["type"] and strip(saved["config"]) == strip(current["config"])


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


class FeatureStore:
    """Region features of an image collection on disk, read lazily by image id.

    A store is a folder of shards (``shard-00000.features.npy`` ``[regions, D]`` float32 or float16,
    ``.boxes.npy`` ``[regions, 4]``, ``.offsets.npy`` per-image region offsets, ``.sizes.npy`` image sizes,
    ``.meta.json`` ids and labels) plus ``manifest.json`` with every file's size and sha256. Arrays are opened
    memory-mapped, so a 100k-image collection costs RAM only for its id index and the regions actually read.

    Build one with :meth:`build` (featurize images; resumable) or :meth:`write` (any ``(id, RegionFeatures)``
    records, e.g. from the readers in :mod:`mm_sbert.image_features.precomputed`). Read it with ``store[image_id]``
    (a :class:`RegionFeatures`) or :meth:`get_many`, and pass those straight to ``model.encode`` /
    ``cross_encoder.predict``: the model passes :class:`RegionFeatures` through untouched.

    Opening checks the manifest's format and version, that every shard file it names lies inside the folder, and
    each file's size and cheap checksum (SHA-256 of the size + first and last MiB: every byte of files up to 2 MiB),
    so a truncated, swapped or edited shard is refused with :class:`~mm_sbert.errors.StorageError` (also known as
    :class:`FeatureStoreError`); ``verify=True`` also checks every file's full SHA-256.

    Args:
        path: the store's folder.
        verify: also recompute every file's full sha256 (reads the whole store).

    Example:
        >>> store = FeatureStore.build("coco_features", image_paths, featurizer=MobileNetV2GridFeaturizer())
        >>> store = FeatureStore("coco_features")           # later, in another process
        >>> embeddings = model.encode(store.get_many(["000000000790", "000000030752"]))
    """

    def __init__(self, path: str | os.PathLike, verify: bool = False) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise FeatureStoreError(f"No feature store at '{self.path}': {MANIFEST_NAME} is missing")
        self.manifest = read_manifest(manifest_path, STORE_FORMAT, SUPPORTED_VERSIONS)
        checked = validate_data(_StoreManifest, self.manifest, manifest_path, "feature store manifest", StorageError)
        self.feature_dim: int = checked.feature_dim
        self.dtype: str = checked.dtype
        self.failed: dict[str, str] = dict(checked.failed)
        self.complete: bool = checked.complete
        self._paths = self._check_files(verify)
        self._ids: list[ImageId] = []
        self._index: dict[str, tuple[int, int]] = {}
        self._labels: list[list[list[str] | None]] = []
        # Per shard: each image's (tags, tag scores), or None for shards written without tags.
        self._tags: list[list[tuple[list[str], list[float] | None] | None] | None] = []
        for shard_number, (paths, shard) in enumerate(zip(self._paths, checked.shards)):
            meta = read_json_schema(paths["meta.json"], _ShardMeta, "feature store shard list", StorageError)
            if len(meta.ids) != shard.num_images or len(meta.labels) != shard.num_images:
                raise StorageError(
                    f"'{paths['meta.json']}' lists {len(meta.ids)} ids and {len(meta.labels)} label lists, but the "
                    f"manifest says the shard holds {shard.num_images} images; the store is corrupt"
                )
            self._check_arrays(paths, shard)
            for local, image_id in enumerate(meta.ids):
                key = _key(image_id)
                if key in self._index:
                    raise FeatureStoreError(f"The feature store '{self.path}' lists the image id {image_id!r} twice")
                self._index[key] = (shard_number, local)
                self._ids.append(image_id)
            self._labels.append(meta.labels)
            self._tags.append(_read_tags({"tags": meta.tags}, len(meta.ids), paths["meta.json"]))
        self._arrays: dict[int, dict[str, np.ndarray]] = {}
        if not self.complete:
            warnings.warn(
                f"The feature store '{self.path}' is incomplete (its featurization was interrupted); it serves the "
                f"{len(self._ids)} images written so far. Run FeatureStore.build again to finish it.",
                stacklevel=2,
            )

    def _check_files(self, verify: bool) -> list[dict[str, Path]]:
        """Every shard's files, checked against the manifest; returns their resolved paths, per shard."""
        paths = []
        for shard in self.manifest["shards"]:
            files = shard["files"]
            paths.append(
                {
                    suffix: verify_file(self.path, f"{shard['name']}.{suffix}", expected, full=verify)
                    for suffix, expected in files.items()
                }
            )
        return paths

    def _check_arrays(self, paths: dict[str, Path], shard: _ShardEntry) -> None:
        """The shard's arrays agree with each other and with the manifest: shapes, dtypes and region offsets (each
        image's regions lie inside the features, in order), so no image reads another's regions or past the end."""
        images, regions = shard.num_images, shard.num_regions
        expected = {
            "features.npy": ((regions, self.feature_dim), np.dtype(self.dtype)),
            "boxes.npy": ((regions, 4), np.dtype(np.float32)),
            "offsets.npy": ((images + 1,), np.dtype(np.int64)),
            "sizes.npy": ((images, 2), np.dtype(np.int32)),
        }
        for name, (shape, dtype) in expected.items():
            found_shape, found_dtype = _npy_header(paths[name])
            if found_shape != shape or found_dtype != dtype:
                raise StorageError(
                    f"'{paths[name]}' holds a {found_dtype} array of shape {found_shape}, but the manifest describes "
                    f"{dtype} {shape}; the store is corrupt"
                )
        offsets = np.load(paths["offsets.npy"], allow_pickle=False)
        if offsets[0] != 0 or offsets[-1] != regions or (np.diff(offsets) < 0).any():
            raise StorageError(
                f"'{paths['offsets.npy']}' does not split the shard's {regions} regions among its {images} images "
                "(offsets must start at 0, never decrease and end at the number of regions); the store is corrupt"
            )

    # ------------------------------------------------------------------ reading

    def _shard_arrays(self, shard_number: int) -> dict[str, np.ndarray]:
        arrays = self._arrays.get(shard_number)
        if arrays is None:
            paths = self._paths[shard_number]
            arrays = {
                part: np.load(paths[f"{part}.npy"], mmap_mode="r", allow_pickle=False)
                for part in ("features", "boxes", "offsets", "sizes")
            }
            self._arrays[shard_number] = arrays
        return arrays

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get the index, not copies of the mapped arrays: each worker maps the files itself.
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, image_id: object) -> bool:
        try:
            return _key(image_id) in self._index
        except TypeError:
            return False

    def __iter__(self) -> Iterator[ImageId]:
        return iter(self._ids)

    @property
    def ids(self) -> list[ImageId]:
        """Image ids in storage order."""
        return list(self._ids)

    def __getitem__(self, image_id: ImageId) -> RegionFeatures:
        key = _key(image_id)
        location = self._index.get(key)
        if location is None:
            if key in self.failed:
                raise UnknownIdError(
                    f"Image id {image_id!r} is not in the feature store '{self.path}': featurizing it failed "
                    f"({self.failed[key]})"
                )
            examples = ", ".join(repr(i) for i in self._ids[:3])
            raise UnknownIdError(
                f"Unknown image id {image_id!r} for the feature store '{self.path}' ({len(self)} images, ids like "
                f"{examples}); ids are matched as strings, e.g. 42 and '42' are the same but '0042' is not"
            )
        shard_number, local = location
        arrays = self._shard_arrays(shard_number)
        start, end = int(arrays["offsets"][local]), int(arrays["offsets"][local + 1])
        width, height = (int(v) for v in arrays["sizes"][local])
        shard_tags = self._tags[shard_number]
        tags, tag_scores = (shard_tags[local] or (None, None)) if shard_tags is not None else (None, None)
        return RegionFeatures(
            torch.from_numpy(np.array(arrays["features"][start:end])),
            torch.from_numpy(np.array(arrays["boxes"][start:end])),
            image_size=(width, height) if width > 0 else None,
            labels=self._labels[shard_number][local],
            tags=tags,
            tag_scores=tag_scores,
        )

    def get_many(self, image_ids: Iterable[ImageId]) -> list[RegionFeatures]:
        """``[store[i] for i in image_ids]``: a list ready for ``model.encode``."""
        return [self[image_id] for image_id in image_ids]

    def check_compatible(self, model: Any) -> None:
        """Raise a clear error when ``model`` (a MultimodalTransformer, or a model whose first module is one)
        expects region features of another width than this store holds."""
        module = model
        if not hasattr(module, "region_feature_dim"):
            try:
                module = model[0]
            except (TypeError, IndexError, KeyError):
                module = None
        expected = getattr(module, "region_feature_dim", None)
        if expected is None:
            raise InvalidInputTypeError(
                f"{type(model).__name__} is not a MultimodalTransformer (nor a model built on one)"
            )
        if expected != self.feature_dim:
            raise FeatureStoreError(
                f"The feature store '{self.path}' holds {self.feature_dim}-d region features, but the model expects "
                f"region_feature_dim={expected}. Featurize the images with the model's featurizer "
                f"({getattr(module, 'featurizer', None)!r}) into a new store, or use a model built for "
                f"{self.feature_dim}-d features."
            )
        self.check_featurizer(getattr(module, "featurizer", None))

    def check_featurizer(self, featurizer: ImageFeaturizer | None) -> None:
        """Raise :class:`FeatureStoreError` when the store was not built by a featurizer with ``featurizer``'s
        settings (a model would see other regions from the store than from new images); no check for imported
        features or a model without a featurizer."""
        recorded = self.featurizer_config
        if recorded is None or featurizer is None:
            return
        current = _featurizer_identity(featurizer)
        if not _same_featurizer(recorded, current):

            def settings(entry: dict[str, Any]) -> dict[str, Any]:
                return {key: value for key, value in entry["config"].items() if key not in _RUNTIME_KEYS}

            raise FeatureStoreError(
                f"The feature store '{self.path}' was built by {recorded['type']}({settings(recorded)}), but the "
                f"model featurizes images with {current['type']}({settings(current)}); use a store built with the "
                "model's featurizer (`mm-sbert featurize --model MODEL ...`) or a model built on the store's "
                "featurizer"
            )

    @property
    def featurizer_config(self) -> dict[str, Any] | None:
        """The ``{"type", "config"}`` of the featurizer that built the store (None for imported features)."""
        return self.manifest.get("featurizer")

    def __repr__(self) -> str:
        return (
            f"FeatureStore('{self.path}', images={len(self)}, feature_dim={self.feature_dim}, dtype={self.dtype}, "
            f"failed={len(self.failed)}, complete={self.complete})"
        )

    # ------------------------------------------------------------------ writing

    @classmethod
    def write(
        cls,
        path: str | os.PathLike,
        records: Iterable[tuple[ImageId, RegionFeatures]],
        dtype: StoreDtype = "float32",
        shard_size: int = 1024,
        show_progress_bar: bool = True,
    ) -> FeatureStore:
        """Write ``(image_id, RegionFeatures)`` records (e.g. imported precomputed features) into a store.

        Resumable like :meth:`build`: records whose id a store at ``path`` already holds (written by an earlier,
        perhaps interrupted, call) are skipped, and a warning says how many; stored records are never replaced
        (write to a new folder for that). An id that comes twice in ``records`` is refused.

        Raises:
            FeatureStoreError: an id repeats within ``records``, or a record does not fit the store. What was
                written before it stays stored (the store is marked incomplete).
        """
        with _StoreWriter.open(path, [], dtype=dtype, shard_size=shard_size, featurizer_config=None) as writer:
            skipped = cls._write_records(writer, path, records, show_progress_bar)
        if skipped:
            warnings.warn(
                f"{len(skipped)} record(s) were not written because the store '{path}' already holds their ids "
                f"(e.g. {skipped[:3]}); stored records are kept, not replaced. Write to a new folder to replace them.",
                stacklevel=2,
            )
        return cls(path)

    @staticmethod
    def _write_records(
        writer: _StoreWriter, path: Any, records: Iterable[tuple[ImageId, RegionFeatures]], show_progress_bar: bool
    ) -> list[str]:
        stored_before = set(writer.done)
        seen: set[str] = set()
        skipped = []
        with writer.keeping_finished_work():
            for image_id, regions in tqdm(
                records, desc="Writing features", unit="image", disable=not show_progress_bar
            ):
                key = _key(image_id)
                if key in seen:
                    raise FeatureStoreError(
                        f"The image id {image_id!r} comes twice in the records written to '{path}'; each id is "
                        "stored once, so the second record would be lost"
                    )
                seen.add(key)
                if key in stored_before:
                    skipped.append(key)
                else:
                    writer.add(image_id, regions)
        return skipped

    @classmethod
    def build(
        cls,
        path: str | os.PathLike,
        images: Sequence[str | os.PathLike | Image.Image],
        featurizer: ImageFeaturizer,
        ids: Sequence[ImageId] | None = None,
        batch_size: int = 32,
        shard_size: int = 1024,
        dtype: StoreDtype = "float32",
        show_progress_bar: bool = True,
        processes: int = 1,
    ) -> FeatureStore:
        """Featurize a collection once into a store at ``path`` and open it.

        Every ``shard_size`` images are written as one shard followed by the manifest (both atomically). When the
        run stops early (Ctrl-C / ``KeyboardInterrupt``, or an error of the featurizer) the images finished so far are
        written as a last, smaller shard before the exception propagates, so nothing finished is lost; a ``kill -9``
        loses at most the shard in progress. Calling ``build`` again with the same arguments skips the images already
        stored and continues. Images that cannot be read (missing or corrupt files, or bigger than Pillow's
        decompression-bomb limit) are skipped, reported in a warning by file and listed in ``store.failed``
        (id -> reason); a later ``build`` retries them.

        Args:
            path: the store's folder (created).
            images: image paths or PIL images.
            featurizer: the featurizer; a resumed run must use one with the same settings.
            ids: one id per image (int or str); default: the file name without extension (paths only).
            batch_size: images per featurizer call.
            shard_size: images per shard (the unit of resumption).
            dtype: ``"float16"`` halves the disk / page-cache footprint (features only; boxes stay float32).
            show_progress_bar: show a tqdm bar over the images.
            processes: featurize in this many worker processes (each reads and featurizes whole batches; this
                process writes their results in order, so the store is the one a single process writes). Each
                worker gets an equal share of this process's torch threads (at least one).
        """
        batch_size = _positive_int(batch_size, "batch_size")
        shard_size = _positive_int(shard_size, "shard_size")
        processes = _positive_int(processes, "processes")
        ids = cls._default_ids(images, ids)
        config = _featurizer_identity(featurizer)
        inputs = [image for image in images if isinstance(image, (str, os.PathLike))]
        with _StoreWriter.open(path, inputs, dtype=dtype, shard_size=shard_size, featurizer_config=config) as writer:
            failed = cls._featurize_into(
                writer, path, images, ids, featurizer, batch_size, show_progress_bar, processes
            )
        if failed:
            listed = "; ".join(f"{key}: {reason}" for key, reason in list(failed.items())[:5])
            warnings.warn(
                f"{len(failed)} of {len(images)} images could not be read and are not in the store '{path}' "
                f"(see store.failed): {listed}{' ...' if len(failed) > 5 else ''}",
                stacklevel=2,
            )
        return cls(path)

    @staticmethod
    def _featurize_into(
        writer: _StoreWriter,
        path: Any,
        images: Sequence[Any],
        ids: Sequence[ImageId],
        featurizer: ImageFeaturizer,
        batch_size: int,
        show_progress_bar: bool,
        processes: int = 1,
    ) -> dict[str, str]:
        if writer.feature_dim is not None and writer.feature_dim != featurizer.feature_dim:
            raise FeatureStoreError(
                f"The store at '{path}' holds {writer.feature_dim}-d features; {featurizer!r} yields "
                f"{featurizer.feature_dim}-d"
            )
        pending = [(image_id, image) for image_id, image in zip(ids, images) if _key(image_id) not in writer.done]
        batches = [pending[start : start + batch_size] for start in range(0, len(pending), batch_size)]
        failed: dict[str, str] = {}
        with (
            tqdm(total=len(pending), desc="Featurizing images", unit="image", disable=not show_progress_bar) as bar,
            writer.keeping_finished_work(),
            _batch_featurizer(featurizer, min(processes, len(batches))) as featurize_batches,
        ):
            for batch, (results, failures) in zip(batches, featurize_batches(batches)):
                for image_id, reason in failures:
                    failed[_key(image_id)] = reason
                    writer.fail(image_id, reason)
                for image_id, regions in results:
                    writer.add(image_id, regions)
                bar.update(len(batch))
        return failed

    @staticmethod
    def _default_ids(images: Sequence[Any], ids: Sequence[ImageId] | None) -> list[ImageId]:
        if ids is None:
            if not all(isinstance(image, (str, os.PathLike)) for image in images):
                raise InvalidInputError("FeatureStore.build needs ids=... when the images are not all file paths")
            ids = [Path(image).stem for image in images]
        ids = list(ids)
        if len(ids) != len(images):
            raise InvalidInputError(f"FeatureStore.build got {len(images)} images but {len(ids)} ids")
        keys = [_key(image_id) for image_id in ids]
        if len(set(keys)) != len(keys):
            seen, duplicates = set(), []
            for key in keys:
                if key in seen:
                    duplicates.append(key)
                seen.add(key)
            raise InvalidInputError(f"Image ids must be unique; duplicated: {duplicates[:5]}")
        return ids


def _read_tags(
    meta: dict[str, Any], count: int, path: Path
) -> list[tuple[list[str], list[float] | None] | None] | None:
    """A shard's ``tags`` entry (``[tags, scores]`` or null per image); None when the shard has none."""
    tags = meta.get("tags")
    if tags is None:
        return None
    if not isinstance(tags, list) or len(tags) != count:
        raise FeatureStoreError(
            f"'{path}' lists tags for {len(tags) if isinstance(tags, list) else 'no'} of its {count} images; "
            "the store is corrupt"
        )
    entries = []
    for entry in tags:
        if entry is not None and not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list)):
            raise FeatureStoreError(f"'{path}' holds a malformed tags entry {entry!r:.100}; the store is corrupt")
        entries.append(None if entry is None else (entry[0], entry[1]))
    return entries


class _StoreWriter:
    """Appends shards to a (possibly partly written) store and rewrites the manifest after each one."""

    @classmethod
    @contextlib.contextmanager
    def open(
        cls,
        path: str | os.PathLike,
        inputs: Sequence[str | os.PathLike],
        dtype: StoreDtype,
        shard_size: int,
        featurizer_config: dict[str, Any] | None,
    ) -> Iterator[_StoreWriter]:
        """The writer of the store at ``path``, once the path may be written (a new or empty folder, or a store;
        never an input nor a folder of the user's) and while this process alone writes it."""
        target = check_output_path(path, OWNED_KIND, folder=True, inputs=inputs, what="The feature store")
        with exclusive_output(target, what="The feature store"):
            yield cls(target, dtype=dtype, shard_size=shard_size, featurizer_config=featurizer_config)

    def __init__(
        self, path: Path, dtype: StoreDtype, shard_size: int, featurizer_config: dict[str, Any] | None
    ) -> None:
        if dtype not in ("float32", "float16"):
            raise InvalidInputError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        shard_size = _positive_int(shard_size, "shard_size")
        self.path = path
        self.shard_size = shard_size
        self.buffer: list[tuple[ImageId, RegionFeatures]] = []
        path.mkdir(parents=True, exist_ok=True)
        # We hold the lock: temporary files in the folder are a killed writer's, never another live one's.
        for pattern in OWNED_PATTERNS:
            if ".tmp-" in pattern:
                for leftover in path.glob(pattern):
                    leftover.unlink()
        mark_owned_folder(path, OWNED_KIND, patterns=OWNED_PATTERNS)
        manifest_path = path / MANIFEST_NAME
        if manifest_path.is_file():
            # Opening validates every file's size: never append to a damaged store.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "incomplete store" is expected here: that is what we resume
                existing = FeatureStore(path)
            self.manifest = existing.manifest
            if self.manifest["dtype"] != dtype:
                raise FeatureStoreError(
                    f"The store at '{path}' was started with dtype={self.manifest['dtype']!r}, not {dtype!r}"
                )
            if not _same_featurizer(self.manifest.get("featurizer"), featurizer_config):
                raise FeatureStoreError(
                    f"The store at '{path}' was built with the featurizer {self.manifest.get('featurizer')}, not "
                    f"{featurizer_config}; resume with the same featurizer or write to a new folder"
                )
            self.done = {_key(image_id) for image_id in existing.ids}
            self.manifest["version"] = STORE_VERSION  # the new shards carry version-2 records; old ones still read
        else:
            self.manifest = {
                "format": STORE_FORMAT,
                "version": STORE_VERSION,
                "feature_dim": None,
                "dtype": dtype,
                "featurizer": featurizer_config,
                "shards": [],
                "failed": {},
                "complete": False,
            }
            self.done = set()
        self.manifest["complete"] = False

    @property
    def feature_dim(self) -> int | None:
        return self.manifest["feature_dim"]

    def add(self, image_id: ImageId, regions: RegionFeatures) -> None:
        if not isinstance(regions, RegionFeatures):
            raise InvalidInputTypeError(f"Image {image_id!r}: expected RegionFeatures, got {type(regions).__name__}")
        if self.manifest["feature_dim"] is None:
            self.manifest["feature_dim"] = regions.feature_dim
        elif regions.feature_dim != self.manifest["feature_dim"]:
            raise FeatureStoreError(
                f"Image {image_id!r} has {regions.feature_dim}-d features but the store at '{self.path}' holds "
                f"{self.manifest['feature_dim']}-d ones"
            )
        key = _key(image_id)
        self.manifest["failed"].pop(key, None)
        self.done.add(key)
        # numpy integers are not JSON-serialisable; the id list goes into the shard's meta.json
        self.buffer.append((int(image_id) if isinstance(image_id, np.integer) else image_id, regions))
        if len(self.buffer) >= self.shard_size:
            self.flush()

    def fail(self, image_id: ImageId, reason: str) -> None:
        self.manifest["failed"][_key(image_id)] = reason

    def flush(self) -> None:
        if not self.buffer:
            return
        dtype = np.float16 if self.manifest["dtype"] == "float16" else np.float32
        counts = [regions.num_regions for _, regions in self.buffer]
        feature_dim = self.manifest["feature_dim"]
        arrays = {
            "features": np.concatenate(
                [np.zeros((0, feature_dim), dtype)]
                + [r.features.float().numpy().astype(dtype) for _, r in self.buffer]
            ),
            "boxes": np.concatenate(
                [np.zeros((0, 4), np.float32)] + [r.boxes.numpy().astype(np.float32) for _, r in self.buffer]
            ),
            "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            "sizes": np.array([r.image_size or (-1, -1) for _, r in self.buffer], dtype=np.int32).reshape(-1, 2),
        }
        meta = {"ids": [image_id for image_id, _ in self.buffer], "labels": [r.labels for _, r in self.buffer]}
        if any(r.tags for _, r in self.buffer):
            # Whole-image words (RegionFeatures.tags), stored only where some image has them.
            meta["tags"] = [[r.tags, r.tag_scores] if r.tags else None for _, r in self.buffer]
        contents = {f"{part}.npy": _npy_bytes(array) for part, array in arrays.items()}
        contents["meta.json"] = json.dumps(meta).encode("utf-8")
        name = f"shard-{len(self.manifest['shards']):05d}"
        for suffix, data in contents.items():
            atomic_write_bytes(self.path / f"{name}.{suffix}", data)
        self.manifest["shards"].append(
            {
                "name": name,
                "num_images": len(self.buffer),
                "num_regions": int(sum(counts)),
                "files": {suffix: bytes_record(data) for suffix, data in contents.items()},
            }
        )
        self.buffer = []
        self._write_manifest()

    def _write_manifest(self) -> None:
        atomic_write_bytes(self.path / MANIFEST_NAME, json.dumps(self.manifest, indent=1).encode("utf-8"))

    def close(self) -> None:
        self.flush()
        self.manifest["complete"] = True
        self._write_manifest()

    @contextlib.contextmanager
    def keeping_finished_work(self) -> Iterator[None]:
        """Close the store when the block ends; when it stops early (Ctrl-C, an error) write what was finished as a
        last shard, leave the store marked incomplete (a rerun resumes) and let the exception through."""
        try:
            yield
        except BaseException:
            try:
                self.flush()
            except Exception as flush_error:  # noqa: BLE001 - the original exception is the one to report
                warnings.warn(f"Could not save the finished images of '{self.path}': {flush_error}", stacklevel=3)
            raise
        self.close()


def _featurize_batch(
    featurizer: ImageFeaturizer, batch: Sequence[tuple[ImageId, Any]]
) -> tuple[list[tuple[ImageId, RegionFeatures]], list[tuple[ImageId, str]]]:
    """Read and featurize one batch: ``(id, regions)`` of the images read, ``(id, reason)`` of those that failed."""
    loaded_ids, loaded, failures = [], [], []
    for image_id, image in batch:
        try:
            loaded.append(load_image(image))
            loaded_ids.append(image_id)
        except ImageLoadError as exc:
            failures.append((image_id, str(exc)))
    if not loaded:
        return [], failures
    results = featurizer.featurize(loaded)
    if len(results) != len(loaded):
        raise RuntimeError(f"{featurizer!r} returned {len(results)} results for {len(loaded)} images")
    return list(zip(loaded_ids, results)), failures


_worker_featurizer: ImageFeaturizer | None = None


def _start_worker(featurizer: ImageFeaturizer, threads: int) -> None:
    import signal

    global _worker_featurizer
    # Ctrl-C reaches the whole process group: the parent stops the pool and keeps the finished work.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    _worker_featurizer = featurizer


def _featurize_batch_in_worker(batch: Sequence[tuple[ImageId, Any]]) -> Any:
    return _featurize_batch(_worker_featurizer, batch)


@contextlib.contextmanager
def _batch_featurizer(featurizer: ImageFeaturizer, processes: int) -> Iterator[Any]:
    """A function from batches to their results, in order: here, or in ``processes`` worker processes."""
    if processes <= 1:
        yield lambda batches: (_featurize_batch(featurizer, batch) for batch in batches)
        return
    import multiprocessing
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    try:
        pickle.dumps(featurizer)
    except (pickle.PicklingError, TypeError, AttributeError) as error:
        raise InvalidInputError(
            f"processes={processes} sends the featurizer to worker processes, but {featurizer!r} cannot be pickled "
            f"({error}); featurize with processes=1"
        ) from error
    # This process's threads (the policy's, or an explicit --threads) shared among the workers.
    threads = max(1, torch.get_num_threads() // processes)
    # spawn: a forked copy of a process that has run torch's thread pools can hang.
    pool = ProcessPoolExecutor(
        processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(featurizer, threads),
    )
    try:
        yield lambda batches: pool.map(_featurize_batch_in_worker, batches)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
