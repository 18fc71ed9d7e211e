from __future__ import annotations

import pytest
from PIL import Image

from mm_sbert.data.image_files import list_image_files
from mm_sbert.errors import InvalidInputError, MissingFileError, UnsafePathError


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


def test_a_link_leading_out_of_a_named_folder_is_refused_a_linked_folder_named_itself_is_read(tmp_path):
    private = _image(tmp_path / "private" / "secret.png")
    photos = tmp_path / "photos"
    own = _image(photos / "a.png")
    (photos / "b.png").symlink_to(own)  # a link inside the folder, to the folder's own image: read (once)
    assert list_image_files([photos]) == [own]
    (photos / "c.png").symlink_to(private)
    with pytest.raises(UnsafePathError, match=r"'.*c\.png' in the folder .* is a link to '.*secret\.png', outside"):
        list_image_files([photos])
    (photos / "c.png").unlink()
    (photos / "sub").symlink_to(private.parent, target_is_directory=True)
    (photos / "d.png").symlink_to(photos / "sub" / "secret.png")  # through a linked subfolder: still outside
    with pytest.raises(UnsafePathError, match="d.png"):
        list_image_files([photos])
    (photos / "d.png").unlink()
    (tmp_path / "alias").symlink_to(photos, target_is_directory=True)  # the folder the user named is a link: fine
    assert list_image_files([tmp_path / "alias"]) == [tmp_path / "alias" / "a.png"]
    assert list_image_files([photos, tmp_path / "private" / "secret.png"])[-1].name == "secret.png"  # named itself
