from __future__ import annotations

import os
import shutil

import pytest
import torch
from cli_helpers import run_cli, scene_folder, tiny_model_dir

from mm_sbert import ColorGridFeaturizer, MMSentenceTransformer
from mm_sbert.demo import SyntheticScenes
from mm_sbert.image_features import ColorBlobFeaturizer, FeatureStore, load_image


def test_featurize_folder_with_color_grid_matches_the_featurizer(capsys, tmp_path):
    store_path = tmp_path / "store"
    code, out, err = run_cli(
        capsys, "featurize", f"{scene_folder()}/images", "--output", store_path, "--grid-size", "2"
    )
    assert code == 0, err
    assert "Stored region features of 8 images" in out
    store = FeatureStore(store_path)
    assert sorted(store.ids) == [f"scene_{i:05d}" for i in range(8)]
    expected = ColorGridFeaturizer(grid_size=2).featurize([load_image(f"{scene_folder()}/images/scene_00003.png")])[0]
    assert torch.allclose(store["scene_00003"].features, expected.features)
    assert torch.allclose(store["scene_00003"].boxes, expected.boxes)


def test_featurize_in_two_processes_writes_the_store_of_one(capsys, tmp_path):
    stores = []
    for processes in ("1", "2"):
        store_path = tmp_path / f"store{processes}"
        code, _, err = run_cli(
            capsys, "featurize", f"{scene_folder()}/images", "--output", store_path, "--batch-size", "3",
            "--processes", processes,
        )  # fmt: skip
        assert code == 0, err
        stores.append(FeatureStore(store_path))
    assert stores[1].ids == stores[0].ids and len(stores[0]) == 8
    assert stores[1].manifest["shards"] == stores[0].manifest["shards"]


def test_featurize_with_color_blob_stores_one_region_per_object_and_the_whole_image(capsys, tmp_path):
    store_path = tmp_path / "store"
    code, out, err = run_cli(
        capsys, "featurize", f"{scene_folder()}/images", "--output", store_path, "--featurizer", "color-blob"
    )
    assert code == 0, err
    assert "ColorBlobFeaturizer" in out
    store = FeatureStore(store_path)
    featurizer = ColorBlobFeaturizer()
    scenes = SyntheticScenes(8, captions_per_image=2, seed=0)  # what scene_folder() wrote
    assert len({len(scene.objects) for scene in scenes.scenes}) > 1
    for i, scene in enumerate(scenes.scenes):
        stored = store[f"scene_{i:05d}"]
        # The whole image plus one region per object: each image keeps its own region count, not a padded one.
        assert len(stored.features) == 1 + len(scene.objects)
        expected = featurizer.featurize([load_image(f"{scene_folder()}/images/scene_{i:05d}.png")])[0]
        assert torch.allclose(stored.features, expected.features)
        assert torch.allclose(stored.boxes, expected.boxes)


def test_featurize_with_the_models_featurizer_gives_features_the_model_accepts(capsys, tmp_path):
    store_path = tmp_path / "store"
    image = f"{scene_folder()}/images/scene_00000.png"
    code, _, err = run_cli(capsys, "featurize", image, "--output", store_path, "--model", tiny_model_dir())
    assert code == 0, err
    model = MMSentenceTransformer(tiny_model_dir())
    from_store = model.encode([FeatureStore(store_path)["scene_00000"]])
    from_image = model.encode([image])
    assert from_store == pytest.approx(from_image, abs=1e-5)


def test_featurize_missing_input_exits_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "featurize", tmp_path / "nothing.png", "--output", tmp_path / "s")
    assert code == 2 and "Image path" in err and "does not exist" in err
    assert not os.path.exists(tmp_path / "s")


@pytest.mark.parametrize("source", [("--featurizer", "color-blob"), ("--model",)])
def test_featurize_grid_size_with_a_featurizer_without_a_grid_exits_2(capsys, tmp_path, source):
    if source == ("--model",):
        source = ("--model", tiny_model_dir())
    image = f"{scene_folder()}/images/scene_00000.png"
    code, _, err = run_cli(capsys, "featurize", image, "--output", tmp_path / "s", *source, "--grid-size", "4")
    assert code == 2 and "--grid-size applies to the color-grid and mobilenet-grid featurizers only" in err
    assert not os.path.exists(tmp_path / "s")


