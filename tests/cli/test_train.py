from __future__ import annotations

import pytest
import torch
from cli_helpers import run_cli, tiny_model_dir

pytest.importorskip("mm_sbert.training", reason="mm_sbert.training (JointTrainer) is not on this branch yet")
pytest.importorskip("mm_sbert.losses", reason="mm_sbert.losses is not on this branch yet")

from mm_sbert import MMCrossEncoder, MMSentenceTransformer  # noqa: E402


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
    assert code == 2 and "--steps must be >= 1" in err
    code, _, err = run_cli(capsys, "train", "be", "--data", tmp_path / "none.csv", "--output-dir", tmp_path)
    assert code in (2, 3)


def test_train_ce_with_the_listwise_loss_and_a_matching_head(capsys, tmp_path):
    output = tmp_path / "run"
    argv = ["train", "ce", "--model", tiny_model_dir(), "--synthetic", "8", "--steps", "2", "--batch-size", "4"]
    code, out, err = run_cli(capsys, *argv, "--ce-loss", "listwise", "--ce-negatives", "2", "--output-dir", output)
    assert code == 0, err
    before = MMSentenceTransformer(tiny_model_dir())[0]
    trained = MMCrossEncoder(str(output / "final"))[0]
    assert not torch.equal(before.classifier.weight, trained.classifier.weight)
    # --head-input only shapes a NEW model; a saved folder keeps its own head.
    assert trained.head_input == before.head_input
    code, _, err = run_cli(capsys, *argv, "--ce-negatives", "0", "--output-dir", output)
    assert code == 2 and "--ce-negatives must be >= 1" in err


def test_new_model_gets_the_requested_head_input(tmp_path):
    from mm_sbert.cli.train import build_model

    backbone = tmp_path / "backbone"
    MMSentenceTransformer(tiny_model_dir())[0].backbone.save_pretrained(str(backbone))
    MMSentenceTransformer(tiny_model_dir())[0].tokenizer.save_pretrained(str(backbone))
    model = build_model(str(backbone), grid_size=2, head_input="text_image_match", fusion_layer=1)
    assert model[0].head_input == "text_image_match"
    assert model[0].classifier.in_features == 4 * model[0].backbone.config.hidden_size
    assert model[0].fusion_layer == 1


def test_fusion_layer_beyond_the_backbone_is_a_cli_error(tmp_path):
    from mm_sbert.cli.common import CLIError
    from mm_sbert.cli.train import build_model

    backbone = tmp_path / "backbone"
    MMSentenceTransformer(tiny_model_dir())[0].backbone.save_pretrained(str(backbone))
    MMSentenceTransformer(tiny_model_dir())[0].tokenizer.save_pretrained(str(backbone))
    layers = MMSentenceTransformer(tiny_model_dir())[0].backbone.config.num_hidden_layers
    with pytest.raises(CLIError, match=f"fusion_layer must be between 0 and {layers - 1}"):
        build_model(str(backbone), grid_size=2, fusion_layer=layers)
