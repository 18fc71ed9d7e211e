"""`mm-sbert featurize --tags K` writes image tags; `mm-sbert train --tags on` trains a model that reads them."""

from __future__ import annotations

import pytest
from cli_helpers import run_cli, scene_folder, tiny_model_dir

from mm_sbert import MMCrossEncoder, MMSentenceTransformer, RegionFeatures
from mm_sbert.image_features import FeatureStore, mobilenet_v2_weights_path


@pytest.fixture
def tagged_store(capsys, tmp_path):
    try:
        mobilenet_v2_weights_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    store = tmp_path / "store"
    images = f"{scene_folder()}/images"
    argv = ["featurize", images, "--output", store, "--featurizer", "mobilenet-grid", "--grid-size", "1"]
    code, _, err = run_cli(capsys, *argv, "--tags", "3")
    assert code == 0, err
    return store


def backbone_folder(tmp_path) -> str:
    folder = tmp_path / "backbone"
    module = MMSentenceTransformer(tiny_model_dir())[0]
    module.backbone.save_pretrained(str(folder))
    module.tokenizer.save_pretrained(str(folder))
    return str(folder)


def test_featurize_writes_tags_and_train_reads_them(capsys, tmp_path, tagged_store):
    store = FeatureStore(tagged_store)
    assert all(len(store[image_id].tags) == 3 for image_id in store.ids)
    argv = ["train", "ce", "--model", backbone_folder(tmp_path), "--data", f"{scene_folder()}/captions.csv"]
    argv += ["--features", tagged_store, "--steps", "2", "--batch-size", "4", "--output-dir", tmp_path / "run"]
    code, _, err = run_cli(capsys, *argv, "--tags", "on")
    assert code == 0, err

    model = MMCrossEncoder(str(tmp_path / "run" / "final"), device="cpu")
    assert model[0].add_od_labels and model[0].featurizer.num_tags == 3
    stored = store[store.ids[0]]
    untagged = RegionFeatures(stored.features, stored.boxes, stored.image_size)
    scores = model.predict([("a red circle", stored), ("a red circle", untagged)])
    assert scores[0] != scores[1]  # the stored tags reach the model


def test_tags_flags_are_refused_where_there_are_no_tags(capsys, tmp_path):
    image = f"{scene_folder()}/images/scene_00000.png"
    code, _, err = run_cli(
        capsys, "featurize", image, "--output", tmp_path / "s", "--featurizer", "color-grid", "--tags", "2"
    )
    assert code == 2 and "--tags needs --featurizer mobilenet-grid or efficientnet-grid" in err
    argv = ["train", "be", "--model", tiny_model_dir(), "--synthetic", "8", "--steps", "1", "--batch-size", "4"]
    code, _, err = run_cli(capsys, *argv, "--output-dir", tmp_path / "run", "--tags", "on")
    assert code == 2 and "--tags on needs a model whose featurizer tags images" in err
