"""Random bytes and random JSON in every file the package reads: always a package error (MMSbertError), never a raw
one, and the file is never changed by the read (issue 29)."""

from __future__ import annotations

import hashlib
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
