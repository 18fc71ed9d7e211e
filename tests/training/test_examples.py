"""The training examples run end to end (tiny backbone, 2 steps) and save a model that loads as both views."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_bert

from mm_sbert import MMCrossEncoder, MMSentenceTransformer
from mm_sbert.demo import color_swatches
from mm_sbert.evaluation import ImageTextRetrievalEvaluator

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "script",
    [
        # The joint script exercises all of common.py; the others only add ~30 s each to the default suite.
        pytest.param("train_bi_encoder.py", marks=pytest.mark.slow),
        pytest.param("train_cross_encoder.py", marks=pytest.mark.slow),
        "train_joint.py",
    ],
)
def test_example_trains_evaluates_and_saves(tmp_path, script):
    backbone, tokenizer = tiny_bert()
    backbone.save_pretrained(tmp_path / "backbone")
    tokenizer.save_pretrained(tmp_path / "backbone")
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
    )
    command = [
        sys.executable, str(ROOT / "training_examples" / script), "--model", str(tmp_path / "backbone"),
        "--output-dir", str(tmp_path / "out"), "--max-steps", "2", "--batch-size", "4", "--threads", "1",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "t2i_r@1" in result.stdout and "before" in result.stdout
    assert "_loss" in result.stdout + result.stderr  # the per-objective loss in the logs
    final = tmp_path / "out" / "final"
    bi_encoder = MMSentenceTransformer(str(final), device="cpu")
    cross_encoder = MMCrossEncoder(str(final), device="cpu")
    # One joint folder: both views read the same weights, score head included.
    torch.testing.assert_close(cross_encoder[0].classifier.weight, bi_encoder[0].classifier.weight, rtol=0, atol=0)
    # The printed "after" recall is the saved model's: evaluating the reloaded folder on the same data (the small
    # demo's 24 generated swatches) gives the same numbers.
    printed = {
        match.group(1): float(match.group(2))
        for match in re.finditer(r"^(eval_\w+_r@\d+)\s+\S+\s+(\d\.\d{3})$", result.stdout, re.M)
    }
    images, captions, gold = color_swatches(num_images=24, captions_per_image=3, image_size=64).evaluation_data()
    modes = ("be",) if script == "train_bi_encoder.py" else ("be", "coop")
    expected = ImageTextRetrievalEvaluator(images, captions, gold, modes=modes, name="eval")(bi_encoder)
    assert set(printed) == {key for key in expected if "r@" in key}
    for key, value in printed.items():
        assert value == pytest.approx(expected[key], abs=5e-4), key
