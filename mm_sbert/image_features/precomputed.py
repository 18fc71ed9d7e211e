"""Readers for precomputed region features in the layouts OSCAR / VinVL / bottom-up-attention releases use.

Each reader yields ``(image_id, RegionFeatures)`` and reads one row / file at a time, so it can feed
:meth:`FeatureStore.write` for collections that do not fit in RAM::

    store = FeatureStore.write("coco_vinvl", read_oscar_tsv("features.tsv", "predictions.tsv"), dtype="float16")

Supported layouts:

- **OSCAR / VinVL feature TSV** (``features.tsv`` / ``*.feature.tsv``): ``image_id <TAB> {"num_boxes": N,
  "features": "<base64 float32 [N, W]>"}`` (JSON; a bare base64 second column is accepted too). VinVL's rows are
  ``W = 2054``: the 2048-d feature followed by OSCAR's 6 box numbers ``x1, y1, x2, y2, w, h`` (normalised), from
  which the boxes are taken. For ``W = feature_dim`` rows (no box numbers), boxes come from a label TSV.
- **VinVL label / predictions TSV** (``*.label.tsv``, ``predictions.tsv``): ``image_id <TAB>`` JSON, either a list
  of objects or ``{"image_h", "image_w", "objects": [...]}``, each object with ``"rect": [x1, y1, x2, y2]``
  (pixels) and ``"class"``: used for labels, and for boxes when the feature rows carry none (needs the image size).
- **Bottom-up-attention TSV** (Anderson et al.; LXMERT, UNITER, VSE++ releases): columns ``image_id, image_w,
  image_h, num_boxes, boxes, features`` with base64 float32 boxes ``[N, 4]`` (pixels) and features ``[N, D]``.
- **A folder of ``.npz`` / ``.npy`` per image** (id = file stem): ``.npz`` with features under ``features``,
  ``x`` or ``feat`` and boxes under ``boxes`` or ``bbox`` (normalised, or pixels with ``image_w`` / ``image_h``
  or ``image_size`` keys); ``.npy`` with features ``[N, D]`` and the boxes in a sibling ``<stem>.boxes.npy``.

Every file is checked as it is read (issue 29): a row, a JSON field or an array that is not what its layout says is an
:class:`~mm_sbert.errors.InvalidFileError` naming the file, the line or key and what was expected; a missing file is a
:class:`~mm_sbert.errors.MissingFileError`. Nothing is coerced: ``"num_boxes": "3"`` is refused, not read as 3.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import os
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import ConfigDict, Field, RootModel, model_validator

from mm_sbert.errors import InvalidFileError, InvalidInputError, MissingFileError
from mm_sbert.image_features.region_features import RegionFeatures
from mm_sbert.storage import StrictSchema, validate_data

OSCAR_BOX_WIDTH = 6
BUTD_FIELDS = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]

Result = TypeVar("Result")


class _OscarFeatureRow(StrictSchema):
    """The JSON column of an OSCAR / VinVL feature TSV row."""

    num_boxes: int = Field(ge=1)
    features: str


class _LabelObject(StrictSchema):
    """One object of a VinVL label / predictions row."""

    model_config = ConfigDict(populate_by_name=True)

    rect: list[float] | None = Field(default=None, min_length=4, max_length=4)
    class_name: str = Field(default="", alias="class")


class _LabelImage(StrictSchema):
    """A VinVL predictions row: the image size and its objects."""

    image_w: int | None = Field(default=None, gt=0)
    image_h: int | None = Field(default=None, gt=0)
    objects: list[_LabelObject] = []

    @model_validator(mode="after")
    def _size_complete(self) -> _LabelImage:
        if (self.image_w is None) != (self.image_h is None):
            raise ValueError("image_w and image_h go together: give both or neither")
        return self


class _LabelRow(RootModel[list[_LabelObject] | _LabelImage]):
    """The JSON column of a VinVL label / predictions TSV row: a list of objects, or an object with ``objects``."""

    model_config = ConfigDict(strict=True)


def _regions(where: str, build: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
    """``build(*args, **kwargs)`` (a :class:`RegionFeatures`), its refusal of the values naming ``where``."""
    try:
        return build(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        raise InvalidFileError(f"{where}: the stored regions are not valid region features: {exc}") from None


def _inside_image(boxes: np.ndarray, size: tuple[float, float], where: str) -> np.ndarray:
    """``boxes`` (``x1, y1, x2, y2``), refused when they reach clearly outside a ``size`` (width, height) image:
    clipping them would silently turn a wrong image size or a wrong scale into wrong regions. Detectors overshoot
    the border a little, so 1% (at least 2 pixels when ``size`` is in pixels) is tolerated."""
    width, height = size
    slack = np.array([width, height, width, height], dtype=np.float64) * 0.01 + (2.0 if max(size) > 1 else 0.0)
    limit = np.array([width, height, width, height], dtype=np.float64)
    outside = ((boxes < -slack) | (boxes > limit + slack)).any(axis=1)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        scale = f"a {width}x{height} image" if max(size) > 1 else "normalised [0, 1] coordinates"
        raise InvalidFileError(
            f"{where}: box {row} {boxes[row].tolist()} lies outside {scale} ({int(outside.sum())} box(es) do); "
            "the image size or the boxes' scale is wrong"
        )
    return boxes


def _parse_json(text: str, where: str, schema: type[StrictSchema] | type[RootModel], what: str) -> Any:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidFileError(f"{where}: the {what} column is not valid JSON ({exc})") from None
    return validate_data(schema, data, where, f"{what} column of")


def _integer_column(value: str, name: str, where: str, minimum: int) -> int:
    # Strict decimal digits: int() would also take " 3", "+3" and "3_000".
    if not value.isascii() or not value.isdigit() or int(value) < minimum:
        raise InvalidFileError(f"{where}: column {name} must be an integer >= {minimum}, got {value!r:.40}")
    return int(value)


def _decode(data: str, rows: int, where: str) -> np.ndarray:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidFileError(f"{where}: the base64 field does not decode: {exc}") from None
    if len(raw) % 4:
        raise InvalidFileError(f"{where}: the base64 field holds {len(raw)} bytes, not a whole number of float32")
    array = np.frombuffer(raw, dtype=np.float32)
    if rows <= 0 or array.size == 0 or array.size % rows:
        raise InvalidFileError(f"{where}: {array.size} floats do not split into {rows} boxes")
    return array.reshape(rows, -1).copy()


def _image_id(value: str, where: str) -> int | str:
    if not value.strip():
        raise InvalidFileError(f"{where}: the image id (first column) is empty")
    numeric = value.isascii() and value.isdigit() and not (len(value) > 1 and value.startswith("0"))
    return int(value) if numeric else value


def _tsv_rows(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    csv.field_size_limit(sys.maxsize)
    if not os.path.isfile(path):
        what = "a folder, not a TSV file" if os.path.isdir(path) else "not found"
        raise MissingFileError(f"The TSV file '{path}' is {what}")
    line_number = 0
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for line_number, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
                if row:
                    yield line_number, row
    except UnicodeDecodeError as exc:
        raise InvalidFileError(f"'{path}' is not UTF-8 text ({exc}); expected a tab-separated feature file") from None
    except csv.Error as exc:
        raise InvalidFileError(f"{path}:{line_number + 1}: not a tab-separated row ({exc})") from None
    except OSError as exc:
        raise InvalidFileError(f"Cannot read '{path}': {exc}") from None


def _read_labels(label_tsv: str | os.PathLike) -> dict[str, dict[str, Any]]:
    labels = {}
    for line_number, row in _tsv_rows(label_tsv):
        where = f"{label_tsv}:{line_number}"
        if len(row) < 2:
            raise InvalidFileError(f"{where}: expected 'image_id <TAB> json', got {len(row)} column(s)")
        if row[0] in labels:
            raise InvalidFileError(f"{where}: image {row[0]!r} has a second row (duplicate image id)")
        info = _parse_json(row[1], where, _LabelRow, "label").root
        objects = info if isinstance(info, list) else info.objects
        size = None if isinstance(info, list) or info.image_w is None else (info.image_w, info.image_h)
        labels[row[0]] = {"objects": objects, "image_size": size}
    return labels


def read_oscar_tsv(
    feature_tsv: str | os.PathLike, label_tsv: str | os.PathLike | None = None, feature_dim: int = 2048
) -> Iterator[tuple[int | str, RegionFeatures]]:
    """Yield ``(image_id, RegionFeatures)`` from an OSCAR / VinVL feature TSV (and optionally its label TSV).

    Args:
        feature_tsv: rows ``image_id <TAB> {"num_boxes", "features"}`` (see the module docstring).
        label_tsv: VinVL label / predictions TSV for object labels (and boxes when the features carry none).
        feature_dim: the width of the visual feature; wider rows must carry exactly OSCAR's 6 box numbers.

    Raises:
        InvalidFileError: a row that is not what the layout says (naming the file and line).
        MissingFileError: a TSV file that is not there.
    """
    if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
        raise InvalidInputError(f"feature_dim must be a positive integer, got {feature_dim!r}")
    labels = _read_labels(label_tsv) if label_tsv is not None else {}
    for line_number, row in _tsv_rows(feature_tsv):
        where = f"{feature_tsv}:{line_number}"
        if len(row) < 2:
            raise InvalidFileError(f"{where}: expected 'image_id <TAB> features', got {len(row)} column(s)")
        key = row[0]
        image_id = _image_id(key, where)
        if row[1].lstrip().startswith("{"):
            info = _parse_json(row[1], where, _OscarFeatureRow, "feature")
            array = _decode(info.features, info.num_boxes, where)
        else:
            flat = _decode(row[1], 1, where).reshape(-1)
            width = feature_dim + OSCAR_BOX_WIDTH if flat.size % (feature_dim + OSCAR_BOX_WIDTH) == 0 else feature_dim
            if flat.size % width:
                raise InvalidFileError(f"{where}: {flat.size} floats are not rows of {feature_dim} (+6 box numbers)")
            array = flat.reshape(-1, width)
        label_info = labels.get(key)
        if label_tsv is not None and label_info is None:
            raise InvalidFileError(f"{where}: image {key!r} has no row in the label TSV {label_tsv}")
        objects = label_info["objects"] if label_info else None
        names = [obj.class_name for obj in objects] if objects is not None else None
        if names is not None and len(names) != len(array):
            raise InvalidFileError(
                f"{where}: image {key!r} has {len(array)} feature rows but {len(names)} labelled objects"
            )
        if array.shape[1] == feature_dim + OSCAR_BOX_WIDTH:
            features, boxes = array[:, :feature_dim], array[:, feature_dim : feature_dim + 4]
            boxes = np.clip(_inside_image(boxes, (1.0, 1.0), where), 0, 1)
            regions = _regions(where, RegionFeatures, features, boxes, labels=names)
        elif array.shape[1] == feature_dim:
            if not label_info or label_info["image_size"] is None:
                raise InvalidFileError(
                    f"{where}: rows are {feature_dim}-d without box numbers; boxes must come from a label TSV whose "
                    "rows give image_w / image_h and objects[].rect"
                )
            if any(obj.rect is None for obj in objects):
                raise InvalidFileError(
                    f"{where}: image {key!r} takes its boxes from the label TSV {label_tsv}, but an object there has "
                    "no rect [x1, y1, x2, y2]"
                )
            rects = np.array([obj.rect for obj in objects], dtype=np.float32).reshape(-1, 4)
            size = label_info["image_size"]
            _inside_image(rects, size, where)
            regions = _regions(where, RegionFeatures.from_pixel_boxes, array, rects, size, labels=names)
        else:
            raise InvalidFileError(
                f"{where}: rows are {array.shape[1]}-d; expected {feature_dim} (features) or "
                f"{feature_dim + OSCAR_BOX_WIDTH} (features + x1, y1, x2, y2, w, h); set feature_dim"
            )
        yield image_id, regions


def read_butd_tsv(path: str | os.PathLike) -> Iterator[tuple[int | str, RegionFeatures]]:
    """Yield ``(image_id, RegionFeatures)`` from a bottom-up-attention TSV (``image_id, image_w, image_h,
    num_boxes, boxes, features``; extra columns such as class indices are ignored).

    Raises:
        InvalidFileError: a row that is not what the layout says (naming the file, line and column).
        MissingFileError: the file is not there.
    """
    for line_number, row in _tsv_rows(path):
        where = f"{path}:{line_number}"
        if len(row) < len(BUTD_FIELDS):
            raise InvalidFileError(f"{where}: expected the columns {BUTD_FIELDS}, got {len(row)} column(s)")
        item = dict(zip(BUTD_FIELDS, row))
        image_id = _image_id(item["image_id"], where)
        width = _integer_column(item["image_w"], "image_w", where, 1)
        height = _integer_column(item["image_h"], "image_h", where, 1)
        num_boxes = _integer_column(item["num_boxes"], "num_boxes", where, 1)
        boxes = _decode(item["boxes"], num_boxes, where)
        if boxes.shape[1] != 4:
            raise InvalidFileError(f"{where}: the boxes column holds {boxes.shape[1]} numbers per box, not 4")
        features = _decode(item["features"], num_boxes, where)
        _inside_image(boxes, (width, height), where)
        yield image_id, _regions(where, RegionFeatures.from_pixel_boxes, features, boxes, (width, height))


def read_npz_folder(folder: str | os.PathLike) -> Iterator[tuple[str, RegionFeatures]]:
    """Yield ``(file stem, RegionFeatures)`` for every ``.npz`` / ``.npy`` (not ``*.boxes.npy``) in ``folder``.

    Raises:
        InvalidFileError: a file that is not a NumPy array file of the layout (naming the file and the key).
        MissingFileError: the folder, or the boxes of a ``.npy`` feature file, is not there.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"No folder '{folder}'" + (" (it is a file)" if folder.exists() else ""))
    files = sorted(
        p
        for p in folder.iterdir()
        if p.suffix in (".npz", ".npy") and not p.name.endswith(".boxes.npy") and p.is_file()
    )
    if not files:
        raise InvalidFileError(f"'{folder}' holds no .npz / .npy feature files")
    for path in files:
        yield path.stem, _read_array_file(path)


