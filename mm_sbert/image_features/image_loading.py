from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


class ImageLoadError(ValueError):
    """An image file is missing, unreadable or corrupt. The message names the file."""


def looks_like_image_path(value: str) -> bool:
    """True for strings that end in a known image file extension (the host's own rule for image paths)."""
    return value.lower().rstrip().endswith(IMAGE_EXTENSIONS)


def load_image(image: str | os.PathLike | Image.Image | np.ndarray | torch.Tensor) -> Image.Image:
    """Return an RGB PIL image from a path, PIL image or ``(H, W, C)`` / ``(C, H, W)`` array.

    EXIF orientation is applied, so a photo is featurized the way a viewer shows it. An image read from a file
    carries its path in ``image.info["source_path"]`` (box sources and caches key on it).

    Raises:
        ImageLoadError: the path does not exist or the file is not a readable image.
    """
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return _array_to_image(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageLoadError(f"Image file not found: '{path}'")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened).convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ImageLoadError(f"Could not read image file '{path}' (corrupt or not an image): {exc}") from exc
        image.info["source_path"] = str(path)
        return image
    raise TypeError(f"Expected an image path, PIL image or array, got {type(image).__name__}")


def _array_to_image(array: np.ndarray | torch.Tensor) -> Image.Image:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    if array.ndim != 3:
        raise ValueError(f"An image array must have 3 dimensions (H, W, C) or (C, H, W), got shape {array.shape}")
    if array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.transpose(array, (1, 2, 0))
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.shape[-1] != 3:
        raise ValueError(f"An image array needs 1 or 3 colour channels, got shape {array.shape}")
    if array.dtype != np.uint8:
        scale = 255.0 if float(array.max(initial=0)) <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).astype(np.uint8)
    return Image.fromarray(array, mode="RGB")
