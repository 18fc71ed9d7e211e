from __future__ import annotations

import pytest
import torch
from cli_helpers import run_cli, scene_folder, tiny_model_dir

from mm_sbert import MMCrossEncoder, MMSentenceTransformer
from mm_sbert.image_features import load_image


@pytest.mark.parametrize("regime", ["be", "ce", "joint"])
def test_train_each_regime_changes_the_weights_and_saves_both_views(capsys, tmp_path, regime):
    output = tmp_path / "run"
    argv = ["train", regime, "--model", tiny_model_dir(), "--synthetic", "8", "--steps", "2", "--batch-size", "4"]
    code, out, err = run_cli(capsys, *argv, "--output-dir", output, "--lr", "1e-3")
    assert code == 0, err
    assert f"Trained a {regime} model" in out
    before = MMSentenceTransformer(tiny_model_dir())[0]
    trained = MMSentenceTransformer(str(output / "final"))[0]
    changed = not torch.equal(before.img_embedding.weight, trained.img_embedding.weight)
    assert changed, "training must update the shared weights"
    head_changed = not torch.equal(before.classifier.weight, trained.classifier.weight)
    assert head_changed == (regime in ("ce", "joint")), "only CE objectives train the score head"
    MMCrossEncoder(str(output / "final"))  # loads as the cross-encoder view too


def test_train_rejects_bad_arguments(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "be", "--synthetic", "8", "--steps", "0", "--output-dir", tmp_path)
    assert code == 2 and "argument --steps: must be >= 1, got 0" in err
    code, _, err = run_cli(capsys, "train", "be", "--data", tmp_path / "none.csv", "--output-dir", tmp_path)
    assert code == 2 and "Caption file" in err and "does not exist" in err


def test_train_ce_with_the_listwise_loss_and_a_matching_head(capsys, tmp_path):
    output = tmp_path / "run"
    argv = ["train", "ce", "--model", tiny_model_dir(), "--synthetic", "8", "--steps", "2", "--batch-size", "4"]
    code, out, err = run_cli(capsys, *argv, "--ce-loss", "listwise", "--ce-negatives", "2", "--output-dir", output)
    assert code == 0, err
    before = MMSentenceTransformer(tiny_model_dir())[0]
    trained = MMCrossEncoder(str(output / "final"))[0]
    assert not torch.equal(before.classifier.weight, trained.classifier.weight)
    # Without --head-input a saved folder keeps its own head; with it, the head is replaced by one of that kind.
    assert trained.head_input == before.head_input
    code, _, err = run_cli(capsys, *argv, "--head-input", "mean", "--output-dir", tmp_path / "mean")
    assert code == 0, err
    assert MMCrossEncoder(str(tmp_path / "mean" / "final"))[0].head_input == "mean" != before.head_input
    code, _, err = run_cli(capsys, *argv, "--head-input", "mean", "--similarity-start", "--output-dir", output)
    assert code == 2 and "leave out --head-input" in err
    code, _, err = run_cli(capsys, *argv, "--ce-negatives", "0", "--output-dir", output)
    assert code == 2 and "argument --ce-negatives: must be >= 1, got 0" in err


def _backbone(tmp_path) -> str:
    backbone = tmp_path / "backbone"
    MMSentenceTransformer(tiny_model_dir())[0].backbone.save_pretrained(str(backbone))
    MMSentenceTransformer(tiny_model_dir())[0].tokenizer.save_pretrained(str(backbone))
    return str(backbone)


def test_new_model_gets_the_requested_head_input(capsys, tmp_path):
    argv = ["train", "be", "--model", _backbone(tmp_path), "--synthetic", "8", "--steps", "1", "--batch-size", "4"]
    code, _, err = run_cli(
        capsys, *argv, "--head-input", "text_image_match", "--fusion-layer", "1", "-o", tmp_path / "o"
    )
    assert code == 0, err
    model = MMSentenceTransformer(str(tmp_path / "o" / "final"))
    assert model[0].head_input == "text_image_match"
    assert model[0].classifier.in_features == 4 * model[0].backbone.config.hidden_size
    assert model[0].fusion_layer == 1


