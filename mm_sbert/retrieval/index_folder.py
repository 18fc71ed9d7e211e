"""An index folder: a searchable collection with what it takes to search it safely.

``mm_sbert_index.json`` records the bi-encoder's fingerprint (search refuses another model), the folder the indexed
images were in (no image outside it is read), the feature store the images were read from, the search precision and
whether the folder is complete; the rows are an :class:`~mm_sbert.retrieval.EmbeddingIndex` in ``embeddings/`` or a
Milvus collection. :meth:`CooperativeRetriever.index(..., path=...) <mm_sbert.CooperativeRetriever.index>` writes
it, :meth:`CooperativeRetriever.open <mm_sbert.CooperativeRetriever.open>` reads it; ``mm-sbert index`` and
``mm-sbert search`` only call those. Folders written by the command line before the library owned the format
(``"mm_sbert.cli-index"``, versions 1 and 2) are read too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mm_sbert.errors import StorageError, UnsafePathError, UnsupportedFormatError
from mm_sbert.retrieval.embedding_index import (
    FORMAT_NAME as EMBEDDING_INDEX_FORMAT,
)
from mm_sbert.retrieval.embedding_index import (
    MANIFEST_FILE,
    OUTPUT_KIND,
    IndexWriter,
    _tmp_prefix,
    _writer_alive,
    replace_folder,
)
from mm_sbert.storage import (
    atomic_write_json,
    check_output_path,
    exclusive_output,
    lies_inside,
    mark_owned_folder,
    read_json_file,
    register_legacy_folder_kind,
    resolve_stored_path,
)

logger = logging.getLogger(__name__)

CONFIG_FILE = "mm_sbert_index.json"
EMBEDDINGS_FOLDER = "embeddings"
MILVUS_FILE = "milvus.db"
FORMAT = "mm_sbert.index-folder"
FORMAT_VERSION = 3
# Written by `mm-sbert index` before the library owned the format: 1 = {"model", "num_images"} only.
LEGACY_FORMAT = "mm_sbert.cli-index"
LEGACY_VERSIONS = (1, 2)


def is_index_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds an index folder's config (of any version this mm_sbert reads)."""
    return (Path(folder) / CONFIG_FILE).is_file()


