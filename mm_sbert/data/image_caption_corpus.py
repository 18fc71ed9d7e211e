"""Image-caption corpora (COCO, Karpathy splits, Flickr8k, any ``datasets.Dataset``) for training and evaluation."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm_sbert.errors import InvalidFileError, MissingFileError, MMSbertError
from mm_sbert.image_features.region_features import RegionFeatures


def _names_the_file(reader: Callable[..., ImageCaptionCorpus]) -> Callable[..., ImageCaptionCorpus]:
    """A caption-file reader whose every failure on the file's content is an InvalidFileError naming the file (a
    wrong type or a missing key must not surface as a raw KeyError / TypeError naming nothing)."""

    @functools.wraps(reader)
    def read(cls: type[ImageCaptionCorpus], path: str, *args: Any, **kwargs: Any) -> ImageCaptionCorpus:
        try:
            return reader(cls, path, *args, **kwargs)
        except MMSbertError:
            raise
        except FileNotFoundError as exc:
            raise MissingFileError(str(exc)) from None
        except (KeyError, TypeError, AttributeError, IndexError, ValueError, OSError) as exc:
            detail = str(exc) if str(path) in str(exc) else f"{type(exc).__name__}: {exc}"
            raise InvalidFileError(
                f"The caption file '{path}' is not in the layout {reader.__name__} reads: {detail}"
            ) from None

    return read


@dataclass
class ImageCaptionCorpus:
    """Images with several captions each, the shape every retrieval corpus here is read into.

    ``images[k]`` has the id ``image_ids[k]``; caption ``j`` describes the image with id ``caption_image_ids[j]``.
    The training rows built from it (:meth:`to_dataset`) carry that id as ``label``, so the in-batch losses never
    treat another caption of the same image, or a second copy of it, as a negative.

    Build one with a reader (:meth:`from_coco_json`, :meth:`from_karpathy_json`, :meth:`from_flickr8k_jsonl`,
    :meth:`from_dataset`) or directly from lists.

    Args:
        images: one entry per image: an image path, a PIL image or a :class:`RegionFeatures`.
        image_ids: one distinct int id per image.
        captions: all captions.
        caption_image_ids: for each caption, the id of its image.

    Example:
        >>> corpus = ImageCaptionCorpus.from_coco_json("coco/captions_train2017.json", image_dir="coco/train2017")
        >>> train_dataset = corpus.to_dataset()  # columns caption, image, label; one row per caption
        >>> images, captions, caption_image_ids = corpus.evaluation_data()
    """

    images: list[Any]
    image_ids: list[int]
    captions: list[str]
    caption_image_ids: list[int]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.image_ids):
            raise ValueError(f"Got {len(self.images)} images but {len(self.image_ids)} image ids")
        if len(self.captions) != len(self.caption_image_ids):
            raise ValueError(f"Got {len(self.captions)} captions but {len(self.caption_image_ids)} caption image ids")
        if len(set(self.image_ids)) != len(self.image_ids):
            raise ValueError("image_ids must be distinct: one id per image")
        unknown = set(self.caption_image_ids) - set(self.image_ids)
        if unknown:
            raise ValueError(f"Captions refer to image ids that are not in the corpus: {sorted(unknown)[:10]}")

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def num_images(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"ImageCaptionCorpus({self.num_images} images, {len(self.captions)} captions)"

    # ------------------------------------------------------------------ views

    def to_dataset(self) -> Any:
        """A ``datasets.Dataset`` with one row per caption: ``caption`` (str), ``image``, ``label`` (the image id).

        The ``image`` column holds the image path where the corpus has paths (light and picklable; the model's
        featurizer loads it in the collator), else PIL images (stored by ``datasets`` as encoded bytes).
        """
        from datasets import Dataset, Features, Value
        from datasets import Image as ImageFeature

        position = {image_id: index for index, image_id in enumerate(self.image_ids)}
        rows = [self.images[position[image_id]] for image_id in self.caption_image_ids]
        if all(isinstance(image, str) for image in self.images):
            image_feature: Any = Value("string")
        elif any(isinstance(image, RegionFeatures) for image in self.images):
            raise ValueError(
                "A training Dataset cannot hold RegionFeatures; use image paths (with a featurizer or a feature store)"
            )
        else:
            image_feature = ImageFeature()
        features = Features({"caption": Value("string"), "image": image_feature, "label": Value("int64")})
        return Dataset.from_dict(
            {"caption": list(self.captions), "image": rows, "label": list(self.caption_image_ids)}, features=features
        )

    def evaluation_data(self) -> tuple[list[Any], list[str], list[int]]:
        """``(images, captions, caption_image_ids)`` for :class:`~mm_sbert.evaluation.ImageTextRetrievalEvaluator`.

        ``caption_image_ids[j]`` is the *position* in ``images`` of caption ``j``'s image (image ids may be COCO
        ids; the evaluator indexes images by position).
        """
        position = {image_id: index for index, image_id in enumerate(self.image_ids)}
        return list(self.images), list(self.captions), [position[image_id] for image_id in self.caption_image_ids]

    def select_images(self, indices: Iterable[int]) -> ImageCaptionCorpus:
        """The sub-corpus of the images at these positions, with all their captions (e.g. a 1k test split)."""
        indices = list(indices)
        keep = {self.image_ids[index] for index in indices}
        pairs = [(c, i) for c, i in zip(self.captions, self.caption_image_ids) if i in keep]
        return ImageCaptionCorpus(
            images=[self.images[index] for index in indices],
            image_ids=[self.image_ids[index] for index in indices],
            captions=[caption for caption, _ in pairs],
            caption_image_ids=[image_id for _, image_id in pairs],
        )

    def image_part(self, part: int, parts: int) -> ImageCaptionCorpus:
        """The sub-corpus of the images in part ``part`` (1-based) of ``parts``, with all their captions.

        The split is fixed by each image's name: an image path's file name without extension (a feature store's
        id for it), else the image id, hashed. The same image lands in the same part in every corpus and every run,
        whether it is given as a path or read from a store, so two parts of one corpus never share an image. This
        is what cross-fitting needs: a bi-encoder trained on part 1 mines the cross-encoder's negatives on part 2,
        images it has not memorised, the kind of near miss it hands the cross-encoder on unseen queries.

        Args:
            part: which part, 1 to ``parts``.
            parts: how many parts (>= 2).

        Raises:
            ValueError: ``part`` outside 1..``parts``, or the part holds no image.
        """
        if parts < 2 or not 1 <= part <= parts:
            raise ValueError(f"The image part must be between 1 and the number of parts (>= 2), got {part}/{parts}")
        chosen = [
            index
            for index, (image, image_id) in enumerate(zip(self.images, self.image_ids))
            if _part_of(image, image_id, parts) == part - 1
        ]
        if not chosen:
            raise ValueError(f"Image part {part}/{parts} of this corpus of {self.num_images} images holds no image")
        return self.select_images(chosen)

    # ------------------------------------------------------------------ readers

    @classmethod
    def from_pairs(cls, images: Sequence[Any], captions: Sequence[Sequence[str] | str]) -> ImageCaptionCorpus:
        """From parallel lists: ``images[k]`` and its caption(s) ``captions[k]`` (one string or a list); ids 0..N-1."""
        if len(images) != len(captions):
            raise ValueError(f"Got {len(images)} images but {len(captions)} caption entries")
        all_captions, caption_image_ids = [], []
        for image_id, entry in enumerate(captions):
            entry = [entry] if isinstance(entry, str) else list(entry)
            all_captions.extend(entry)
            caption_image_ids.extend([image_id] * len(entry))
        return cls(list(images), list(range(len(images))), all_captions, caption_image_ids)

    @classmethod
    @_names_the_file
    def from_coco_json(
        cls, path: str, image_dir: str | None = None, max_images: int | None = None
    ) -> ImageCaptionCorpus:
        """Read a COCO captions file (``images[].id/file_name``, ``annotations[].image_id/caption``).

        Args:
            path: e.g. ``annotations/captions_train2017.json``.
            image_dir: folder of the image files; default: ``images/`` beside the JSON if it exists, else the JSON's
                folder.
            max_images: keep only the first images (in the file's order), e.g. for a quick run.
        """
        data = _read_json(path, required=("images", "annotations"), layout="COCO captions")
        image_dir = image_dir or _default_image_dir(path)
        entries = data["images"][:max_images] if max_images else data["images"]
        images = [os.path.join(image_dir, entry["file_name"]) for entry in entries]
        image_ids = [int(entry["id"]) for entry in entries]
        position = {image_id: index for index, image_id in enumerate(image_ids)}
        # Captions in image order, so caption j of evaluation_data() lines up with the images.
        annotations = sorted(
            (a for a in data["annotations"] if a["image_id"] in position),
            key=lambda a: (position[a["image_id"]], a.get("id", 0)),
        )
        captions = [a["caption"].strip() for a in annotations]
        return cls(images, image_ids, captions, [int(a["image_id"]) for a in annotations])

    @classmethod
    @_names_the_file
    def from_karpathy_json(
        cls,
        path: str,
        image_root: str | None = None,
        split: str | Sequence[str] = "train",
        max_images: int | None = None,
    ) -> ImageCaptionCorpus:
        """Read a Karpathy split file (``dataset_coco.json`` / ``dataset_flickr30k.json``).

        Args:
            path: the JSON (``images[].filename``, optional ``filepath``, ``split``, ``sentences[].raw``).
            image_root: folder the ``filepath/filename`` paths are relative to; default: the JSON's folder.
            split: one split name or several, e.g. ``("train", "restval")`` for the usual COCO training set;
                ``"test"`` gives the 5k (COCO) / 1k (Flickr30k) test images.
            max_images: keep only the first images of the split.
        """
        data = _read_json(path, required=("images",), layout="Karpathy split")
        splits = {split} if isinstance(split, str) else set(split)
        image_root = image_root or os.path.dirname(os.path.abspath(path))
        entries = [entry for entry in data["images"] if entry.get("split") in splits]
        if not entries:
            found = sorted({str(entry.get("split")) for entry in data["images"]})
            raise ValueError(f"{path} has no images in split {sorted(splits)}; its splits are {found}")
        if max_images:
            entries = entries[:max_images]
        images, image_ids, captions, caption_image_ids = [], [], [], []
        for index, entry in enumerate(entries):
            image_id = int(entry.get("cocoid", entry.get("imgid", index)))
            images.append(os.path.join(image_root, entry.get("filepath", ""), entry["filename"]))
            image_ids.append(image_id)
            for sentence in entry["sentences"]:
                captions.append(sentence["raw"].strip())
                caption_image_ids.append(image_id)
        return cls(images, image_ids, captions, caption_image_ids)

    @classmethod
    @_names_the_file
    def from_file(
        cls, path: str | os.PathLike, caption_key: str = "en", check_images: bool = True
    ) -> ImageCaptionCorpus:
        """Read any caption file the package documents, told apart by its suffix and content; the one reader every
        command (``train``, ``evaluate``, ...) and example uses, so a file one of them reads, all of them read.

        - ``.csv`` / ``.tsv``: one caption a row, columns ``caption`` and ``image``;
        - ``.jsonl``: one caption a line (``{"caption": "...", "image": "..."}``) or one image a line with a list of
          captions under ``caption_key`` (``{"image": "...", "en": ["...", ...]}``, the Flickr8k / Multi30k layout);
        - ``.json``: a COCO captions file or a Karpathy split file (its ``"train"`` split);
        - a folder: its ``captions.jsonl``.

        Relative image paths are relative to the file's folder. Every value is checked (a caption must be a string,
        a caption list a list of strings: a string where a list belongs is refused, not read one caption per
        character), and with ``check_images`` every image file must exist, so bad data fails before any model loads.

        Raises:
            FileNotFoundError: no such file, or (``check_images``) an image it lists is missing.
            ValueError: the file is not in one of the layouts, or a value has the wrong type; the message names the
                file, the line or row, and the field.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "captions.jsonl")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No caption file at {path}")
        suffix = Path(path).suffix.lower()
        if suffix in (".csv", ".tsv"):
            corpus = cls._from_caption_rows(path, _read_csv_rows(path, delimiter="\t" if suffix == ".tsv" else ","))
        elif suffix == ".jsonl":
            rows = _read_jsonl_rows(path)
            if "caption" in rows[0][1]:
                corpus = cls._from_caption_rows(path, rows)
            else:
                corpus = cls.from_flickr8k_jsonl(path, language=caption_key)
        elif suffix == ".json":
            with open(path, encoding="utf-8") as f:
                try:
                    head = json.load(f)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path} is not valid JSON: {error}") from None
            try:
                if isinstance(head, dict) and "annotations" in head:
                    corpus = cls.from_coco_json(path)
                else:
                    corpus = cls.from_karpathy_json(path)
            except (KeyError, TypeError, AttributeError) as error:
                # A field of the wrong type or missing deep inside the layout.
                raise ValueError(
                    f"{path}: not a valid COCO / Karpathy caption file ({type(error).__name__}: {error})"
                ) from None
        else:
            raise ValueError(
                f"{path}: unknown caption file type {suffix!r}; expected .csv, .tsv, .jsonl, .json or a folder with "
                "captions.jsonl"
            )
        if check_images:
            absent = [image for image in corpus.images if isinstance(image, str) and not os.path.isfile(image)]
            if absent:
                raise FileNotFoundError(
                    f"{len(absent)} image(s) listed in {path} do not exist, e.g. {absent[0]!r} (relative paths are "
                    "relative to the caption file's folder)"
                )
        return corpus

    @classmethod
    def _from_caption_rows(cls, path: str, rows: list[tuple[str, dict[str, Any]]]) -> ImageCaptionCorpus:
        """One caption a row (``caption``, ``image``), grouped by image in first-seen order; ids are positions."""
        missing = {"caption", "image"} - set(rows[0][1])
        if missing:
            raise ValueError(
                f"{path} lacks the column(s) {sorted(missing)}; found {sorted(rows[0][1])} (expected caption and "
                "image, or JSON lines with one image a line and a caption list)"
            )
        root = os.path.dirname(os.path.abspath(path))
        images: list[str] = []
        position: dict[str, int] = {}
        captions, caption_image_ids = [], []
        for where, row in rows:
            caption, image = row.get("caption"), row.get("image")
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(f"{path}:{where}: 'caption' must be a non-empty string, got {caption!r}")
            if not isinstance(image, str) or not image.strip():
                raise ValueError(f"{path}:{where}: 'image' must be a non-empty path string, got {image!r}")
            image = image if os.path.isabs(image) else os.path.join(root, image)
            if image not in position:
                position[image] = len(images)
                images.append(image)
            captions.append(caption.strip())
            caption_image_ids.append(position[image])
        return cls(images, list(range(len(images))), captions, caption_image_ids)

    @classmethod
    @_names_the_file
    def from_flickr8k_jsonl(cls, path: str, language: str = "en", max_images: int | None = None) -> ImageCaptionCorpus:
        """Read the ``captions.jsonl`` layout (one image a line: ``{"image": "images/x.jpg", "en": [...], ...}``).

        Args:
            path: the ``captions.jsonl`` file or the folder holding it.
            language: the caption key (``"en"``, ``"de"``, ``"fr"``, ``"cs"``, ``"de_independent"``); images without
                captions in that language are left out.
            max_images: keep only the first images.
        """
        if os.path.isdir(path):
            path = os.path.join(path, "captions.jsonl")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No captions file at {path} (expected a captions.jsonl, one image per line)")
        root = os.path.dirname(os.path.abspath(path))
        images, image_ids, captions, caption_image_ids = [], [], [], []
        with open(path, encoding="utf-8") as f:
            for line_number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                entry = _json_line(path, line_number, line)
                if not isinstance(entry.get("image"), str):
                    raise ValueError(f"{path}:{line_number}: 'image' must be a path string; keys: {sorted(entry)}")
                texts = entry.get(language) or []
                # A string is a list of characters to Python: one caption per character, and training "succeeds".
                if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
                    raise ValueError(
                        f"{path}:{line_number}: {language!r} must be a list of caption strings, got "
                        f"{type(texts).__name__} {texts!r:.60}"
                    )
                if not texts:
                    continue
                image_id = len(images)
                images.append(os.path.join(root, entry["image"]))
                image_ids.append(image_id)
                captions.extend(text.strip() for text in texts)
                caption_image_ids.extend([image_id] * len(texts))
                if max_images and len(images) >= max_images:
                    break
        if not images:
            raise ValueError(f"{path} has no image with captions in language {language!r}")
        return cls(images, image_ids, captions, caption_image_ids)

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        image_column: str = "image",
        caption_column: str = "caption",
        image_id_column: str | None = None,
    ) -> ImageCaptionCorpus:
        """Read a ``datasets.Dataset`` whose rows hold an image and either a list of captions or one caption.

        With one caption per row, rows of the same image are grouped by ``image_id_column`` when given, else by
        the image value itself (path strings, or identical image bytes), so repeated images get one id.
        """
        for column in (image_column, caption_column, image_id_column):
            if column is not None and column not in dataset.column_names:
                raise ValueError(f"The dataset has no column {column!r}; its columns are {dataset.column_names}")
        images, image_ids, captions, caption_image_ids = [], [], [], []
        key_to_id: dict[Any, int] = {}
        from datasets import Image as ImageFeature

        # Read images undecoded: grouping rows by image bytes is cheap, decoding every row is not.
        if isinstance(dataset.features.get(image_column), ImageFeature):
            dataset = dataset.cast_column(image_column, ImageFeature(decode=False))
        for row in dataset:
            image = row[image_column]
            key = row[image_id_column] if image_id_column else _image_key(image)
            if key not in key_to_id:
                key_to_id[key] = len(images)
                images.append(_decode_image(image))
                image_ids.append(key_to_id[key])
            entry = row[caption_column]
            entry = [entry] if isinstance(entry, str) else list(entry)
            captions.extend(entry)
            caption_image_ids.extend([key_to_id[key]] * len(entry))
        return cls(images, image_ids, captions, caption_image_ids)


