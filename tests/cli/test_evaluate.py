from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import run_cli, scene_folder, tiny_model_dir

from mm_sbert.cli.demo_evaluation import recall_from_rankings


def test_evaluate_tiny_model_on_a_caption_file(capsys, tmp_path):
    output = tmp_path / "metrics.json"
    code, out, err = run_cli(
        capsys,
        "evaluate",
        "--model",
        tiny_model_dir(),
        "--data",
        f"{scene_folder()}/captions.csv",
        "--modes",
        "be,ce,coop",
        "--top-k",
        "3",
        "--output",
        output,
    )
    assert code == 0, err
    assert "8 images, 16 captions" in out
    metrics = json.loads(output.read_text())
    assert metrics["ce_pairs"] == 16 * 8
    # Coop reranks the BE top-3 in both directions: at most 16*3 + 8*3 distinct pairs.
    assert 0 < metrics["coop_pairs"] <= 16 * 3 + 8 * 3
    for mode in ("be", "ce", "coop"):
        for direction in ("t2i", "i2t"):
            values = [metrics[f"{mode}_{direction}_r@{k}"] for k in (1, 5, 10)]
            assert all(0 <= v <= 100 for v in values) and values == sorted(values)
    # With 8 images, any caption's image is among the top 10 of a full ranking.
    assert metrics["be_t2i_r@10"] == 100.0 and metrics["ce_t2i_r@10"] == 100.0


def test_evaluate_synthetic_and_bad_modes(capsys):
    code, out, _ = run_cli(capsys, "evaluate", "--model", tiny_model_dir(), "--synthetic", "5", "--modes", "be")
    assert code == 0 and "5 images, 5 captions" in out and "Coop" not in out
    code, _, err = run_cli(capsys, "evaluate", "--model", tiny_model_dir(), "--synthetic", "5", "--modes", "be,xx")
    assert code == 2 and "expected a comma-separated subset of be, ce, coop" in err


def test_recall_from_rankings_by_hand():
    # 3 captions of images [0, 0, 1]; 2 images.
    t2i = np.array([[1, 0], [0, 1], [0, 1]])
    i2t = np.array([[2, 0, 1], [0, 1, 2]])
    recall = recall_from_rankings(t2i, i2t, [0, 0, 1], ks=(1, 2))
    assert recall["t2i"] == pytest.approx({1: 100 / 3, 2: 100.0})
    # image 0: first hit (caption 0) at rank 2; image 1: its caption 2 at rank 3
    assert recall["i2t"] == {1: 0.0, 2: 50.0}
