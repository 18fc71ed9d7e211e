from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mm_sbert.errors import UnsafePathError, UnsupportedFormatError
from mm_sbert.image_features import (
    CachedFeaturizer,
    ColorGridFeaturizer,
    FeatureStore,
    FeatureStoreError,
    ImageFeaturizer,
    MobileNetV2GridFeaturizer,
    RegionFeatures,
    load_image,
)
from mm_sbert.thread_policy import using_thread_policy
from tests.conftest import build_views
from tests.image_features.conftest import SHARED_DATA_CANDIDATES

ROOT = Path(__file__).resolve().parents[2]


class CountingFeaturizer(ImageFeaturizer):
    """ColorGrid that counts images and can raise after a number of calls (a simulated crash)."""

    def __init__(self, fail_on_call: int | None = None, error: type[BaseException] = RuntimeError) -> None:
        self.inner = ColorGridFeaturizer(grid_size=2, resize_to=32)
        self.feature_dim = self.inner.feature_dim
        self.fail_on_call = fail_on_call
        self.error = error
        self.calls = self.images = 0

    def get_config_dict(self):
        return self.inner.get_config_dict()

    def featurize(self, images):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise self.error("simulated crash")
        self.images += len(images)
        return self.inner.featurize(images)


def grid() -> ColorGridFeaturizer:
    return ColorGridFeaturizer(grid_size=2, resize_to=32)


def test_store_returns_exactly_what_the_featurizer_gave(tmp_path, image_folder):
    store = FeatureStore.build(tmp_path / "store", image_folder, grid(), batch_size=4, shard_size=4)
    assert store.ids == [path.stem for path in image_folder] and len(store) == 6 and store.complete
    assert len(store.manifest["shards"]) == 2
    for path in image_folder:
        expected = grid().featurize([load_image(path)])[0]
        assert store[path.stem] == expected  # features, boxes, image size, labels: bit-exact
    assert store.featurizer_config == {"type": "ColorGridFeaturizer", "config": grid().get_config_dict()}


@pytest.mark.parametrize("featurizer", ["color-grid", "mobilenet"])
def test_two_worker_processes_write_the_store_one_process_writes(tmp_path, image_folder, featurizer):
    """processes=2 featurizes batches in two spawned workers; the store (ids, failures, shards, every feature) is
    the single-process one. MobileNet runs at one thread in both, so its convolutions add in the same order."""
    broken = tmp_path / "images" / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    images = [*image_folder[:3], broken, *image_folder[3:]]
    make = grid if featurizer == "color-grid" else lambda: MobileNetV2GridFeaturizer(weights=None, image_size=64)
    stores = {}
    for processes in (1, 2):
        torch.manual_seed(0)  # weights=None: the same random MobileNet both times
        with (
            torch.no_grad(),
            using_thread_policy(1),
            pytest.warns(UserWarning, match="1 of 7 images could not be read"),
        ):
            stores[processes] = FeatureStore.build(
                tmp_path / f"store{processes}",
                images,
                make(),
                batch_size=2,
                shard_size=3,
                show_progress_bar=False,
                processes=processes,
            )
    one, two = stores[1], stores[2]
    assert two.ids == one.ids == [path.stem for path in image_folder] and sorted(two.failed) == ["broken"]
    assert [shard["num_images"] for shard in two.manifest["shards"]] == [3, 3]
    assert two.manifest["shards"] == one.manifest["shards"]
    for image_id in one.ids:
        assert two[image_id] == one[image_id]  # bit-exact


def test_a_featurizer_that_cannot_go_to_worker_processes_is_refused_before_any_work(tmp_path, image_folder):
    featurizer = CountingFeaturizer()
    featurizer.hook = lambda: None  # a lambda does not pickle
    with pytest.raises(ValueError, match="cannot be pickled .* processes=1"):
        FeatureStore.build(
            tmp_path / "store", image_folder, featurizer, batch_size=2, show_progress_bar=False, processes=2
        )
    assert featurizer.images == 0


def test_float16_store(tmp_path, image_folder):
    store = FeatureStore.build(tmp_path / "store", image_folder, grid(), dtype="float16", show_progress_bar=False)
    regions, expected = store["img3"], grid().featurize([load_image(image_folder[3])])[0]
    assert regions.features.dtype == torch.float16
    torch.testing.assert_close(regions.features.float(), expected.features, rtol=1e-3, atol=1e-3)
    assert torch.equal(regions.boxes, expected.boxes)
    features = np.load(tmp_path / "store" / "shard-00000.features.npy", mmap_mode="r")
    assert isinstance(features, np.memmap) and features.dtype == np.float16