def _json_line(path: str, line_number: int, line: str) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{line_number} is not valid JSON: {error}") from None
    if not isinstance(entry, dict):
        raise ValueError(f"{path}:{line_number} must hold a JSON object, got {type(entry).__name__}")
    return entry


def _read_jsonl_rows(path: str) -> list[tuple[str, dict[str, Any]]]:
    """``(line number, object)`` of every non-empty line; at least one."""
    with open(path, encoding="utf-8") as f:
        rows = [(str(number), _json_line(path, number, line)) for number, line in enumerate(f, 1) if line.strip()]
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows


def _read_csv_rows(path: str, delimiter: str) -> list[tuple[str, dict[str, Any]]]:
    """``("row N", row)`` of a CSV / TSV file with a header; at least one row."""
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        try:
            rows = [(f"row {number}", row) for number, row in enumerate(csv.DictReader(f, delimiter=delimiter), 2)]
        except (csv.Error, UnicodeDecodeError) as error:
            raise ValueError(
                f"{path} is not a readable {'TSV' if delimiter == chr(9) else 'CSV'} file: {error}"
            ) from None
    if not rows:
        raise ValueError(f"{path} holds no rows; expected a header with the columns caption and image")
    return rows


def _read_json(path: str, required: tuple[str, ...], layout: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {layout} JSON at {path}")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    missing = [key for key in required if key not in data]
    if not isinstance(data, dict) or missing:
        raise ValueError(f"{path} is not in the {layout} layout: missing top-level keys {missing}")
    return data


def _default_image_dir(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    candidate = os.path.join(folder, "images")
    return candidate if os.path.isdir(candidate) else folder


def _part_of(image: Any, image_id: int, parts: int) -> int:
    """The part (0-based) of an image under :meth:`ImageCaptionCorpus.image_part`: a stable hash of its name."""
    name = Path(image).stem if isinstance(image, (str, os.PathLike)) else str(image_id)
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % parts


def _image_key(image: Any) -> Any:
    if isinstance(image, str):
        return image
    if isinstance(image, dict):  # datasets' undecoded Image: {"bytes": ..., "path": ...}
        return image.get("path") or image.get("bytes")
    return id(image)


def _decode_image(image: Any) -> Any:
    if isinstance(image, dict):
        from datasets import Image as ImageFeature

        return ImageFeature().decode_example(image)
    return image
