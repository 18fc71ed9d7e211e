from __future__ import annotations

import pytest
from PIL import Image

from mm_sbert.data.image_files import list_image_files
from mm_sbert.errors import InvalidInputError, MissingFileError


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)
    return path


def test_folders_are_searched_recursively_sorted_and_a_file_named_twice_is_listed_once(tmp_path):
    b, a, nested = _image(tmp_path / "b.png"), _image(tmp_path / "a.jpg"), _image(tmp_path / "sub" / "c.png")
    (tmp_path / "notes.txt").write_text("not an image")
    assert list_image_files([tmp_path]) == [a, b, nested]
    assert list_image_files([b, tmp_path]) == [b, a, nested]  # b first, not again from the folder


def test_a_missing_path_or_an_empty_folder_is_refused_naming_it(tmp_path):
    with pytest.raises(MissingFileError, match="Image path '.*nothing.png' does not exist"):
        list_image_files([tmp_path / "nothing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="holds no images"):
        list_image_files([tmp_path / "empty"])


def test_unique_names_refuses_two_images_with_one_file_name(tmp_path):
    first, second = _image(tmp_path / "x" / "cat.png"), _image(tmp_path / "y" / "cat.jpg")
    assert list_image_files([first, second]) == [first, second]
    with pytest.raises(InvalidInputError, match="Two images share the file name 'cat'"):
        list_image_files([first, second], unique_names=True)
