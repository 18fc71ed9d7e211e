from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mm_sbert import ImageLoadError
from mm_sbert.image_features import load_image


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ImageLoadError, match="not found: '.*missing.jpg'"):
        load_image(tmp_path / "missing.jpg")


def test_corrupt_file_names_the_path(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        load_image(str(path))


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (40, 20), "red")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_greyscale_and_arrays_become_rgb(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (8, 8), 128).save(path)
    assert load_image(path).mode == "RGB"
    chw = np.ones((3, 8, 6), dtype=np.float32)
    loaded = load_image(chw)
    assert loaded.size == (6, 8) and loaded.getpixel((0, 0)) == (255, 255, 255)


def test_a_16_bit_png_is_scaled_to_8_bit_not_clipped_to_white(tmp_path):
    values = np.linspace(39064, 62708, 6 * 4).reshape(4, 6).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    loaded = np.asarray(load_image(path))
    expected = np.rint(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(loaded, np.repeat(expected[:, :, None], 3, axis=2))
    assert (loaded.min(), loaded.max()) == (152, 244)


def test_32_bit_grey_images_are_scaled_or_refused():
    sixteen_bit_range = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert sixteen_bit_range.mode == "I"
    assert np.asarray(load_image(sixteen_bit_range))[0, :, 0].tolist() == [0, 255]
    eight_bit_range = Image.fromarray(np.array([[0, 200]], dtype=np.int32))
    assert np.asarray(load_image(eight_bit_range))[0, :, 0].tolist() == [0, 200]
    unit_floats = Image.fromarray(np.array([[0.0, 0.5]], dtype=np.float32))
    assert np.asarray(load_image(unit_floats))[0, :, 0].tolist() == [0, 128]
    with pytest.raises(ImageLoadError, match=r"I-mode \(32-bit\) image with values in \[0, 100000\]"):
        load_image(Image.fromarray(np.array([[0, 100000]], dtype=np.int32)))


# ---------------------------------------------------------------------------------------------- issue 29: true causes


def test_a_folder_named_like_an_image_is_a_folder_not_missing(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(ImageLoadError, match=r"'.*x.jpg' is a folder, not an image file"):
        load_image(tmp_path / "x.jpg")


def test_a_symlink_loop_and_a_dangling_link_say_so(tmp_path):
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    with pytest.raises(ImageLoadError, match="is a symbolic link loop"):
        load_image(loop)
    dangling = tmp_path / "dangling.jpg"
    dangling.symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(ImageLoadError, match=r"is a symbolic link to '.*gone.jpg', which does not exist"):
        load_image(dangling)


def test_an_unreadable_file_says_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    Image.new("RGB", (4, 4)).save(path)

    def denied(*args, **kwargs):  # tests may run as root, who reads any file: the OS's answer, simulated
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(ImageLoadError, match=r"'.*locked.png' cannot be read: permission denied"):
        load_image(path)


def test_a_decompression_bomb_is_a_package_error_naming_the_file(tmp_path, monkeypatch):
    from mm_sbert.errors import MMSbertError

    bomb = tmp_path / "bomb.png"
    Image.new("RGB", (200, 200)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(MMSbertError, match=r"'.*bomb.png' \(refused as a decompression bomb\)"):
        load_image(bomb)


def test_the_module_reports_the_true_cause_for_image_paths(tmp_path):
    from tests.conftest import build_module

    module = build_module("bert")
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(ImageLoadError, match=r"Input 1: image file '.*x.jpg' is a folder"):
        module.preprocess(["a caption", str(tmp_path / "x.jpg")])


# ---------------------------------------------------------------------------------------------- issue 29: arrays


def test_a_uint16_array_is_scaled_like_a_16_bit_png_not_white():
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    loaded = np.asarray(load_image(np.repeat(values[:, :, None], 3, axis=2)))
    assert loaded[0, :, 0].tolist() == [0, 100, 255]


def test_nan_pixels_are_refused_not_black():
    array = np.full((4, 4, 3), 0.5, dtype=np.float32)
    array[1, 2, 0] = np.nan
    with pytest.raises(ImageLoadError, match=r"holds NaN or infinite values \(1 of 48\)"):
        load_image(array)


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.full((2, 2, 3), -0.5, np.float32), r"values in \[-0.5, -0.5\]"),
        (np.full((2, 2, 3), 300, np.int32), r"int32 image array holds values in \[300, 300\]"),
        (np.full((2, 2, 3), 1000.0, np.float64), "rescale it first"),
        (np.ones((2, 2, 3), bool), "must hold numbers"),
    ],
)
def test_arrays_outside_a_documented_range_are_refused_not_clipped(array, expected):
    with pytest.raises(ImageLoadError, match=expected):
        load_image(array)


def test_documented_array_ranges_are_read():
    assert np.asarray(load_image(np.full((2, 2, 3), 1.0, np.float32))).max() == 255
    assert np.asarray(load_image(np.full((2, 2, 3), 128.0, np.float64))).max() == 128
    assert np.asarray(load_image(np.full((2, 2, 3), 7, np.int64))).max() == 7
