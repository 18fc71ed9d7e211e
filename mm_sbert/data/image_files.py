"""The image files of a list of files and folders, as ``mm-sbert featurize`` and ``mm-sbert index`` read them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mm_sbert.errors import InvalidInputError, MissingFileError, UnsafePathError
from mm_sbert.image_features.image_loading import IMAGE_EXTENSIONS
from mm_sbert.storage import lies_inside


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
        UnsafePathError: a folder's image is a link (or inside a linked subfolder) that leads out of that folder.
    """
    # Each image with the folder it was found in (None: named itself), which a link may not lead out of.
    images: list[tuple[Path, Path | None]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise MissingFileError(f"Image path '{raw}' does not exist")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise InvalidInputError(f"The folder '{raw}' holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            images.extend((image, path) for image in found)
        else:
            images.append((path, None))
    seen: set[Path] = set()
    unique = []
    for image, folder in images:
        resolved = image.resolve()
        # A link inside a named folder may not make mm_sbert read a file the user did not name.
        if folder is not None and not lies_inside(resolved, folder):
            raise UnsafePathError(
                f"The image '{image}' in the folder '{folder}' is a link to '{resolved}', outside that folder; name "
                "the file it points to by its own path, or copy it into the folder"
            )
        if resolved not in seen:
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


def featurize_files(
    paths: Iterable[str | os.PathLike],
    output: str | os.PathLike,
    featurizer: Any,
    *,
    batch_size: int = 32,
    shard_size: int = 1024,
    dtype: str = "float32",
    inputs: Iterable[str | os.PathLike | None] = (),
    warn_failures: bool = True,
    processes: int = 1,
) -> Any:
    """Featurize the image files among ``paths`` (:func:`list_image_files`) into the feature store ``output``, as
    ``mm-sbert featurize`` does: the output is checked before any image is read (it may not be, or hold, one of
    ``paths`` or ``inputs``, nor a folder mm_sbert did not write), and the images' ids are their file names
    without extension, so two images may not share one. A store of the same settings resumes
    (:meth:`~mm_sbert.image_features.FeatureStore.build`).

    Args:
        warn_failures: warn about unreadable images (they are skipped either way and listed in ``store.failed``).
        processes: worker processes that featurize (:meth:`~mm_sbert.image_features.FeatureStore.build`).

    Returns:
        The :class:`~mm_sbert.image_features.FeatureStore`.
    """
    import warnings

    from mm_sbert.image_features import FeatureStore
    from mm_sbert.image_features.feature_store import OWNED_KIND
    from mm_sbert.storage import check_output_path

    paths = list(paths)
    check_output_path(output, OWNED_KIND, folder=True, inputs=[*paths, *inputs], what="The feature store")
    images = list_image_files(paths, unique_names=True)
    with warnings.catch_warnings():
        if not warn_failures:
            warnings.filterwarnings("ignore", message=r".* images could not be read", category=UserWarning)
        return FeatureStore.build(
            output,
            [str(path) for path in images],
            featurizer,
            batch_size=batch_size,
            shard_size=shard_size,
            dtype=dtype,
            processes=processes,
        )