def read_index_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The checked ``mm_sbert_index.json`` of ``folder``.

    Raises:
        StorageError: missing, not JSON, a field of the wrong type (named), or the folder is incomplete (the
            writer was interrupted).
        UnsupportedFormatError: a format or version this mm_sbert does not know.
    """
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise StorageError(
            f"'{folder}' is not an index written by `mm-sbert index` (no {CONFIG_FILE}); build one with it or "
            "CooperativeRetriever.index(..., path=...)"
        )
    config = read_json_file(path, "index config")
    if not isinstance(config, dict):
        raise StorageError(f"'{path}' is not an index config (no model): it holds a JSON {type(config).__name__}")
    name, version = config.get("format", LEGACY_FORMAT), config.get("version", 1)
    if (name, version) != (FORMAT, FORMAT_VERSION) and not (name == LEGACY_FORMAT and version in LEGACY_VERSIONS):
        raise UnsupportedFormatError(
            f"'{path}' is a {name!r} version {version!r} index config, which this mm_sbert cannot read"
        )
    if name == LEGACY_FORMAT and not isinstance(config.get("model"), str):
        raise StorageError(f"'{path}' is not an `mm-sbert index` config (no model); rebuild the index")
    expected = {
        "model": str,
        "model_fingerprint": dict,
        "image_root": str,
        "store": str,
        "complete": bool,
        "precision": str,
        "backend": str,
        "uri": str,
        "collection": str,
    }
    for field, kind in expected.items():
        if config.get(field) is not None and not isinstance(config[field], kind):
            raise StorageError(
                f"The field {field!r} of '{path}' holds {config[field]!r:.80}, not a {kind.__name__}; rebuild it"
            )
    fingerprint = config.get("model_fingerprint")
    if fingerprint is not None and not (
        isinstance(fingerprint.get("embedding_dim"), int)
        and isinstance(fingerprint.get("probe_embedding"), list)
        and all(isinstance(value, (int, float)) for value in fingerprint["probe_embedding"])
    ):
        raise StorageError(f"The field 'model_fingerprint' of '{path}' is malformed; rebuild the index")
    if config.get("backend", "local") not in ("local", "milvus"):
        raise StorageError(f"The field 'backend' of '{path}' is {config['backend']!r}, not 'local' or 'milvus'")
    if config.get("backend") == "milvus" and not (config.get("uri") and config.get("collection")):
        raise StorageError(f"'{path}' names the Milvus backend but no uri / collection; rebuild the index")
    if config.get("complete") is False:
        raise StorageError(
            f"The index in '{folder}' was not completely written (`mm-sbert index` was interrupted); run "
            "`mm-sbert index` again to rebuild it"
        )
    return config


def confined_paths(stored: Any, recorded_root: str | None, image_root: str | os.PathLike) -> Callable[[int], str]:
    """``row -> image path`` of the stored image paths, each resolved inside ``image_root`` (relative to
    ``recorded_root``, where they were recorded) or refused with :class:`~mm_sbert.errors.UnsafePathError`."""

    def image_path(row: int) -> str:
        value = stored(row) if callable(stored) else stored[row]
        return str(resolve_stored_path(value, recorded_root, image_root, what="image path"))

    return image_path


def image_root_of(items: Iterable[Any]) -> str | None:
    """The deepest folder holding every image path of ``items`` as named (``None`` unless they are all image paths).

    The root is taken from the paths as given, links not followed, so a link among the images cannot widen it:
    search later reads images only inside it.

    Raises:
        UnsafePathError: an image is a link (or inside a linked folder) that leads out of that root.
    """
    from mm_sbert.image_features import looks_like_image_path

    items = list(items)
    if not items or not all(isinstance(item, str) and looks_like_image_path(item) for item in items):
        return None
    root = os.path.commonpath([os.path.dirname(os.path.abspath(item)) for item in items])
    for item in items:
        if not lies_inside(item, root):
            raise UnsafePathError(
                f"The image '{item}' leads to '{os.path.realpath(item)}', outside '{root}', the folder that holds the "
                "indexed images; index the file it points to by its own path, or copy it into the folder"
            )
    return root


def write_index_folder(
    path: str,
    config: dict[str, Any],
    write_rows: Callable[[str], Any],
    inputs: Iterable[str | None] = (),
) -> None:
    """Write an index folder: its rows by ``write_rows(embeddings_folder)`` (which must write an
    :class:`IndexWriter` folder there, without its own lock), then its ``config``.

    Everything is built in a temporary folder of this writer next to ``path`` and published by a rename, so an
    interrupted or failed rebuild leaves the index already at ``path`` as it was. ``path`` must be new, empty or an
    index folder mm_sbert wrote, and none of ``inputs`` (refused before any work), and has one writer at a time.
    """
    target = check_output_path(path, OUTPUT_KIND, folder=True, inputs=inputs, what="The index folder")
    os.makedirs(target.parent, exist_ok=True)
    with exclusive_output(target, what="The index folder"):
        _remove_leftovers(target)
        tmp = target.parent / f"{_tmp_prefix(str(target))}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.makedirs(tmp)
        try:
            # Marked before the rows are written, so the rows' folder is a declared child of an index folder even
            # where the index itself is a declared child of another owned folder (the demo's index).
            mark_owned_folder(tmp, OUTPUT_KIND, children={EMBEDDINGS_FOLDER: OUTPUT_KIND})
            write_rows(str(tmp / EMBEDDINGS_FOLDER))
            atomic_write_json(tmp / CONFIG_FILE, {"format": FORMAT, "version": FORMAT_VERSION, **config}, indent=2)
            mark_owned_folder(tmp, OUTPUT_KIND, children={EMBEDDINGS_FOLDER: OUTPUT_KIND})
            replace_folder(str(tmp), str(target))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def write_milvus_index_folder(
    path: str, config: dict[str, Any], write_collection: Callable[[bool], Any], inputs: Iterable[str | None] = ()
) -> None:
    """Write an index folder whose rows live in Milvus: the config says ``"complete": false`` until
    ``write_collection(overwrite)`` returns (``overwrite``: the folder's own earlier collection may be replaced)."""
    target = check_output_path(path, OUTPUT_KIND, folder=True, inputs=inputs, what="The index folder")
    os.makedirs(target.parent, exist_ok=True)
    with exclusive_output(target, what="The index folder"):
        previous = None
        if (target / CONFIG_FILE).is_file():
            try:
                previous = json.loads((target / CONFIG_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                previous = None
        own = isinstance(previous, dict) and (previous.get("uri"), previous.get("collection")) == (
            config["uri"],
            config["collection"],
        )
        os.makedirs(target, exist_ok=True)
        header = {"format": FORMAT, "version": FORMAT_VERSION, **config}
        atomic_write_json(target / CONFIG_FILE, {**header, "complete": False}, indent=2)
        write_collection(own)
        atomic_write_json(target / CONFIG_FILE, {**header, "complete": True}, indent=2)
        mark_owned_folder(target, OUTPUT_KIND)


def _remove_leftovers(target: Path) -> None:
    prefix = _tmp_prefix(str(target))
    for leftover in target.parent.glob(f"{prefix}*"):
        if not _writer_alive(leftover.name[len(prefix) :]):
            shutil.rmtree(leftover, ignore_errors=True)
    if target.is_dir():
        IndexWriter.remove_leftovers(str(target / EMBEDDINGS_FOLDER))
        # A killed run of the command line before the library wrote folders atomically left these inside.
        for name in os.listdir(target):
            if name.startswith(f".{CONFIG_FILE}.tmp-"):
                os.remove(target / name)


def _is_legacy_index_folder(folder: Path) -> bool:
    """An index folder written before folders were marked: an EmbeddingIndex manifest naming its exact format, or
    an index config, and nothing in the folder that such a writer does not write."""
    entries = set(os.listdir(folder))
    manifest_path = folder / MANIFEST_FILE
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or manifest.get("format") != EMBEDDING_INDEX_FORMAT:
            return False
        return entries <= {MANIFEST_FILE, *manifest.get("files", {})}
    if (folder / CONFIG_FILE).is_file():
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        if not isinstance(config, dict) or config.get("format", LEGACY_FORMAT) not in (LEGACY_FORMAT, FORMAT):
            return False
        ours = (
            CONFIG_FILE,
            EMBEDDINGS_FOLDER,
            f".{EMBEDDINGS_FOLDER}.",
            f".{CONFIG_FILE}.tmp-",
            MILVUS_FILE,
            ".milvus",
        )
        return all(name.startswith(ours) for name in entries)
    # Only the temporary files of an `mm-sbert index` killed before it wrote its config.
    leftovers = (f".{EMBEDDINGS_FOLDER}.tmp-", f".{CONFIG_FILE}.tmp-")
    return bool(entries) and all(name.startswith(leftovers) for name in entries)


register_legacy_folder_kind(OUTPUT_KIND, _is_legacy_index_folder)
