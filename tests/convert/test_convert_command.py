from __future__ import annotations

import json

import torch
from original_models import oscar_config, random_oscar_state_dict
from tiny_models import tiny_bert_tokenizer

from mm_sbert import MMCrossEncoder, MMSentenceTransformer
from mm_sbert.convert import main


def write_oscar(folder, state_dict=None) -> str:
    config = oscar_config(len(tiny_bert_tokenizer()))
    folder.mkdir()
    torch.save(state_dict or random_oscar_state_dict(config), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(config))
    tiny_bert_tokenizer().save_pretrained(str(folder))
    return str(folder)


def test_main_converts_an_oscar_checkpoint_into_a_folder_both_views_load(tmp_path, capsys):
    checkpoint = write_oscar(tmp_path / "checkpoint")
    output = str(tmp_path / "converted")
    argv = ["--format", "oscar", "--checkpoint", checkpoint, "--output", output, "--region-feature-dim", "16"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "ignored by design (7): cls.predictions.bias" in printed and "w1 - w0" in printed
    report = json.loads((tmp_path / "converted" / "conversion_report.json").read_text())
    assert report["source_format"] == "oscar" and "cls.seq_relationship.weight" in report["ignored"]
    bi_encoder, cross_encoder = MMSentenceTransformer(output, device="cpu"), MMCrossEncoder(output, device="cpu")
    assert torch.equal(bi_encoder[0].classifier.weight, cross_encoder[0].classifier.weight)
    assert bi_encoder[0].max_seq_length == 70 and bi_encoder[0].region_feature_dim == 16


def test_main_reports_a_refused_checkpoint_and_writes_nothing(tmp_path, capsys):
    state_dict = random_oscar_state_dict(oscar_config(len(tiny_bert_tokenizer())))
    state_dict["bert.pooler.dense.weight"] = torch.zeros(32, 16)
    checkpoint = write_oscar(tmp_path / "checkpoint", state_dict)
    output = tmp_path / "converted"
    assert main(["--format", "oscar", "--checkpoint", checkpoint, "--output", str(output)]) == 2  # invalid input
    error = capsys.readouterr().err
    assert "bert.pooler.dense.weight -> backbone.pooler.dense.weight: checkpoint (32, 16), model (32, 32)" in error
    assert not output.exists()


def test_every_input_error_exits_2_with_a_message_naming_the_input(tmp_path, capsys):
    checkpoint = write_oscar(tmp_path / "checkpoint")
    output = str(tmp_path / "converted")
    config_list = tmp_path / "list.json"
    config_list.write_text("[1, 2]")
    argv = ["--format", "oscar", "--checkpoint", checkpoint, "--output", output, "--config", str(config_list)]
    assert main(argv) == 2
    assert f"The config file {config_list} must hold a JSON object" in capsys.readouterr().err

    (tmp_path / "broken.json").write_text("{")
    assert main([*argv[:-1], str(tmp_path / "broken.json")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err

    for fmt in ("oscar", "m3p"):
        missing = str(tmp_path / "nowhere" / "checkpoint.pth")
        assert main(["--format", fmt, "--checkpoint", missing, "--output", output]) == 2
        error = capsys.readouterr().err
        assert f"No {fmt.upper()} checkpoint at {missing}" in error and "config.json" not in error
    assert not (tmp_path / "converted").exists()


def test_an_output_that_cannot_be_written_exits_1(tmp_path, capsys):
    checkpoint = write_oscar(tmp_path / "checkpoint")
    (tmp_path / "a_file").write_text("")
    argv = ["--format", "oscar", "--checkpoint", checkpoint, "--region-feature-dim", "16"]
    # Beneath a file: nothing can be created there, which shows only when writing (exit 1).
    assert main([*argv, "--output", str(tmp_path / "a_file" / "model")]) == 1
    assert f"could not write the converted model to {tmp_path / 'a_file' / 'model'}" in capsys.readouterr().err
    # An existing file is refused before any work (issue 29: never replace what mm_sbert did not write), exit 2.
    assert main([*argv, "--output", str(tmp_path / "a_file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and (tmp_path / "a_file").read_text() == ""


def test_convert_refuses_a_foreign_folder_and_the_checkpoint_folder(tmp_path, capsys):
    checkpoint = write_oscar(tmp_path / "checkpoint")
    argv = ["--format", "oscar", "--checkpoint", checkpoint, "--region-feature-dim", "16"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("mine")
    assert main([*argv, "--output", str(tmp_path / "notes")]) == 2
    assert "did not write and it is not empty (README.md)" in capsys.readouterr().err
    assert (tmp_path / "notes" / "README.md").read_text() == "mine"
    assert main([*argv, "--output", str(checkpoint)]) == 2
    assert "an input of the same command" in capsys.readouterr().err
    assert main([*argv, "--output", str(tmp_path / "model")]) == 0
    assert main([*argv, "--output", str(tmp_path / "model")]) == 0  # its own model folder may be replaced