@pytest.mark.parametrize("regime", ["be", "ce"])
def test_one_command_with_one_seed_trains_the_same_model(capsys, tmp_path, regime):
    """--seed makes a run repeatable from its first step: the layers a run draws before training (a new model's
    image projection and head, a replaced head) come from it, not from whatever the process's random state was."""
    # be: a new model on a text backbone; ce: a saved model whose head --head-input replaces.
    start = _backbone(tmp_path) if regime == "be" else tiny_model_dir()
    argv = ["train", regime, "--model", start, "--synthetic", "8", "--steps", "2", "--batch-size", "4"]
    argv += ["--head-input", "mean", "--threads", "1"]
    weights = {}
    for run, seed in (("first", "0"), ("again", "0"), ("other seed", "1")):
        torch.manual_seed(len(weights))  # the caller's random state differs from run to run
        code, _, err = run_cli(capsys, *argv, "--seed", seed, "--output-dir", tmp_path / run)
        assert code == 0, err
        weights[run] = MMSentenceTransformer(str(tmp_path / run / "final"))[0].state_dict()
    assert weights["first"].keys() == weights["again"].keys()
    differing = [name for name in weights["first"] if not torch.equal(weights["first"][name], weights["again"][name])]
    assert differing == [], f"the same command and seed trained different weights: {differing[:5]}"
    assert not torch.equal(weights["first"]["classifier.weight"], weights["other seed"]["classifier.weight"])


def test_fusion_layer_beyond_the_backbone_exits_2(capsys, tmp_path):
    layers = MMSentenceTransformer(tiny_model_dir())[0].backbone.config.num_hidden_layers
    argv = ["train", "be", "--model", _backbone(tmp_path), "--synthetic", "8", "--fusion-layer", str(layers)]
    code, _, err = run_cli(capsys, *argv, "--output-dir", tmp_path / "o")
    assert code == 2 and f"fusion_layer must be between 0 and {layers - 1}" in err


def _store_of_scenes(capsys, path, *featurizer_args) -> None:
    code, _, err = run_cli(capsys, "featurize", f"{scene_folder()}/images", "--output", path, *featurizer_args)
    assert code == 0, err


def test_train_from_a_feature_store_encodes_raw_images_exactly_as_the_store(capsys, tmp_path):
    from mm_sbert.image_features import FeatureStore

    store_path = tmp_path / "store"
    _store_of_scenes(capsys, store_path, "--model", tiny_model_dir())
    output = tmp_path / "run"
    argv = ["train", "be", "--model", tiny_model_dir(), "--data", f"{scene_folder()}/captions.csv"]
    code, out, err = run_cli(
        capsys, *argv, "--features", store_path, "--steps", "2", "--batch-size", "4", "--output-dir", output
    )
    assert code == 0, err
    model = MMSentenceTransformer(str(output / "final"))
    before = MMSentenceTransformer(tiny_model_dir())
    assert not torch.equal(model[0].img_embedding.weight, before[0].img_embedding.weight)
    store = FeatureStore(store_path)
    image_ids = [f"scene_{i:05d}" for i in range(8)]
    from_photos = model.encode([f"{scene_folder()}/images/{image_id}.png" for image_id in image_ids])
    from_store = model.encode(store.get_many(image_ids))
    assert from_photos.tolist() == from_store.tolist()


def test_new_model_from_a_store_keeps_the_store_featurizer(capsys, tmp_path):
    from mm_sbert.image_features import FeatureStore, MobileNetV2GridFeaturizer
    from mm_sbert.training.training_run import new_model_featurizer

    store_path = tmp_path / "store"
    image = f"{scene_folder()}/images/scene_00000.png"
    # --threads as the in-process featurizer below: other thread counts sum in another order (~1e-6 apart)
    code, _, err = run_cli(
        capsys,
        "featurize",
        image,
        "--output",
        store_path,
        "--featurizer",
        "mobilenet-grid",
        "--grid-size",
        "2",
        "--threads",
        str(torch.get_num_threads()),
    )
    assert code == 0, err
    featurizer = new_model_featurizer(None, None, FeatureStore(store_path))
    assert isinstance(featurizer, MobileNetV2GridFeaturizer) and featurizer.grid_size == 2
    assert featurizer.featurize([load_image(image)])[0].features.tolist() == (
        FeatureStore(store_path)["scene_00000"].features.tolist()
    )


def test_train_features_store_lacking_an_image_exits_2_naming_it(capsys, tmp_path):
    store_path = tmp_path / "store"
    image = f"{scene_folder()}/images/scene_00000.png"
    code, _, err = run_cli(capsys, "featurize", image, "--output", store_path, "--model", tiny_model_dir())
    assert code == 0, err
    argv = ["train", "be", "--model", tiny_model_dir(), "--data", f"{scene_folder()}/captions.csv"]
    code, _, err = run_cli(capsys, *argv, "--features", store_path, "--steps", "1", "--output-dir", tmp_path / "run")
    assert code == 2
    assert "lacks 7 image(s) of the training data" in err and "scene_00001.png" in err
    assert not (tmp_path / "run" / "final").exists()


def test_train_features_store_from_another_featurizer_exits_2(capsys, tmp_path):
    store_path = tmp_path / "store"
    _store_of_scenes(capsys, store_path, "--featurizer", "color-grid", "--grid-size", "3")  # the model's grid is 2
    argv = ["train", "be", "--model", tiny_model_dir(), "--data", f"{scene_folder()}/captions.csv"]
    code, _, err = run_cli(capsys, *argv, "--features", store_path, "--steps", "1", "--output-dir", tmp_path / "run")
    assert code == 2
    assert "was built by ColorGridFeaturizer({'grid_size': 3" in err
    assert "the model featurizes images with ColorGridFeaturizer({'grid_size': 2" in err


