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
"""

from __future__ import annotations

import base64
import csv
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mm_sbert.image_features.region_features import RegionFeatures

OSCAR_BOX_WIDTH = 6
BUTD_FIELDS = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]


def _decode(data: str, rows: int, where: str) -> np.ndarray:
    try:
        array = np.frombuffer(base64.b64decode(data), dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: the base64 field does not decode: {exc}") from exc
    if rows <= 0 or array.size % rows:
        raise ValueError(f"{where}: {array.size} floats do not split into {rows} boxes")
    return array.reshape(rows, -1).copy()


def _image_id(value: str) -> int | str:
    return int(value) if value.isdigit() and not (len(value) > 1 and value.startswith("0")) else value


def _tsv_rows(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as f:
        for line_number, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if row:
                yield line_number, row


def _read_labels(label_tsv: str | os.PathLike) -> dict[str, dict[str, Any]]:
    labels = {}
    for line_number, row in _tsv_rows(label_tsv):
        if len(row) < 2:
            raise ValueError(f"{label_tsv}:{line_number}: expected 'image_id <TAB> json', got {len(row)} column(s)")
        info = json.loads(row[1])
        objects = info if isinstance(info, list) else info.get("objects", [])
        size = None if isinstance(info, list) or "image_w" not in info else (info["image_w"], info["image_h"])
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
    """
    labels = _read_labels(label_tsv) if label_tsv is not None else {}
    for line_number, row in _tsv_rows(feature_tsv):
        where = f"{feature_tsv}:{line_number}"
        if len(row) < 2:
            raise ValueError(f"{where}: expected 'image_id <TAB> features', got {len(row)} column(s)")
        key = row[0]
        if row[1].lstrip().startswith("{"):
            info = json.loads(row[1])
            num_boxes, data = int(info["num_boxes"]), info["features"]
            array = _decode(data, num_boxes, where)
        else:
            flat = _decode(row[1], 1, where).reshape(-1)
            width = feature_dim + OSCAR_BOX_WIDTH if flat.size % (feature_dim + OSCAR_BOX_WIDTH) == 0 else feature_dim
            array = flat.reshape(-1, width)
        label_info = labels.get(key)
        if label_tsv is not None and label_info is None:
            raise ValueError(f"{where}: image {key!r} has no row in the label TSV {label_tsv}")
        objects = label_info["objects"] if label_info else None
        names = [str(obj.get("class", "")) for obj in objects] if objects is not None else None
        if names is not None and len(names) != len(array):
            raise ValueError(f"{where}: image {key!r} has {len(array)} feature rows but {len(names)} labelled objects")
        if array.shape[1] == feature_dim + OSCAR_BOX_WIDTH:
            features, boxes = array[:, :feature_dim], array[:, feature_dim : feature_dim + 4]
            regions = RegionFeatures(features, np.clip(boxes, 0, 1), labels=names)
        elif array.shape[1] == feature_dim:
            if not label_info or label_info["image_size"] is None:
                raise ValueError(
                    f"{where}: rows are {feature_dim}-d without box numbers; boxes must come from a label TSV whose "
                    "rows give image_w / image_h and objects[].rect"
                )
            rects = np.array([obj["rect"] for obj in objects], dtype=np.float32).reshape(-1, 4)
            regions = RegionFeatures.from_pixel_boxes(array, rects, label_info["image_size"], labels=names)
        else:
            raise ValueError(
                f"{where}: rows are {array.shape[1]}-d; expected {feature_dim} (features) or "
                f"{feature_dim + OSCAR_BOX_WIDTH} (features + x1, y1, x2, y2, w, h); set feature_dim"
            )
        yield _image_id(key), regions


def read_butd_tsv(path: str | os.PathLike) -> Iterator[tuple[int | str, RegionFeatures]]:
    """Yield ``(image_id, RegionFeatures)`` from a bottom-up-attention TSV (``image_id, image_w, image_h,
    num_boxes, boxes, features``; extra columns such as class indices are ignored)."""
    for line_number, row in _tsv_rows(path):
        where = f"{path}:{line_number}"
        if len(row) < len(BUTD_FIELDS):
            raise ValueError(f"{where}: expected the columns {BUTD_FIELDS}, got {len(row)} column(s)")
        item = dict(zip(BUTD_FIELDS, row))
        width, height, num_boxes = int(item["image_w"]), int(item["image_h"]), int(item["num_boxes"])
        boxes = _decode(item["boxes"], num_boxes, where)
        features = _decode(item["features"], num_boxes, where)
        yield _image_id(item["image_id"]), RegionFeatures.from_pixel_boxes(features, boxes, (width, height))


def read_npz_folder(folder: str | os.PathLike) -> Iterator[tuple[str, RegionFeatures]]:
    """Yield ``(file stem, RegionFeatures)`` for every ``.npz`` / ``.npy`` (not ``*.boxes.npy``) in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"No folder '{folder}'")
    files = sorted(p for p in folder.iterdir() if p.suffix in (".npz", ".npy") and not p.name.endswith(".boxes.npy"))
    if not files:
        raise ValueError(f"'{folder}' holds no .npz / .npy feature files")
    for path in files:
        yield path.stem, _read_array_file(path)


def _pick(data: Any, names: tuple[str, ...], path: Path) -> np.ndarray | None:
    for name in names:
        if name in data:
            return np.asarray(data[name])
    return None


def _read_array_file(path: Path) -> RegionFeatures:
    if path.suffix == ".npy":
        features = np.load(path, allow_pickle=False)
        boxes_path = path.with_name(path.stem + ".boxes.npy")
        if not boxes_path.is_file():
            raise ValueError(f"'{path}' holds features only; put its [N, 4] normalised boxes in '{boxes_path.name}'")
        return RegionFeatures(features, np.load(boxes_path, allow_pickle=False))
    with np.load(path, allow_pickle=False) as data:
        features = _pick(data, ("features", "x", "feat"), path)
        boxes = _pick(data, ("boxes", "bbox"), path)
        if features is None or boxes is None:
            raise ValueError(
                f"'{path}' needs features (key 'features', 'x' or 'feat') and boxes ('boxes' or 'bbox'); it has "
                f"{sorted(data.files)}"
            )
        size = None
        if "image_size" in data:
            size = tuple(int(v) for v in data["image_size"])
        elif "image_w" in data and "image_h" in data:
            size = (int(data["image_w"]), int(data["image_h"]))
    features = features.reshape(len(features), -1).astype(np.float32)
    if size is not None and boxes.size and boxes.max() > 1.0 + 1e-3:
        return RegionFeatures.from_pixel_boxes(features, boxes, size)
    return RegionFeatures(features, boxes, image_size=size)
