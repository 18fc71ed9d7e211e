"""What the subcommands share: user-facing errors, model loading, reading image folders and caption files."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Re-exported: the one list of image suffixes lives with the image loading.
from mm_sbert.image_features.image_loading import IMAGE_EXTENSIONS  # noqa: F401
from mm_sbert.retrieval.score_combination import SCORE_MODES

# Exit codes a shell script can branch on.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_MISSING_COMPONENT = 3
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """A problem the user can fix (bad argument, missing file...): printed as one line, no traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def input_errors(*error_types: type[BaseException]) -> Iterator[None]:
    """Turn the package's own errors (:class:`~mm_sbert.errors.MMSbertError`: a corrupt index or store, a path
    outside its folder, a store that does not fit the request...) and ``error_types`` into a :class:`CLIError`
    with exit code 2 and the library's one-line message."""
    from mm_sbert.errors import MMSbertError

    try:
        yield
    except (MMSbertError, *error_types) as exc:
        raise CLIError(str(exc), EXIT_USAGE) from exc


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse then exits 2 with the option's name)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1] (argparse then exits 2 with the option's name)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def add_score_arguments(parser: argparse.ArgumentParser, candidates: str) -> None:
    """Add ``--score`` and ``--lam``: how Coop orders the reranked candidates (see
    :func:`~mm_sbert.retrieval.score_combination.combine_scores`); ``candidates`` names them in the help."""
    parser.add_argument(
        "--score",
        choices=[mode for mode in SCORE_MODES if mode != "be"],
        default="ce",
        help="how the reranked candidates are ordered: the cross-encoder logit (default, the paper's), lam * BE "
        f"cosine + (1 - lam) * CE probability, or the same over scores min-max normalised among {candidates}",
    )
    parser.add_argument(
        "--lam",
        type=unit_interval,
        default=0.5,
        help="the bi-encoder weight of the --score combinations, in [0, 1] (default: 0.5)",
    )


def require_package(package: str, extra: str, what: str) -> None:
    """Fail with exit code 3 and the install command when the optional third-party ``package`` is not installed."""
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise CLIError(
            f"{what} needs the optional package `{package}`, which is not installed: pip install 'mm-sbert[{extra}]'",
            EXIT_MISSING_COMPONENT,
        )


def existing_path(path: str, what: str, kind: str = "any") -> Path:
    """``path`` as a Path, or a CLIError naming the argument when it does not exist (or has the wrong kind)."""
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise CLIError(f"{what} '{path}' does not exist")
    if kind == "dir" and not resolved.is_dir():
        raise CLIError(f"{what} '{path}' is not a folder")
    if kind == "file" and not resolved.is_file():
        raise CLIError(f"{what} '{path}' is not a file")
    return resolved


def load_model(path: str, device: str | None = None):
    """Load a saved mm_sbert model folder as its bi-encoder view (the cross-encoder is ``.to_cross_encoder()``)."""
    from mm_sbert.models import MMSentenceTransformer

    folder = existing_path(path, "Model folder", "dir")
    if not (folder / "modules.json").is_file():
        raise CLIError(
            f"'{path}' is not a saved mm_sbert model (no modules.json); train one with `mm-sbert train` or "
            "`mm-sbert demo`, or convert a checkpoint with `mm-sbert convert`"
        )
    return MMSentenceTransformer(str(folder), device=device or "cpu")


