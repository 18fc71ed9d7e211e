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
