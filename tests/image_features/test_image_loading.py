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