def list_images(paths: list[str]) -> list[Path]:
    """Image files from files and folders (folders: their image files, recursively, sorted); a file named twice
    (e.g. a folder and a file in it) is listed once."""
    images: list[Path] = []
    for raw in paths:
        path = existing_path(raw, "Image path")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise CLIError(f"The folder '{raw}' holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            images.extend(found)
        else:
            images.append(path)
    seen: set[Path] = set()
    unique = []
    for image in images:
        if (resolved := image.resolve()) not in seen:
            seen.add(resolved)
            unique.append(image)
    return unique


def read_caption_file(path: str) -> tuple[list[str], list[str], list[int]]:
    """Read ``caption`` / ``image`` pairs from a CSV, TSV or JSON-lines file.

    Image paths are taken relative to the file's folder. Returns the distinct images (in first-seen order), the
    captions, and for each caption the position of its image.
    """
    file = existing_path(path, "Caption file", "file")
    rows: list[dict[str, Any]]
    with open(file, encoding="utf-8", newline="") as f:
        if file.suffix.lower() in (".jsonl", ".json"):
            try:
                rows = [json.loads(line) for line in f if line.strip()]
            except json.JSONDecodeError as exc:
                raise CLIError(f"'{path}' is not valid JSON lines: {exc}") from exc
        else:
            rows = list(csv.DictReader(f, delimiter="\t" if file.suffix.lower() == ".tsv" else ","))
    if not rows:
        raise CLIError(f"'{path}' holds no rows; expected columns 'caption' and 'image'")
    missing = {"caption", "image"} - set(rows[0])
    if missing:
        raise CLIError(f"'{path}' lacks the column(s) {sorted(missing)}; found {sorted(rows[0])}")
    images: list[str] = []
    position: dict[str, int] = {}
    captions, caption_image_ids = [], []
    for row in rows:
        image = str(row["image"])
        if not os.path.isabs(image):
            image = str(file.parent / image)
        if image not in position:
            position[image] = len(images)
            images.append(image)
        captions.append(str(row["caption"]))
        caption_image_ids.append(position[image])
    absent = [image for image in images if not os.path.isfile(image)]
    if absent:
        raise CLIError(f"{len(absent)} image(s) listed in '{path}' do not exist, e.g. '{absent[0]}'")
    return images, captions, caption_image_ids


def write_synthetic_set(folder: str, num_images: int, captions_per_image: int, seed: int) -> str:
    """Write a :class:`~mm_sbert.demo.SyntheticScenes` set as PNGs + ``captions.csv``; returns the CSV path."""
    from mm_sbert.demo import SyntheticScenes

    scenes = SyntheticScenes(num_images, captions_per_image=captions_per_image, seed=seed)
    paths = scenes.save_images(os.path.join(folder, "images"))
    csv_path = os.path.join(folder, "captions.csv")
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["caption", "image", "label"])
        for caption, image_id in zip(scenes.captions, scenes.caption_image_ids):
            writer.writerow([caption, os.path.relpath(paths[image_id], folder), image_id])
    return csv_path


def read_caption_data(
    data: str | None, synthetic: int | None, scratch: str, captions_per_image: int, seed: int
) -> tuple[list[str], list[str], list[int]]:
    """The ``--data`` caption file, or a ``--synthetic N`` set written into ``scratch`` first."""
    if synthetic is not None:
        if synthetic < 2:
            raise CLIError(f"--synthetic needs at least 2 images, got {synthetic}")
        data = write_synthetic_set(scratch, synthetic, captions_per_image=captions_per_image, seed=seed)
    return read_caption_file(data)


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def open_store(path: str | None):
    """The feature store of ``--features`` (``None`` without it), or a CLIError naming the folder."""
    if path is None:
        return None
    from mm_sbert.image_features import FeatureStore
    from mm_sbert.image_features.feature_store import FeatureStoreError

    existing_path(path, "Feature store", "dir")
    try:
        return FeatureStore(path)
    except FeatureStoreError as error:
        raise CLIError(f"--features {path}: {error}") from error


def stored_regions(store_path: str, images: list[str], featurizer, what: str = "the evaluation data") -> list:
    """The regions of ``images`` read from the feature store at ``store_path``; exit 2 naming what does not match."""
    from mm_sbert.data.store_image_resolver import StoreImageResolver, check_store_featurizer
    from mm_sbert.image_features.feature_store import FeatureStoreError

    store = open_store(store_path)
    try:
        check_store_featurizer(store, featurizer)
        return StoreImageResolver(store).resolve(images, what=what)
    except FeatureStoreError as error:
        raise CLIError(str(error)) from error
