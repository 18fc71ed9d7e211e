from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import run_cli

pytest.importorskip("mm_sbert.convert", reason="mm_sbert.convert is not on this branch yet")

from original_models import oscar_config, random_oscar_state_dict  # noqa: E402
from tiny_models import tiny_bert_tokenizer  # noqa: E402

from mm_sbert import MMCrossEncoder, MMSentenceTransformer  # noqa: E402


def test_convert_passes_its_arguments_to_the_converter(capsys, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    config = oscar_config(len(tiny_bert_tokenizer()))
    torch.save(random_oscar_state_dict(config), checkpoint / "pytorch_model.bin")
    (checkpoint / "config.json").write_text(json.dumps(config))
    tiny_bert_tokenizer().save_pretrained(str(checkpoint))
    output = tmp_path / "converted"
    argv = [
        "convert",
        "--format",
        "oscar",
        "--checkpoint",
        checkpoint,
        "--output",
        output,
        "--region-feature-dim",
        "16",
    ]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "Saved to" in out
    assert torch.equal(
        MMSentenceTransformer(str(output))[0].classifier.weight, MMCrossEncoder(str(output))[0].classifier.weight
    )


def test_convert_help_and_bad_input(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "convert", "--help")
    assert code == 0 and "--checkpoint" in out
    code, _, err = run_cli(
        capsys, "convert", "--format", "oscar", "--checkpoint", tmp_path / "none", "--output", tmp_path / "o"
    )
    assert code != 0 and "error" in err.lower()