def _round_trip_images(image_folder: list[Path]) -> list[Path]:
    for candidate in SHARED_DATA_CANDIDATES:
        coco = sorted((candidate / "coco-mini-train" / "images").glob("*.jpg"))[:4]
        if coco:
            return coco
    return image_folder


def test_round_trip_store_reopened_in_a_new_process_encodes_like_raw_images(tmp_path, image_folder):
    images = _round_trip_images(image_folder)
    color_grid_model, _ = build_views()
    torch.manual_seed(0)
    # one image per forward pass, so the store and encode() run the very same convolutions (bit-exact)
    mobilenet = MobileNetV2GridFeaturizer(weights=None, image_size=64, batch_size=1)
    mobilenet_model, _ = build_views(featurizer=False, region_feature_dim=1280)
    mobilenet_model[0].featurizer = mobilenet
    models = {"grid": color_grid_model, "mobilenet": mobilenet_model}
    for name, model in models.items():
        model.save(str(tmp_path / f"{name}_model"))
        FeatureStore.build(tmp_path / f"{name}_store", images, model[0].featurizer, batch_size=3, shard_size=3)
    script = textwrap.dedent(
        f"""
        import numpy as np
        import torch
        from mm_sbert import FeatureStore, MMSentenceTransformer
        torch.set_num_threads(1)
        for name in {list(models)!r}:
            model = MMSentenceTransformer({str(tmp_path)!r} + f"/{{name}}_model", device="cpu")
            store = FeatureStore({str(tmp_path)!r} + f"/{{name}}_store", verify=True)
            store.check_compatible(model)
            embeddings = model.encode(store.get_many(store.ids), batch_size=2)
            np.save({str(tmp_path)!r} + f"/{{name}}_from_store.npy", embeddings)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=180)
    for name, model in models.items():
        from_store = np.load(tmp_path / f"{name}_from_store.npy")
        from_raw = model.encode([str(path) for path in images], batch_size=2)
        assert from_store.shape == from_raw.shape == (len(images), model.get_embedding_dimension())
        np.testing.assert_array_equal(from_store, from_raw)
        assert not np.allclose(from_raw[0], from_raw[1])


def test_interrupted_build_resumes_to_the_same_store(tmp_path, image_folder):
    reference = FeatureStore.build(
        tmp_path / "reference", image_folder, CountingFeaturizer(), batch_size=1, shard_size=2
    )
    crashing = CountingFeaturizer(fail_on_call=4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        FeatureStore.build(tmp_path / "store", image_folder, crashing, batch_size=1, shard_size=2)
    with pytest.warns(UserWarning, match="incomplete"):
        partial = FeatureStore(tmp_path / "store")
    # every finished image is kept: the full shard and the one in progress (written as a smaller shard)
    assert partial.ids == ["img0", "img1", "img2"] and not partial.complete
    assert [shard["num_images"] for shard in partial.manifest["shards"]] == [2, 1]

    resumed_featurizer = CountingFeaturizer()
    resumed = FeatureStore.build(tmp_path / "store", image_folder, resumed_featurizer, batch_size=1, shard_size=2)
    assert resumed_featurizer.images == 3  # only what was missing
    assert resumed.complete and resumed.ids == reference.ids
    assert all(resumed[i] == reference[i] for i in reference.ids)
    assert FeatureStore.build(tmp_path / "store", image_folder, resumed_featurizer).ids == reference.ids
    assert resumed_featurizer.images == 3  # a finished store is not featurized again


def test_ctrl_c_keeps_every_finished_image_and_a_rerun_resumes(tmp_path, image_folder):
    # 5 images in one 1024-image shard: before, a Ctrl-C lost all of them
    with pytest.raises(KeyboardInterrupt):
        FeatureStore.build(tmp_path / "store", image_folder, CountingFeaturizer(6, KeyboardInterrupt), batch_size=1)
    with pytest.warns(UserWarning, match="incomplete"):
        partial = FeatureStore(tmp_path / "store")
    assert partial.ids == ["img0", "img1", "img2", "img3", "img4"]
    assert partial[image_folder[4].stem] == grid().featurize([load_image(image_folder[4])])[0]
    resumed_featurizer = CountingFeaturizer()
    resumed = FeatureStore.build(tmp_path / "store", image_folder, resumed_featurizer, show_progress_bar=False)
    assert resumed_featurizer.images == 1 and resumed.complete and len(resumed) == 6


@pytest.mark.parametrize("size", [0, -1, 1.5])
def test_batch_and_shard_sizes_below_one_are_refused(tmp_path, image_folder, size):
    # batch_size=-1 used to store nothing and mark the store complete
    with pytest.raises(ValueError, match=f"batch_size must be an integer >= 1, got {size}"):
        FeatureStore.build(tmp_path / "store", image_folder, grid(), batch_size=size)
    with pytest.raises(ValueError, match=f"shard_size must be an integer >= 1, got {size}"):
        FeatureStore.build(tmp_path / "store", image_folder, grid(), shard_size=size)
    assert not (tmp_path / "store").exists()


def test_decompression_bomb_is_skipped_and_reported_by_file_name(tmp_path, image_folder, monkeypatch):
    bomb = tmp_path / "images" / "bomb.png"
    Image.new("RGB", (200, 200)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 40,000 pixels > twice the limit: Pillow refuses it
    with pytest.warns(UserWarning, match=r"1 of 7 images could not be read .*bomb.*bomb\.png"):
        store = FeatureStore.build(tmp_path / "store", [*image_folder, bomb], grid(), show_progress_bar=False)
    assert store.ids == [path.stem for path in image_folder]
    assert list(store.failed) == ["bomb"] and "decompression bomb" in store.failed["bomb"]


def _edit_manifest(store: Path, edit) -> None:
    manifest = json.loads((store / "manifest.json").read_text())
    edit(manifest)
    (store / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["../outside/evil", "ABSOLUTE"])
def test_shard_names_outside_the_folder_are_refused(tmp_path, image_folder, name):
    FeatureStore.build(tmp_path / "store", image_folder[:2], grid(), show_progress_bar=False)
    outside = tmp_path / "outside"
    outside.mkdir()
    for file in (tmp_path / "store").glob("shard-00000.*"):  # a complete, valid shard, outside the store
        (outside / file.name.replace("shard-00000", "evil")).write_bytes(file.read_bytes())
    name = str(outside / "evil") if name == "ABSOLUTE" else name
    _edit_manifest(tmp_path / "store", lambda manifest: manifest["shards"][0].update(name=name))
    with pytest.raises(UnsafePathError, match="lies outside that folder"):
        FeatureStore(tmp_path / "store")


def test_write_refuses_an_id_twice_and_never_drops_silently(tmp_path):
    first, second = (
        RegionFeatures(torch.ones(1, 5), torch.zeros(1, 4)),
        RegionFeatures(torch.zeros(2, 5), torch.zeros(2, 4)),
    )
    with pytest.raises(FeatureStoreError, match="The image id 'a' comes twice"):
        FeatureStore.write(tmp_path / "store", [("a", first), ("b", first), ("a", second)], show_progress_bar=False)
    with pytest.warns(UserWarning, match="incomplete"):
        assert FeatureStore(tmp_path / "store").ids == ["a", "b"]  # what came before the error is kept
    with pytest.warns(UserWarning, match=r"1 record\(s\) were not written because the store .* already holds"):
        store = FeatureStore.write(tmp_path / "store", [("a", second), ("c", second)], show_progress_bar=False)
    assert store["a"] == first and store["c"] == second and store.complete


def test_unknown_store_version_is_refused(tmp_path, image_folder):
    FeatureStore.build(tmp_path / "store", image_folder[:1], grid(), show_progress_bar=False)
    _edit_manifest(tmp_path / "store", lambda manifest: manifest.update(version=7))
    with pytest.raises(UnsupportedFormatError, match="format version 7; this mm_sbert reads versions 1..2"):
        FeatureStore(tmp_path / "store")
    (tmp_path / "store" / "manifest.json").write_text("")
    with pytest.raises(FeatureStoreError, match="is empty"):
        FeatureStore(tmp_path / "store")


def test_resuming_with_another_featurizer_is_refused(tmp_path, image_folder):
    FeatureStore.build(tmp_path / "store", image_folder[:2], grid(), show_progress_bar=False)
    with pytest.raises(FeatureStoreError, match="featurizer"):
        FeatureStore.build(tmp_path / "store", image_folder, ColorGridFeaturizer(grid_size=3), show_progress_bar=False)
    # a caching wrapper around the same featurizer is the same featurizer
    store = FeatureStore.build(tmp_path / "store", image_folder, CachedFeaturizer(grid()), show_progress_bar=False)
    assert len(store) == 6 and store.featurizer_config["type"] == "ColorGridFeaturizer"


def test_truncated_or_corrupt_files_are_detected(tmp_path, image_folder):
    FeatureStore.build(tmp_path / "store", image_folder, grid(), shard_size=4, show_progress_bar=False)
    features = tmp_path / "store" / "shard-00001.features.npy"
    data = features.read_bytes()
    features.write_bytes(data[:-10])
    with pytest.raises(FeatureStoreError, match=r"shard-00001.features.npy.*truncated"):
        FeatureStore(tmp_path / "store")
    features.write_bytes(data[:-4] + b"\x00\x00\x80\x7f")  # same size, one value changed
    with pytest.raises(FeatureStoreError, match=r"shard-00001.features.npy' does not match its checksum"):
        FeatureStore(tmp_path / "store")  # the default open checks a cheap checksum, not just sizes
    with pytest.raises(FeatureStoreError, match="sha256"):
        FeatureStore(tmp_path / "store", verify=True)
    features.write_bytes(data)
    (tmp_path / "store" / "shard-00000.boxes.npy").unlink()
    with pytest.raises(FeatureStoreError, match="missing shard-00000.boxes.npy"):
        FeatureStore(tmp_path / "store")
    with pytest.raises(FeatureStoreError, match="No feature store"):
        FeatureStore(tmp_path / "nowhere")


def test_corrupt_and_missing_images_are_reported_and_skipped(tmp_path, image_folder):
    broken = tmp_path / "images" / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    half = tmp_path / "images" / "half.jpg"
    half.write_bytes(image_folder[0].read_bytes()[:200])
    missing = tmp_path / "images" / "missing.png"
    images = [image_folder[0], broken, image_folder[1], missing, half, image_folder[2]]
    with pytest.warns(UserWarning, match="3 of 6 images could not be read"):
        store = FeatureStore.build(tmp_path / "store", images, grid(), batch_size=2, show_progress_bar=False)
    assert store.ids == ["img0", "img1", "img2"]
    assert sorted(store.failed) == ["broken", "half", "missing"]
    assert "not found" in store.failed["missing"]
    with pytest.raises(KeyError, match="featurizing it failed"):
        store["broken"]
    load_image(image_folder[3]).save(missing)  # the file turns up: a rerun adds it
    with pytest.warns(UserWarning, match="2 of 6"):
        store = FeatureStore.build(tmp_path / "store", images, grid(), show_progress_bar=False)
    assert "missing" in store and sorted(store.failed) == ["broken", "half"]


def test_unknown_id_and_width_mismatch_errors(tmp_path, image_folder):
    store = FeatureStore.build(tmp_path / "store", image_folder, grid(), show_progress_bar=False)
    with pytest.raises(KeyError, match=r"Unknown image id 'nope'.*'img0'"):
        store["nope"]
    assert 42 not in store and "img0" in store
    bi_encoder, _ = build_views(featurizer=False, region_feature_dim=16)
    with pytest.raises(FeatureStoreError, match=r"holds 19-d region features, but the model expects .*=16"):
        store.check_compatible(bi_encoder)
    with pytest.raises(ValueError, match="width 19, but this model expects 16"):
        bi_encoder.encode(store.get_many(["img0"]))


def test_integer_ids_and_pil_images(tmp_path, image_folder):
    images = [load_image(path) for path in image_folder[:3]]
    with pytest.raises(ValueError, match="needs ids"):
        FeatureStore.build(tmp_path / "store", images, grid())
    with pytest.raises(ValueError, match="unique"):
        FeatureStore.build(tmp_path / "store", images, grid(), ids=[1, 2, "1"])
    ids = np.array([790, 30752, 37666])
    store = FeatureStore.build(tmp_path / "store", images, grid(), ids=ids, show_progress_bar=False)
    assert store[790] == store["790"] == store[ids[0]] == grid().featurize([images[0]])[0]
    reopened = pickle.loads(pickle.dumps(FeatureStore(tmp_path / "store")))  # as sent to DataLoader workers
    assert reopened.ids == [790, 30752, 37666] and reopened[30752] == store[30752]


def test_write_records_with_labels_and_empty_images(tmp_path):
    records = [
        (
            "a",
            RegionFeatures(
                torch.randn(3, 5),
                torch.tensor([[0, 0, 1, 1], [0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]),
                (10, 8),
                ["x", "y", "z"],
            ),
        ),
        ("b", RegionFeatures(torch.zeros(0, 5), torch.zeros(0, 4))),
    ]
    store = FeatureStore.write(tmp_path / "store", records, show_progress_bar=False)
    assert store["a"] == records[0][1] and store["b"] == records[1][1]
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["shards"][0]["num_regions"] == 3
