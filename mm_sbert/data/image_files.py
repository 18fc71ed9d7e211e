"""The image files of a list of files and folders, as ``mm-sbert featurize`` and ``mm-sbert index`` read them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from mm_sbert.errors import InvalidInputError, MissingFileError
from mm_sbert.image_features.image_loading import IMAGE_EXTENSIONS


def list_image_files(paths: Iterable[str | os.PathLike], unique_names: bool = False) -> list[Path]:
    """The image files among ``paths``: a file as it is, a folder's image files (suffixes of
    :data:`~mm_sbert.image_features.image_loading.IMAGE_EXTENSIONS`, searched recursively, sorted). A file named
    twice (e.g. a folder and a file in it) is listed once.

    Args:
        paths: image files and folders.
        unique_names: refuse two images with the same file name without extension (the id a feature store gives
            an image).

    Raises:
        MissingFileError: a path does not exist.
        InvalidInputError: a folder holds no image, or (``unique_names``) two images share a name.
    """
    images: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise MissingFileError(f"Image path '{raw}' does not exist")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise InvalidInputError(f"The folder '{raw}' holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            images.extend(found)
        else:
            images.append(path)
    seen: set[Path] = set()
    unique = []
    for image in images:
        if (resolved := image.resolve()) not in seen:
            seen.add(resolved)
            unique.append(image)
    if unique_names:
        stems = [path.stem for path in unique]
        if len(set(stems)) != len(stems):
            duplicate = next(stem for stem in stems if stems.count(stem) > 1)
            raise InvalidInputError(
                f"Two images share the file name '{duplicate}' (ids are file names without extension)"
            )
    return unique
