"""The training examples run end to end (tiny backbone, 2 steps) and save a model that loads as both views."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import tiny_bert

from mm_sbert import MMCrossEncoder, MMSentenceTransformer

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
    assert MMSentenceTransformer(str(final), device="cpu")[0] is not None
    assert MMCrossEncoder(str(final), device="cpu")[0].classifier is not None
