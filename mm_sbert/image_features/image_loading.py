from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


class ImageLoadError(ValueError):
    """An image file is missing, unreadable or corrupt. The message names the file."""


def looks_like_image_path(value: str) -> bool:
    """True for strings that end in a known image file extension (the host's own rule for image paths)."""
    return value.lower().rstrip().endswith(IMAGE_EXTENSIONS)


# What a retrieval item or query is: a caption, or an image (PIL image, image path, RegionFeatures, array). The host's
# own ``Modality`` (sentence_transformers.base.modality_types) names what a module accepts; this names one input.
ItemKind = Literal["text", "image"]


def is_text(value: Any) -> bool:
    """A caption, as opposed to an image (PIL image, image path, RegionFeatures, array)."""
    return isinstance(value, str) and not looks_like_image_path(value)


def load_image(image: str | os.PathLike | Image.Image | np.ndarray | torch.Tensor) -> Image.Image:
    """Return an RGB PIL image from a path, PIL image or ``(H, W, C)`` / ``(C, H, W)`` array.

    EXIF orientation is applied, so a photo is featurized the way a viewer shows it. An image read from a file
    carries its path in ``image.info["source_path"]`` (box sources and caches key on it).

    Raises:
        ImageLoadError: the path does not exist or the file is not a readable image.
    """
    if isinstance(image, Image.Image):
        return _to_rgb(image, "The image")
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return _array_to_image(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageLoadError(f"Image file not found: '{path}'")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = _to_rgb(ImageOps.exif_transpose(opened), f"Image file '{path}'")
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ImageLoadError(f"Could not read image file '{path}' (corrupt or not an image): {exc}") from exc
        image.info["source_path"] = str(path)
        return image
    raise TypeError(f"Expected an image path, PIL image or array, got {type(image).__name__}")


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """RGB with 8 bits per channel; 16-bit and 32-bit grey images are scaled, not clipped.

    Pillow's own ``convert("RGB")`` clips an ``I;16`` / ``I`` / ``F`` image to 0..255, so a 16-bit PNG (values up to
    65535) comes out all white.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        return _grey_to_rgb(np.asarray(image, dtype=np.float64) / 257.0)
    if image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = float(values.max(initial=0))
        if not np.isfinite(values).all() or float(values.min(initial=0)) < 0 or peak > 65535:
            raise ImageLoadError(
                f"{name} is a {image.mode}-mode (32-bit) image with values in [{values.min():.6g}, {peak:.6g}]; "
                "mm_sbert reads 8-bit and 16-bit images only: convert it to 8-bit RGB first"
            )
        # Mode I holds 16-bit PNGs in older Pillow versions and 8-bit data widened by conversions: a peak above
        # 255 can only be 16-bit data. Mode F values up to 1 are intensities in [0, 1].
        scale = 255.0 if image.mode == "F" and peak <= 1.0 else 1.0 if peak <= 255 else 1 / 257.0
        return _grey_to_rgb(values * scale)
    return image.convert("RGB")


def _grey_to_rgb(values: np.ndarray) -> Image.Image:
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), mode="RGB")


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