def test_featurize_mobilenet_grid_pooled_to_grid_size(capsys, tmp_path):
    from mm_sbert.image_features import MobileNetV2GridFeaturizer

    image = f"{scene_folder()}/images/scene_00000.png"
    store_path = tmp_path / "s"
    # The same threads as the reference below: the command's default follows the free cores, and another thread
    # count sums the convolutions in another order (features equal to ~1e-6, not bit for bit).
    threads = str(torch.get_num_threads())
    code, _, err = run_cli(
        capsys,
        "featurize",
        image,
        "--output",
        store_path,
        "--featurizer",
        "mobilenet-grid",
        "--grid-size",
        "3",
        "--threads",
        threads,
    )
    assert code == 0, err
    store = FeatureStore(store_path)
    assert store.featurizer_config["config"]["grid_size"] == 3
    stored = store["scene_00000"]
    expected = MobileNetV2GridFeaturizer(grid_size=3).featurize([load_image(image)])[0]
    assert stored.num_regions == 10  # the whole image + 3 x 3 pooled cells
    assert torch.equal(stored.features, expected.features) and torch.equal(stored.boxes, expected.boxes)


def test_featurize_mobilenet_grid_size_beyond_the_native_grid_exits_2(capsys, tmp_path):
    image = f"{scene_folder()}/images/scene_00000.png"
    code, _, err = run_cli(
        capsys, "featurize", image, "--output", tmp_path / "s", "--featurizer", "mobilenet-grid", "--grid-size", "8"
    )
    assert code == 2 and "grid_size must be between 1 and 7" in err
    assert not os.path.exists(tmp_path / "s")


@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--batch-size", "-3"), ("--shard-size", "0")])
def test_featurize_sizes_below_one_exit_2(capsys, tmp_path, option, value):
    # --batch-size -3 used to exit 0 with an empty store marked complete; 0 failed deep inside range()
    image = f"{scene_folder()}/images/scene_00000.png"
    code, _, err = run_cli(capsys, "featurize", image, "--output", tmp_path / "s", option, value)
    assert code == 2 and f"argument {option}: must be >= 1, got {value}" in err
    assert not os.path.exists(tmp_path / "s")


def test_featurize_shard_size_sets_images_per_shard(capsys, tmp_path):
    code, _, err = run_cli(capsys, "featurize", f"{scene_folder()}/images", "-o", tmp_path / "s", "--shard-size", "3")
    assert code == 0, err
    assert [shard["num_images"] for shard in FeatureStore(tmp_path / "s").manifest["shards"]] == [3, 3, 2]


def test_featurize_ctrl_c_keeps_finished_images_exits_130_and_resumes(capsys, tmp_path, monkeypatch):
    featurize = ColorGridFeaturizer.featurize
    calls = []

    def interrupted_on_third_call(self, images):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return featurize(self, images)

    monkeypatch.setattr(ColorGridFeaturizer, "featurize", interrupted_on_third_call)
    code, _, err = run_cli(capsys, "featurize", f"{scene_folder()}/images", "-o", tmp_path / "s", "--batch-size", "2")
    assert code == 130 and "the images finished so far are stored" in err
    with pytest.warns(UserWarning, match="incomplete"):
        assert FeatureStore(tmp_path / "s").ids == [f"scene_{i:05d}" for i in range(4)]  # 2 batches of 2
    monkeypatch.setattr(ColorGridFeaturizer, "featurize", featurize)
    code, out, err = run_cli(capsys, "featurize", f"{scene_folder()}/images", "-o", tmp_path / "s")
    assert code == 0, err
    store = FeatureStore(tmp_path / "s")
    assert store.complete and sorted(store.ids) == [f"scene_{i:05d}" for i in range(8)]


def test_featurize_skips_a_decompression_bomb_by_name_and_stores_the_rest(capsys, tmp_path, monkeypatch):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        shutil.copy(f"{scene_folder()}/images/scene_{i:05d}.png", folder / f"good{i}.png")
    Image.new("RGB", (300, 300)).save(folder / "huge.png")
    (folder / "empty.png").write_bytes(b"")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 90,000 pixels: more than twice the limit
    code, out, err = run_cli(capsys, "featurize", folder, "-o", tmp_path / "s")
    assert code == 1
    assert "Stored region features of 5 images" in out
    assert "2 image(s) could not be read" in err and "huge.png" in err and "decompression bomb" in err
    assert "empty.png" in err
    assert sorted(FeatureStore(tmp_path / "s").ids) == [f"good{i}" for i in range(5)]


def test_featurize_resume_with_other_settings_exits_2_with_one_line(capsys, tmp_path):
    image = f"{scene_folder()}/images/scene_00000.png"
    assert run_cli(capsys, "featurize", image, "-o", tmp_path / "s", "--grid-size", "2")[0] == 0
    code, _, err = run_cli(capsys, "featurize", image, "-o", tmp_path / "s", "--grid-size", "3")
    assert code == 2
    assert err.startswith("mm-sbert featurize: error: The store at") and "resume with the same featurizer" in err
    assert len(err.strip().splitlines()) == 1
