from __future__ import annotations

import json

import pytest
from cli_helpers import scene_folder

from mm_sbert.cli.common import CLIError, list_images, read_caption_file


def test_read_caption_file_groups_captions_by_image():
    images, captions, ids = read_caption_file(f"{scene_folder()}/captions.csv")
    assert len(images) == 8 and len(captions) == 16
    assert ids == [i for i in range(8) for _ in range(2)]
    assert images[3].endswith("scene_00003.png")


def test_read_jsonl_and_tsv(tmp_path):
    image = f"{scene_folder()}/images/scene_00000.png"
    (tmp_path / "a.jsonl").write_text(json.dumps({"caption": "x", "image": image}) + "\n")
    (tmp_path / "a.tsv").write_text(f"caption\timage\ny\t{image}\nz\t{image}\n")
    assert read_caption_file(str(tmp_path / "a.jsonl")) == ([image], ["x"], [0])
    assert read_caption_file(str(tmp_path / "a.tsv")) == ([image], ["y", "z"], [0, 0])


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
    with pytest.raises(CLIError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        read_caption_file(str(path))


def test_list_images_from_folder_and_empty_folder(tmp_path):
    assert len(list_images([f"{scene_folder()}/images"])) == 8
    (tmp_path / "empty").mkdir()
    with pytest.raises(CLIError, match="holds no images"):
        list_images([str(tmp_path / "empty")])
