"""Random bytes and random JSON in every file the package reads: always a package error (MMSbertError), never a raw
one, and the file is never changed by the read (issue 29)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mm_sbert.errors import MMSbertError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
CONTENT = st.one_of(
    st.binary(max_size=300),
    JSON.map(lambda value: json.dumps(value).encode()),
    # JSON objects with the keys a reader looks for, holding values of random types
    st.dictionaries(
        st.sampled_from(["format", "version", "shards", "ids", "labels", "type", "config", "idx", "path", "images"]),
        JSON,
        max_size=5,
    ).map(lambda value: json.dumps(value).encode()),
)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check(folder: Path, name: str, content: bytes, read: Callable[[], object]) -> None:
    target = folder / name
    target.write_bytes(content)
    before = {path: _digest(path) for path in folder.rglob("*") if path.is_file()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            read()
        except MMSbertError:
            pass
    after = {path: _digest(path) for path in folder.rglob("*") if path.is_file()}
    assert after == before


@pytest.fixture(scope="module")
def store_template(tmp_path_factory) -> Path:
    from mm_sbert.image_features import FeatureStore, RegionFeatures

    folder = tmp_path_factory.mktemp("store") / "store"
    records = [(i, RegionFeatures(torch.rand(2, 5), torch.tensor([[0, 0, 1, 1.0]] * 2))) for i in range(3)]
    FeatureStore.write(folder, records, show_progress_bar=False)
    return folder


@pytest.fixture(scope="module")
def model_template(tmp_path_factory) -> Path:
    from conftest import build_views

    folder = tmp_path_factory.mktemp("model") / "model"
    build_views("bert")[0].save(str(folder))
    return folder


def _copy(template: Path, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("case") / template.name
    shutil.copytree(template, target)
    return target


@pytest.mark.parametrize(
    "name", ["manifest.json", "shard-00000.meta.json", "shard-00000.offsets.npy", "shard-00000.features.npy"]
)
def test_feature_store_files(store_template, tmp_path_factory, name):
    from mm_sbert.image_features import FeatureStore

    @SETTINGS
    @given(content=CONTENT)
    def run(content):
        folder = _copy(store_template, tmp_path_factory)
        _check(folder, name, content, lambda: FeatureStore(folder))

    run()


@pytest.mark.parametrize("name", ["modules.json", "config_sentence_transformers.json", "MODULE_CONFIG", "FEATURIZER"])
def test_model_files(model_template, tmp_path_factory, name):
    from mm_sbert import MMSentenceTransformer

    module_path = json.loads((model_template / "modules.json").read_text())[0]["path"]
    relative = {
        "MODULE_CONFIG": str(Path(module_path) / "mm_transformer_config.json"),
        "FEATURIZER": str(next(model_template.rglob("featurizer_config.json")).relative_to(model_template)),
    }.get(name, name)

    @settings(SETTINGS, max_examples=10)
    @given(content=CONTENT)
    def run(content):
        folder = _copy(model_template, tmp_path_factory)
        _check(folder, relative, content, lambda: MMSentenceTransformer(str(folder), device="cpu"))

    run()


def test_images(tmp_path_factory):
    from mm_sbert.image_features import load_image

    @SETTINGS
    @given(content=st.binary(max_size=400) | st.just(b"\x89PNG\r\n\x1a\n" + bytes(40)))
    def run(content):
        folder = tmp_path_factory.mktemp("image")
        _check(folder, "photo.png", content, lambda: load_image(folder / "photo.png"))

    run()


def test_image_arrays():
    from mm_sbert.image_features import load_image

    @SETTINGS
    @given(
        values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=12, max_size=12),
        dtype=st.sampled_from(["float32", "float64", "int32", "uint16", "uint8", "int8"]),
    )
    def run(values, dtype):
        with np.errstate(all="ignore"):
            array = np.array(values, dtype=np.float64)
            if dtype not in ("float32", "float64"):
                array = np.nan_to_num(array).clip(np.iinfo(dtype).min, np.iinfo(dtype).max)
            array = array.astype(dtype).reshape(2, 2, 3)
        try:
            image = load_image(array)
        except MMSbertError:
            return
        assert image.mode == "RGB" and image.size == (2, 2)

    run()


@pytest.mark.parametrize("reader", ["flickr8k_jsonl", "karpathy_json", "coco_json"])
def test_caption_data_files(tmp_path_factory, reader):
    from mm_sbert.data.image_caption_corpus import ImageCaptionCorpus

    read = {
        "flickr8k_jsonl": lambda path: ImageCaptionCorpus.from_flickr8k_jsonl(str(path)),
        "karpathy_json": lambda path: ImageCaptionCorpus.from_karpathy_json(str(path), split="test"),
        "coco_json": lambda path: ImageCaptionCorpus.from_coco_json(str(path)),
    }[reader]

    @SETTINGS
    @given(content=CONTENT)
    def run(content):
        folder = tmp_path_factory.mktemp("data")
        _check(folder, "captions.json", content, lambda: read(folder / "captions.json"))

    run()


def test_index_files(tmp_path_factory):
    from mm_sbert.retrieval import EmbeddingIndex

    template = tmp_path_factory.mktemp("index") / "index"
    EmbeddingIndex(np.eye(3, 4, dtype=np.float32), ids=["a", "b", "c"]).save(str(template))
    names = sorted(path.name for path in template.iterdir() if path.is_file() and not path.name.startswith("."))

    @SETTINGS
    @given(content=CONTENT, name=st.sampled_from(names))
    def run(content, name):
        folder = _copy(template, tmp_path_factory)
        _check(folder, name, content, lambda: EmbeddingIndex.open(str(folder)).search(np.ones((1, 4), np.float32)))

    run()


TSV_CELL = st.one_of(
    st.text(max_size=12),
    JSON.map(json.dumps),
    st.binary(max_size=40).map(lambda raw: base64.b64encode(raw).decode()),
    st.integers(-3, 9).map(str),
    st.dictionaries(
        st.sampled_from(["num_boxes", "features", "objects", "image_w", "image_h", "rect", "class"]), JSON
    ).map(json.dumps),
)
# Whole files: random bytes, or lines of tab-separated cells that look like the layouts' columns.
TSV = st.one_of(
    st.binary(max_size=300),
    st.lists(st.lists(TSV_CELL, max_size=7).map("\t".join), min_size=1, max_size=4).map(
        lambda lines: "\n".join(lines).encode()
    ),
)


def _good_oscar_row(key: str = "1") -> str:
    row = np.concatenate([np.ones((2, 8), np.float32), np.array([[0, 0, 0.5, 0.5, 0.5, 0.5]] * 2, np.float32)], 1)
    return f"{key}\t" + json.dumps({"num_boxes": 2, "features": base64.b64encode(row.tobytes()).decode()})


@pytest.mark.parametrize("reader", ["oscar_features", "oscar_labels", "butd"])
def test_precomputed_feature_tsv_files(tmp_path_factory, reader):
    from mm_sbert.image_features import read_butd_tsv, read_oscar_tsv

    @SETTINGS
    @given(content=TSV)
    def run(content):
        folder = tmp_path_factory.mktemp("tsv")
        if reader == "oscar_labels":
            (folder / "features.tsv").write_text(_good_oscar_row() + "\n")
            read = lambda: list(read_oscar_tsv(folder / "features.tsv", folder / "data.tsv", feature_dim=8))  # noqa: E731
        elif reader == "oscar_features":
            read = lambda: list(read_oscar_tsv(folder / "data.tsv", feature_dim=8))  # noqa: E731
        else:
            read = lambda: list(read_butd_tsv(folder / "data.tsv"))  # noqa: E731
        _check(folder, "data.tsv", content, read)

    run()


NUMERIC_ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_, np.complex64, "U3"]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)


@pytest.mark.parametrize("name", ["regions.npz", "regions.npy", "regions.boxes.npy"])
def test_precomputed_feature_array_files(tmp_path_factory, name):
    from mm_sbert.image_features import read_npz_folder

    def save(path: Path, arrays: dict[str, np.ndarray]) -> bytes:
        buffer = io.BytesIO()
        if path.suffix == ".npz":
            np.savez(buffer, **arrays)
        else:
            np.save(buffer, next(iter(arrays.values())))
        return buffer.getvalue()

    keys = st.sampled_from(["features", "x", "feat", "boxes", "bbox", "image_w", "image_h", "image_size", "other"])

    @SETTINGS
    @given(
        content=st.one_of(
            st.binary(max_size=300),
            st.dictionaries(keys, NUMERIC_ARRAYS, min_size=1, max_size=5).map(lambda arrays: save(Path(name), arrays)),
        )
    )
    def run(content):
        folder = tmp_path_factory.mktemp("npz")
        if name == "regions.boxes.npy":
            np.save(folder / "regions.npy", np.ones((2, 8), np.float32))
        elif name == "regions.npy":
            np.save(folder / "regions.boxes.npy", np.array([[0, 0, 1, 1]] * 2, np.float32))
        _check(folder, name, content, lambda: list(read_npz_folder(folder)))

    run()


def test_coco_instance_box_files(tmp_path_factory):
    from mm_sbert.image_features import CocoBoxes

    entry = st.dictionaries(
        st.sampled_from(["id", "image_id", "file_name", "width", "height", "bbox", "category_id", "name", "iscrowd"]),
        JSON,
        max_size=6,
    )
    coco = st.fixed_dictionaries(
        {"images": st.lists(entry, max_size=3), "annotations": st.lists(entry, max_size=3)},
        optional={"categories": st.lists(entry, max_size=2)},
    ).map(lambda value: json.dumps(value).encode())

    # Files that are valid up to one field of a random value, so the reader gets past the first check.
    value = st.one_of(JSON, st.integers(-2, 3), st.lists(st.floats(-5, 50), min_size=3, max_size=5))
    near_valid = st.fixed_dictionaries(
        {
            "images": st.fixed_dictionaries(
                {"id": st.just(1), "file_name": st.just("1.jpg"), "width": value, "height": st.just(40)}
            ).map(lambda image: [image]),
            "annotations": st.lists(
                st.fixed_dictionaries({"image_id": st.sampled_from([1, 2]), "category_id": value, "bbox": value}),
                max_size=2,
            ),
            "categories": st.just([{"id": 1, "name": "dog"}]),
        }
    ).map(lambda value: json.dumps(value).encode())

    @SETTINGS
    @given(content=CONTENT | coco | near_valid)
    def run(content):
        folder = tmp_path_factory.mktemp("coco")
        _check(folder, "instances.json", content, lambda: CocoBoxes(folder / "instances.json")("1.jpg"))

    run()
