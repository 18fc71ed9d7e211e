from __future__ import annotations

import argparse
import json

import pytest
import torch
from cli_helpers import run_cli, scene_folder

from mm_sbert.cli.main import build_parser
from mm_sbert.data import ImageCaptionCorpus
from mm_sbert.errors import MMSbertError

read_caption_file = ImageCaptionCorpus.from_file  # the one reader of every command's --data


def test_read_caption_file_groups_captions_by_image():
    images, captions, ids = read_caption_file(f"{scene_folder()}/captions.csv").evaluation_data()
    assert len(images) == 8 and len(captions) == 16
    assert ids == [i for i in range(8) for _ in range(2)]
    assert images[3].endswith("scene_00003.png")


def test_read_jsonl_and_tsv(tmp_path):
    image = f"{scene_folder()}/images/scene_00000.png"
    (tmp_path / "a.jsonl").write_text(json.dumps({"caption": "x", "image": image}) + "\n")
    (tmp_path / "a.tsv").write_text(f"caption\timage\ny\t{image}\nz\t{image}\n")
    assert read_caption_file(str(tmp_path / "a.jsonl")).evaluation_data() == ([image], ["x"], [0])
    assert read_caption_file(str(tmp_path / "a.tsv")).evaluation_data() == ([image], ["y", "z"], [0, 0])


def test_one_image_a_line_and_one_caption_a_row_read_alike(tmp_path):
    """The layouts `train` read and `evaluate` refused before (one reader for every command now)."""
    images = [f"{scene_folder()}/images/scene_{i:05d}.png" for i in range(2)]
    per_image = tmp_path / "per_image.jsonl"
    per_image.write_text(
        "".join(json.dumps({"image": im, "en": [f"a{i}", f"b{i}"]}) + "\n" for i, im in enumerate(images))
    )
    per_caption = tmp_path / "per_caption.csv"
    per_caption.write_text("caption,image\n" + "".join(f"{c}{i},{im}\n" for i, im in enumerate(images) for c in "ab"))
    assert read_caption_file(str(per_image)).evaluation_data() == read_caption_file(str(per_caption)).evaluation_data()


@pytest.mark.parametrize(
    "content, message",
    [
        ("caption,picture\na,b\n", "lacks the column(s) ['image']"),
        ("caption,image\na,missing.png\n", "1 image(s) listed in"),
        ("", "holds no rows"),
    ],
)
def test_bad_caption_files(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(MMSbertError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        read_caption_file(str(path))


def test_a_caption_string_where_a_list_belongs_is_refused_not_split_into_characters(tmp_path):
    image = f"{scene_folder()}/images/scene_00000.png"
    path = tmp_path / "captions.jsonl"
    path.write_text(json.dumps({"image": image, "en": "a red square"}) + "\n")
    with pytest.raises(MMSbertError, match=r"captions.jsonl:1: 'en' must be a list of caption strings, got str"):
        read_caption_file(str(path))


BAD_ARGUMENTS = [
    ("train", "--lr", "-1"),
    ("train", "--lr", "nan"),
    ("train", "--new-lr", "0"),
    ("train", "--batch-size", "0"),
    ("train", "--batch-size", "1"),
    ("train", "--steps", "0"),
    ("train", "--threads", "-1"),
    ("train", "--margin", "-0.1"),
    ("train", "--layers", "0"),
    ("train", "--grid-size", "0"),
    ("train", "--seed", "-3"),
    ("train", "--synthetic", "1"),
    ("train", "--device", "gpu"),
    ("evaluate", "--top-k", "0"),
    ("evaluate", "--batch-size", "0"),
    ("evaluate", "--threads", "-1"),
    ("evaluate", "--lam", "2"),
]


@pytest.mark.parametrize("command, option, value", BAD_ARGUMENTS)
def test_bad_arguments_exit_2_naming_the_option(capsys, tmp_path, command, option, value):
    base = {
        "train": ["train", "be", "--output-dir", tmp_path / "o", "--synthetic", "8"],
        "evaluate": ["evaluate", "--model", tmp_path, "--synthetic", "4"],
    }[command]
    if option == "--synthetic":
        base = base[:-2]
    code, _, err = run_cli(capsys, *base, option, value)
    assert code == 2 and f"argument {option}" in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of a CPU-only build")
def test_device_cuda_on_a_cpu_build_exits_2(capsys, tmp_path):
    argv = ["train", "be", "--synthetic", "8", "--output-dir", tmp_path / "o", "--device", "cuda"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "argument --device: 'cuda': this torch build sees no CUDA device" in err


# The option names whose values are free text or names, not numbers.
NOT_NUMBERS = {"help", "version"}


def _numeric_options():
    """(command, option, type) of every option of every subcommand that argparse converts with a plain int/float."""
    parser = build_parser()
    subparsers = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    for command, subparser in subparsers.choices.items():
        for action in subparser._actions:
            if action.type in (int, float):
                yield command, action.option_strings[0] if action.option_strings else action.dest, action.type


def test_no_option_of_mine_takes_an_unchecked_number():
    """The family rule: every numeric option uses one of cli/common.py's checked types, so a bad value exits 2
    naming the option (a plain int/float lets -1 or 0 through to fail later, with exit 1, or not at all)."""
    unchecked = [(command, option) for command, option, _ in _numeric_options() if command in ("train", "evaluate")]
    assert unchecked == []