def test_train_reads_the_one_image_a_line_caption_layout(capsys, tmp_path):
    import json

    data = tmp_path / "captions.jsonl"
    rows = [{"image": f"{scene_folder()}/images/scene_{i:05d}.png", "en": [f"a{i}", f"b{i}"]} for i in range(3)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["train", "be", "--model", tiny_model_dir(), "--data", data, "--steps", "1", "--batch-size", "2"]
    code, out, err = run_cli(capsys, *argv, "--output-dir", tmp_path / "o")
    assert code == 0, err
    assert "on 6 pairs for 1 steps" in out


def build_parser_args(argv: list[str]):
    from mm_sbert.cli.main import build_parser

    return build_parser().parse_args(argv)


def test_train_ce_with_a_similarity_start(capsys, tmp_path):
    output = tmp_path / "run"
    argv = ["train", "ce", "--model", tiny_model_dir(), "--synthetic", "8", "--steps", "2", "--batch-size", "4"]
    code, _, err = run_cli(capsys, *argv, "--similarity-start", "--cross-modal-bias", "-3", "--output-dir", output)
    assert code == 0, err
    trained = MMCrossEncoder(str(output / "final"))[0]
    assert (trained.head_input, trained.cross_modal_bias) == ("cosine_match", -3.0)
    bias = trained.cross_modal_attention_bias
    assert bias.shape == (len(trained.backbone.encoder.layer) - trained.fusion_layer,)
    assert not torch.equal(bias, torch.full_like(bias, -3.0)), "the bias is trained"
    # A new model has no bi-encoder similarity to start from.
    code, _, err = run_cli(capsys, "train", "ce", "--synthetic", "8", "--similarity-start", "--output-dir", output)
    assert code == 2 and "--similarity-start needs" in err


def test_train_ce_with_neighbour_groups_groups_by_the_saved_bi_encoder(capsys, tmp_path, monkeypatch):
    from mm_sbert.training import grouped_batch_sampler, training_recipe

    calls = []

    def recording(model, dataset, group_size, seed=0):
        groups = grouped_batch_sampler.image_neighbour_groups(model, dataset, group_size, seed=seed)
        calls.append((group_size, len(dataset), groups))
        return groups

    monkeypatch.setattr(training_recipe, "image_neighbour_groups", recording)
    output = tmp_path / "run"
    argv = ["train", "ce", "--model", tiny_model_dir(), "--synthetic", "8", "--steps", "2", "--batch-size", "4"]
    code, _, err = run_cli(capsys, *argv, "--ce-loss", "listwise", "--neighbour-groups", "2", "--output-dir", output)
    assert code == 0, err
    ((group_size, rows, groups),) = calls
    assert (group_size, rows) == (2, 24) and sorted(set(groups)) == [0, 1, 2, 3]
    code, _, err = run_cli(capsys, *argv, "--neighbour-groups", "5", "--output-dir", output)
    assert code == 2 and "--neighbour-groups must be between 2 and --batch-size (4), got 5" in err
    code, _, err = run_cli(
        capsys, "train", "be", "--synthetic", "8", "--neighbour-groups", "2", "--output-dir", output
    )
    assert code == 2 and "use it with `ce` or `joint`" in err
    code, _, err = run_cli(
        capsys, "train", "ce", "--synthetic", "8", "--neighbour-groups", "2", "--output-dir", output
    )
    assert code == 2 and "give --model a saved model" in err


def test_train_on_an_image_part_keeps_only_that_parts_images_and_refuses_a_bad_part(capsys, tmp_path):
    import json

    from mm_sbert.cli.train import image_part

    data = tmp_path / "captions.jsonl"
    rows = [{"image": f"{scene_folder()}/images/scene_{i:05d}.png", "en": [f"a{i}", f"b{i}"]} for i in range(8)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["train", "be", "--data", str(data), "--output-dir", str(tmp_path / "o")]
    assert build_parser_args([*argv, "--image-part", "2/3"]).image_part == (2, 3) == image_part("2/3")
    for bad in ("2", "0/2", "3/2", "1/1", "a/b"):
        code, _, err = run_cli(capsys, *argv, "--image-part", bad, "--steps", "1")
        assert code == 2 and "--image-part" in err and bad in err, (bad, err)
    # Trained on one part: as many pairs as that part's captions.
    argv = ["train", "be", "--model", tiny_model_dir(), "--data", data, "--steps", "1", "--batch-size", "2"]
    code, out, err = run_cli(capsys, *argv, "--image-part", "1/2", "--output-dir", tmp_path / "part")
    assert code == 0, err
    from mm_sbert.data import ImageCaptionCorpus

    pairs = len(ImageCaptionCorpus.from_flickr8k_jsonl(str(data)).image_part(1, 2))
    assert 0 < pairs < 16 and f"on {pairs} pairs" in out


def _trained_views(folder) -> list[str] | None:
    import json

    return json.loads((folder / "mm_transformer_config.json").read_text())["trained_views"]


def test_training_records_the_views_its_objectives_trained(capsys, tmp_path):
    argv = ["--synthetic", "8", "--steps", "2", "--batch-size", "4"]
    code, out, err = run_cli(
        capsys, "train", "be", "--model", tiny_model_dir(), *argv, "--output-dir", tmp_path / "be"
    )
    assert code == 0, err
    assert _trained_views(tmp_path / "be" / "final") == ["bi_encoder"]
    assert "trained views: bi_encoder" in out
    code, _, err = run_cli(
        capsys, "train", "ce", "--model", tmp_path / "be" / "final", *argv, "--output-dir", tmp_path / "ce"
    )
    assert code == 0, err
    assert _trained_views(tmp_path / "ce" / "final") == ["bi_encoder", "cross_encoder"]
    # A new score head on the trained bi-encoder has learned nothing yet.
    code, _, err = run_cli(
        capsys,
        "train",
        "be",
        "--model",
        tmp_path / "ce" / "final",
        *argv,
        "--head-input",
        "mean",
        "--output-dir",
        tmp_path / "be2",
    )
    assert code == 0, err
    assert _trained_views(tmp_path / "be2" / "final") == ["bi_encoder"]


def test_training_on_fewer_pairs_than_one_batch_refuses_instead_of_reporting_steps_it_did_not_take(capsys, tmp_path):
    # 2 synthetic scenes x 3 captions = 6 pairs; a batch of 8 never fills, so the old code took 0 steps and printed
    # "Trained a be model on 6 pairs for 3 steps".
    argv = ["train", "be", "--model", tiny_model_dir(), "--synthetic", "2", "--steps", "3", "--batch-size", "8"]
    code, out, err = run_cli(capsys, *argv, "--output-dir", tmp_path / "run")
    assert code == 2, out
    assert "holds 6 pairs, fewer than one batch of 8" in err and "Trained" not in out
    assert not (tmp_path / "run" / "final").exists()
    code, out, err = run_cli(capsys, *argv[:-1], "6", "--output-dir", tmp_path / "run")
    assert code == 0, err
    assert "on 6 pairs for 3 steps" in out


def test_recipe_fills_what_the_command_line_leaves_out(capsys, tmp_path):
    from mm_sbert.training.published_recipes import PUBLISHED_RECIPES

    argv = ["train", "be", "--model", tiny_model_dir(), "--synthetic", "8", "--recipe", "flickr8k", "--steps", "1"]
    code, out, err = run_cli(capsys, *argv, "--batch-size", "4", "-o", tmp_path / "o")
    assert code == 0, err
    applied = {k: v for k, v in PUBLISHED_RECIPES["flickr8k"]["be"].items() if k not in ("steps", "batch_size")}
    (line,) = [line for line in out.splitlines() if line.startswith("Recipe flickr8k (be): ")]
    assert all(f"--{name.replace('_', '-')} {value}" in line for name, value in applied.items())
    assert "--steps" not in line and "--batch-size" not in line  # given on the command line: not the recipe's


def test_the_flickr8k_script_trains_with_the_recipe_the_docs_quote():
    """benchmarks/flickr8k_train.sh and docs/training.md name the recipe instead of repeating its settings."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    script = (root / "benchmarks" / "flickr8k_train.sh").read_text()
    for regime in ("be", "ce", "joint"):
        assert f"mm-sbert train {regime} --recipe flickr8k" in script
    assert "--head-input" not in script and "--fusion-layer" not in script
    assert "mm-sbert train be --recipe flickr8k" in (root / "docs" / "training.md").read_text()


def test_bad_data_fails_before_any_model_loads(capsys, tmp_path, monkeypatch):
    from mm_sbert.modules import MultimodalTransformer

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the data was checked")

    monkeypatch.setattr(MultimodalTransformer, "load", no_model)
    monkeypatch.setattr(MultimodalTransformer, "__init__", no_model)
    bad = tmp_path / "captions.jsonl"
    bad.write_text('{"image": "x.jpg", "en": "a string, not a list"}\n')
    for argv in (
        ["train", "be", "--model", tiny_model_dir(), "--output-dir", tmp_path / "o"],
        ["evaluate", "--model", tiny_model_dir()],
    ):
        code, _, err = run_cli(capsys, *argv, "--data", bad)
        assert code == 2 and "'en' must be a list of caption strings" in err, err
