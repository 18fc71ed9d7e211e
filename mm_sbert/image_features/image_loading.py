from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mm_sbert.errors import ImageLoadError, InvalidInputTypeError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


__all__ = ["IMAGE_EXTENSIONS", "ImageLoadError", "check_image_file", "load_image", "looks_like_image_path"]


def looks_like_image_path(value: str) -> bool:
    """True for strings that end in a known image file extension (the host's own rule for image paths)."""
    return value.lower().rstrip().endswith(IMAGE_EXTENSIONS)


def check_image_file(path: str | os.PathLike, what: str = "Image file") -> Path:
    """``path`` as a Path when it names a readable file, else :class:`ImageLoadError` with the true cause: not found,
    a folder, a dangling symbolic link, a symbolic link loop, or not readable."""
    path = Path(path)
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageLoadError(f"{what} '{path}' is a symbolic link loop (it leads back to itself)") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise ImageLoadError(f"{what} '{path}' cannot be read: permission denied") from None
        if os.path.islink(path):
            raise ImageLoadError(
                f"{what} '{path}' is a symbolic link to '{os.readlink(path)}', which does not exist"
            ) from None
        if exc.errno == errno.ENOENT:
            raise ImageLoadError(f"{what} not found: '{path}'") from None
        raise ImageLoadError(f"{what} '{path}' cannot be read: {exc.strerror}") from None
    if path.is_dir():
        raise ImageLoadError(f"{what} '{path}' is a folder, not an image file")
    if not path.is_file():
        raise ImageLoadError(f"{what} '{path}' is not a regular file (a device, socket or pipe)")
    return path


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
        ImageLoadError: the path names no readable file (not found, a folder, a symbolic link loop, no permission),
            the file is not a readable image or bigger than Pillow's decompression-bomb limit, or an array holds
            values with no meaning as pixels (NaN, negative, above its type's range).
    """
    if isinstance(image, Image.Image):
        return _to_rgb(image, "The image")
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return _array_to_image(image)
    if isinstance(image, (str, os.PathLike)):
        path = check_image_file(image)
        try:
            with Image.open(path) as opened:
                opened.load()
                image = _to_rgb(ImageOps.exif_transpose(opened), f"Image file '{path}'")
        except Image.DecompressionBombError as exc:
            raise ImageLoadError(
                f"Could not read image file '{path}' (refused as a decompression bomb): {exc}"
            ) from exc
        except PermissionError as exc:
            raise ImageLoadError(f"Image file '{path}' cannot be read: permission denied") from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ImageLoadError(f"Could not read image file '{path}' (corrupt or not an image): {exc}") from exc
        image.info["source_path"] = str(path)
        return image
    raise InvalidInputTypeError(f"Expected an image path, PIL image or array, got {type(image).__name__}")


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """RGB with 8 bits per channel; 16-bit and 32-bit grey images are scaled, not clipped.

    Pillow's own ``convert("RGB")`` clips an ``I;16`` / ``I`` / ``F`` image to 0..255, so a 16-bit PNG (values up to
    65535) comes out all white.
    """
    if not image.width or not image.height:
        # As for arrays: a featurizer would read an image without pixels as a black one.
        raise ImageLoadError(f"{name} has no pixels ({image.width}x{image.height})")
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
    """An RGB image from an array, by the documented meaning of its type: ``uint8`` as is, ``uint16`` like a 16-bit
    PNG (divided by 257), floats in ``[0, 1]`` as intensities and in ``[0, 255]`` as 8-bit values, other integers in
    ``[0, 255]``. Anything else (NaN, negative values, values above the range, booleans) is refused, not clipped."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().float().numpy() if array.dtype == torch.bfloat16 else array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim != 3:
        raise ImageLoadError(f"An image array must have 3 dimensions (H, W, C) or (C, H, W), got shape {array.shape}")
    if array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.transpose(array, (1, 2, 0))
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.shape[-1] != 3:
        raise ImageLoadError(f"An image array needs 1 or 3 colour channels, got shape {array.shape}")
    if not array.size:
        raise ImageLoadError(f"The image array has no pixels (shape {array.shape})")
    if array.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(array), mode="RGB")
    if array.dtype == np.uint16:
        return Image.fromarray(np.rint(array / 257.0).astype(np.uint8), mode="RGB")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageLoadError(f"An image array must hold numbers, got dtype {array.dtype}")
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise ImageLoadError(
            f"The image array holds NaN or infinite values ({int((~np.isfinite(values)).sum())} of {values.size}); "
            "they are no pixel values: fill or drop them first"
        )
    low, peak = float(values.min()), float(values.max())
    if low < 0 or peak > 255:
        raise ImageLoadError(
            f"The {array.dtype} image array holds values in [{low:.6g}, {peak:.6g}]; mm_sbert reads uint8, uint16, "
            "floats in [0, 1] or [0, 255] and integers in [0, 255]: rescale it first"
        )
    scale = 255.0 if np.issubdtype(array.dtype, np.floating) and peak <= 1.0 else 1.0
    return Image.fromarray(np.rint(values * scale).astype(np.uint8), mode="RGB")
