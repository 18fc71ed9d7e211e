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