def _load_array_file(path: Path) -> Any:
    """``np.load`` without pickles, with every way a damaged file fails named as an :class:`InvalidFileError`."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise MissingFileError(f"'{path}' is not there") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidFileError(f"'{path}' is not a readable NumPy array file ({exc})") from None


def _numeric(array: Any, name: str, path: Path, width: int | None = None) -> np.ndarray:
    """``array`` as a 2-D float32 array of real numbers (``width`` columns when given), or an error naming it."""
    array = np.asarray(array)
    if array.dtype.kind not in "iuf":
        raise InvalidFileError(f"'{path}': {name} must hold real numbers, got dtype {array.dtype}")
    if array.ndim == 1 and width is None and array.size:
        array = array.reshape(1, -1)
    if array.ndim < 2 or len(array) == 0 or array[0].size == 0:
        raise InvalidFileError(
            f"'{path}': {name} must be [regions, values] with at least one region, got shape {array.shape}"
        )
    array = array.reshape(len(array), -1)
    if width is not None and array.shape[1] != width:
        raise InvalidFileError(f"'{path}': {name} must be [regions, {width}], got {array.shape}")
    with np.errstate(over="ignore"):
        converted = array.astype(np.float32)
    if not np.isfinite(converted).all():
        raise InvalidFileError(f"'{path}': {name} holds NaN or infinite values (or values beyond float32)")
    return converted


def _positive_integers(data: Any, key: str, path: Path, count: int) -> tuple[int, ...]:
    value = np.asarray(data[key])
    if value.dtype.kind not in "iu" or value.size != count or (value <= 0).any():
        raise InvalidFileError(
            f"'{path}': {key} must be {count} positive integer(s), got {value.dtype} {value.reshape(-1)[:4].tolist()}"
        )
    return tuple(int(v) for v in value.reshape(-1))


def _pick(data: Any, names: tuple[str, ...]) -> Any | None:
    for name in names:
        if name in data:
            return data[name]
    return None


def _read_array_file(path: Path) -> RegionFeatures:
    where = f"'{path}'"
    if path.suffix == ".npy":
        features = _numeric(_load_array_file(path), "the features", path)
        boxes_path = path.with_name(path.stem + ".boxes.npy")
        if not boxes_path.is_file():
            raise MissingFileError(
                f"'{path}' holds features only; put its [N, 4] normalised boxes in '{boxes_path.name}'"
            )
        boxes = _numeric(_load_array_file(boxes_path), "the boxes", boxes_path, width=4)
        return _regions(where, RegionFeatures, features, boxes)
    data = _load_array_file(path)
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InvalidFileError(f"'{path}' is a single array, not an .npz archive of features and boxes")
    with data:
        try:
            features = _pick(data, ("features", "x", "feat"))
            boxes = _pick(data, ("boxes", "bbox"))
            if features is None or boxes is None:
                raise InvalidFileError(
                    f"'{path}' needs features (key 'features', 'x' or 'feat') and boxes ('boxes' or 'bbox'); it has "
                    f"{sorted(data.files)}"
                )
            features = _numeric(features, "the features", path)
            boxes = _numeric(boxes, "the boxes", path, width=4)
            size = None
            if "image_size" in data:
                size = _positive_integers(data, "image_size", path, 2)
            elif "image_w" in data and "image_h" in data:
                size = _positive_integers(data, "image_w", path, 1) + _positive_integers(data, "image_h", path, 1)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            if isinstance(exc, InvalidFileError):
                raise
            raise InvalidFileError(f"'{path}': an array in the archive is damaged ({exc})") from None
    if size is not None and boxes.size and boxes.max() > 1.0 + 1e-3:
        return _regions(where, RegionFeatures.from_pixel_boxes, features, _inside_image(boxes, size, where), size)
    return _regions(where, RegionFeatures, features, boxes, image_size=size)
