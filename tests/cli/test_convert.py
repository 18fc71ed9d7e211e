from __future__ import annotations

import json

import torch
from cli_helpers import run_cli
from original_models import (
    m3p_trainer_checkpoint,
    oscar_config,
    random_m3p_state_dict,
    random_oscar_state_dict,
)
from tiny_models import tiny_bert_tokenizer, tiny_xlmr_tokenizer

from mm_sbert import MMCrossEncoder, MMSentenceTransformer


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
    assert code == 0 and "--checkpoint" in out and "--head-score" in out and "--fresh-head" in out
    code, _, err = run_cli(
        capsys, "convert", "--format", "oscar", "--checkpoint", tmp_path / "none", "--output", tmp_path / "o"
    )
    assert code == 2 and f"No OSCAR checkpoint at {tmp_path / 'none'}" in err  # docs/cli.md: 2 = missing input
    code, _, err = run_cli(capsys, "convert", "--format", "oscar", "--output", tmp_path / "o")
    assert code == 2 and "--checkpoint" in err
    code, _, err = run_cli(
        capsys,
        "convert",
        "--format",
        "oscar",
        "--checkpoint",
        tmp_path,
        "--output",
        tmp_path / "o",
        "--head-score",
        "x",
    )
    assert code == 2 and "invalid choice: 'x'" in err


def test_convert_config_that_is_not_a_json_object_exits_2(capsys, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    config = oscar_config(len(tiny_bert_tokenizer()))
    torch.save(random_oscar_state_dict(config), checkpoint / "pytorch_model.bin")
    (tmp_path / "list.json").write_text(json.dumps([config]))
    argv = ["convert", "--format", "oscar", "--checkpoint", checkpoint, "--config", tmp_path / "list.json"]
    code, _, err = run_cli(capsys, *argv, "--output", tmp_path / "o")
    assert code == 2, err
    assert f"{tmp_path / 'list.json'} must hold a JSON object" in err and "AttributeError" not in err


def test_convert_an_m3p_training_checkpoint_with_its_matching_head(capsys, tmp_path):
    tokenizer = tiny_xlmr_tokenizer()
    state_dict = random_m3p_state_dict(len(tokenizer), feature_dim=16)
    params = {"n_heads": 4, "pad_index": 1, "n_words": len(tokenizer), "dropout": 0.1}
    torch.save(m3p_trainer_checkpoint(state_dict, params), tmp_path / "checkpoint.pth")
    tokenizer.save_pretrained(str(tmp_path))
    argv = ["convert", "--format", "m3p", "--checkpoint", tmp_path / "checkpoint.pth"]
    code, out, err = run_cli(capsys, *argv, "--output", tmp_path / "zero_shot")
    assert code == 0, err
    assert "reranks zero-shot" in out and "cross-encoder score: sigmoid of M3P's own image-text matching logit" in out
    assert torch.equal(
        MMCrossEncoder(str(tmp_path / "zero_shot"))[0].classifier.weight, state_dict["seq_relationship.weight"]
    )
    code, out, err = run_cli(capsys, *argv, "--output", tmp_path / "fresh", "--fresh-head")
    assert code == 0, err
    assert "freshly initialised: classifier.bias, classifier.weight" in out
