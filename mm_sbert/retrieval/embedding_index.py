"""A persisted collection of normalised embeddings with exact (torch) or approximate (FAISS) top-k search."""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
import shutil
import uuid
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from mm_sbert.retrieval.vector_search import PRECISIONS, Precision, VectorSearch

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
EMBEDDINGS_FILE = "embeddings.npy"
IDS_FILE = "ids.json"
ITEMS_FILE = "items.json"
METADATA_FILE = "metadata.json"
ANN_FILE = "faiss.index"
FORMAT_NAME = "mm_sbert.EmbeddingIndex"
FORMAT_VERSION = 1
# Full checksums of bigger embedding files are skipped on open (sizes and the npy header are still checked), so that
# a 1M-item collection opens in milliseconds; pass verify=True to force them.
AUTO_VERIFY_MAX_BYTES = 256 * 1024**2

Verify = bool | Literal["auto"]


class IndexCorruptedError(RuntimeError):
    """A persisted index is incomplete (interrupted write) or was changed / truncated after it was written."""


def exact_search(
    query_embeddings: torch.Tensor,
    corpus_embeddings: torch.Tensor | np.ndarray,
    top_k: int,
    query_chunk_size: int = 256,
    corpus_chunk_size: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact dot-product top-k of every query over the corpus, chunked so no big score matrix is ever built.

    Both sides must already be normalised for cosine similarity. A float16 corpus is scored in float32.

    Args:
        query_embeddings: ``[Q, D]`` float tensor.
        corpus_embeddings: ``[N, D]`` tensor or (memory-mapped) array.
        top_k: hits per query; capped at ``N``.
        query_chunk_size / corpus_chunk_size: block sizes; the largest score block is their product.

    Returns:
        ``(scores, indices)``, both ``[Q, min(top_k, N)]``, best first.
    """
    if query_embeddings.ndim != 2 or corpus_embeddings.ndim != 2:
        raise ValueError(
            f"exact_search expects 2-d query and corpus embeddings, got shapes {tuple(query_embeddings.shape)} and "
            f"{tuple(corpus_embeddings.shape)}"
        )
    if query_embeddings.shape[1] != corpus_embeddings.shape[1]:
        raise ValueError(
            f"Query embeddings are {query_embeddings.shape[1]}-d but the corpus is {corpus_embeddings.shape[1]}-d"
        )
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    num_corpus = corpus_embeddings.shape[0]
    if num_corpus == 0:
        raise ValueError("Cannot search an empty collection")
    k = min(top_k, num_corpus)
    queries = query_embeddings.float()
    all_scores, all_indices = [], []
    for q_start in range(0, len(queries), query_chunk_size):
        query_chunk = queries[q_start : q_start + query_chunk_size]
        best_scores: torch.Tensor | None = None
        best_indices: torch.Tensor | None = None
        for c_start in range(0, num_corpus, corpus_chunk_size):
            corpus_chunk = _as_float_tensor(corpus_embeddings[c_start : c_start + corpus_chunk_size])
            scores = query_chunk @ corpus_chunk.T
            chunk_scores, chunk_indices = scores.topk(min(k, scores.shape[1]), dim=1)
            chunk_indices += c_start
            if best_scores is None:
                best_scores, best_indices = chunk_scores, chunk_indices
            else:
                merged_scores = torch.cat([best_scores, chunk_scores], dim=1)
                merged_indices = torch.cat([best_indices, chunk_indices], dim=1)
                best_scores, order = merged_scores.topk(k, dim=1)
                best_indices = merged_indices.gather(1, order)
        all_scores.append(best_scores)
        all_indices.append(best_indices)
    return torch.cat(all_scores), torch.cat(all_indices)


def _as_float_tensor(array: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(array, np.ndarray):
        array = torch.from_numpy(array)
    return array if array.dtype == torch.float32 else array.float()


def _normalize(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings.astype(np.float32, copy=False), axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def _sha256(path: str, block: int = 16 * 1024**2) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    # Directory fsync makes the renames durable; not every platform allows opening a directory.
    try:
        _fsync_file(path)
    except OSError:
        pass


def _write_json(path: str, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())


def build_faiss_index(embeddings: np.ndarray, factory: str, train_size: int = 100_000, chunk_size: int = 65536) -> Any:
    """A FAISS inner-product index over normalised rows, trained on a sample when the factory needs training."""
    import faiss

    ann = faiss.index_factory(embeddings.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not ann.is_trained:
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(len(embeddings), size=min(train_size, len(embeddings)), replace=False))
        ann.train(np.ascontiguousarray(embeddings[sample], dtype=np.float32))
    for start in range(0, len(embeddings), chunk_size):
        ann.add(np.ascontiguousarray(embeddings[start : start + chunk_size], dtype=np.float32))
    return ann


class EmbeddingIndex:
    """Normalised embeddings ``[N, D]`` with their ids, optional items and metadata; exact or FAISS top-k search.

    Exact search (default) is a chunked matrix product + ``topk`` in torch, so even 1M x 384 float32 embeddings
    (1.5 GB) are searched without building an ``N``-wide score matrix per query chunk. On disk the embeddings are an
    ``.npy`` file opened memory-mapped, so a big collection opens instantly and pages in on first search.

    Writes are atomic: everything is written into a temporary folder next to ``path``, fsynced, a manifest with
    counts, dims, sizes and SHA-256 checksums is written *last*, and the folder is renamed into place. Opening a
    folder without a manifest, or whose files do not match it (truncated, half-written, edited), raises
    :class:`IndexCorruptedError` instead of returning wrong results.

    Args:
        embeddings: ``[N, D]`` float array or tensor (normalised here unless ``normalize=False``).
        ids: one id per row (JSON-serialisable: int or str); default the row numbers.
        items: optional collection items (captions or image paths) the cross-encoder needs for reranking.
        metadata: free JSON-serialisable information (model name, modality, ...).
        normalize: L2-normalise the rows, so the dot product is the cosine similarity.
        dtype: ``"float32"`` or ``"float16"`` (half the memory / disk; scores computed in float32).
        precision: ``"float32"`` (exact search, default), or a cheaper candidate search rescored with the float32
            rows: ``"int8"``, ``"binary"`` (quantised codes), ``"hnsw"`` or ``"ivf"`` (FAISS); see
            :class:`~mm_sbert.retrieval.VectorSearch`. Saved with the index and used by :meth:`search` unless
            ``exact=True``.
        search_options: passed to :class:`~mm_sbert.retrieval.VectorSearch` (``rescore_multiplier``, ``factory``,
            ``search_parameters``).
    """

    def __init__(
        self,
        embeddings: np.ndarray | torch.Tensor,
        ids: Sequence[Any] | None = None,
        items: Sequence[Any] | None = None,
        metadata: dict[str, Any] | None = None,
        normalize: bool = True,
        dtype: Literal["float32", "float16"] = "float32",
        precision: Precision = "float32",
        search_options: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(embeddings, torch.Tensor):
            embeddings = embeddings.detach().cpu().float().numpy()
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be a 2-d [N, D] array, got shape {embeddings.shape}")
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        if normalize:
            embeddings = _normalize(embeddings)
        self._set(np.ascontiguousarray(embeddings, dtype=dtype), ids, items, metadata or {})
        self.ann_factory: str | None = None
        self._ann = None
        self.path: str | None = None
        self.vector_search = build_vector_search(self.embeddings, precision, search_options)

    def _set(self, embeddings: np.ndarray, ids, items, metadata: dict[str, Any]) -> None:
        count = embeddings.shape[0]
        if ids is not None and len(ids) != count:
            raise ValueError(f"Got {len(ids)} ids for {count} embeddings; pass exactly one id per row")
        if items is not None and len(items) != count:
            raise ValueError(f"Got {len(items)} items for {count} embeddings; pass exactly one item per row")
        self.embeddings = embeddings
        self.ids = list(ids) if ids is not None else None
        self.items = items
        self.metadata = dict(metadata)
        # A zero-copy torch view of the (possibly memory-mapped) array; searching slices it chunk by chunk.
        with warnings.catch_warnings():
            # Read-only arrays are fine: search never writes to this view.
            warnings.simplefilter("ignore", UserWarning)
            self._tensor = torch.from_numpy(embeddings)

    # ------------------------------------------------------------------ properties

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    @property
    def dtype(self) -> str:
        return str(self.embeddings.dtype)

    @property
    def precision(self) -> str:
        """How :meth:`search` finds candidates: ``"float32"`` (exact) or the :class:`VectorSearch` precision."""
        return "float32" if self.vector_search is None else self.vector_search.precision

    def row_id(self, row: int) -> Any:
        """The id of row ``row`` (the row number itself when no ids were given)."""
        return self.ids[row] if self.ids is not None else int(row)

    def __repr__(self) -> str:
        return (
            f"EmbeddingIndex(count={len(self)}, dim={self.dim}, dtype={self.dtype}, precision={self.precision!r}, "
            f"ann={self.ann_factory!r}, path={self.path!r})"
        )

    # ------------------------------------------------------------------ search

    def search(
        self, query_embeddings: torch.Tensor | np.ndarray, top_k: int = 10, exact: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k rows per query by cosine similarity.

        Args:
            query_embeddings: ``[Q, D]`` or ``[D]``; normalised here.
            top_k: hits per query (capped at the collection size).
            exact: ``None`` uses the ANN index when one was built, else the ``precision`` search (exact for
                ``"float32"``); ``True`` forces exact search.

        Returns:
            ``(scores, row_indices)``, both ``[Q, min(top_k, N)]``, best first.
        """
        queries = torch.as_tensor(query_embeddings).detach().cpu().float()
        if queries.ndim == 1:
            queries = queries.unsqueeze(0)
        queries = torch.nn.functional.normalize(queries, dim=1)
        if self._ann is not None and not exact:
            return self._ann_search(queries, top_k)
        if self.vector_search is not None and not exact:
            if queries.shape[1] != self.dim:
                raise ValueError(f"Query embeddings are {queries.shape[1]}-d but the index is {self.dim}-d")
            return self.vector_search.search(queries, top_k, self.embeddings)
        return exact_search(queries, self._tensor, top_k)

    # ------------------------------------------------------------------ approximate search

    def build_ann(self, factory: str = "HNSW32") -> None:
        """Build a FAISS index (inner product over the normalised rows) from a factory string, e.g. ``"HNSW32"``,
        ``"IVF1024,Flat"`` or ``"Flat"``. It is saved with the index and used by :meth:`search` unless
        ``exact=True``."""
        self._ann = build_faiss_index(self.embeddings, factory)
        self.ann_factory = factory

    def _ann_search(self, queries: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(top_k, len(self))
        scores, indices = self._ann.search(np.ascontiguousarray(queries.numpy()), k)
        # FAISS pads with -1 when it finds fewer than k neighbours (e.g. a small IVF probe); drop nothing silently.
        if (indices < 0).any():
            raise RuntimeError(
                f"The ANN index ({self.ann_factory}) returned fewer than {k} neighbours; raise its search breadth "
                "(e.g. nprobe / efSearch) or search with exact=True"
            )
        return torch.from_numpy(scores), torch.from_numpy(indices)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str) -> None:
        """Write the index atomically to the folder ``path`` (replacing an existing index there).

        Items are saved only when they are all strings (captions, image paths); other items (PIL images,
        ``RegionFeatures``) must be passed again to whatever reranks after :meth:`open`.
        """
        items = self.items
        if items is not None and not all(isinstance(item, str) for item in items):
            logger.warning("The index items are not all strings (captions / image paths), so they are not saved")
            items = None
        writer = IndexWriter(
            path, len(self), self.dim, dtype=self.dtype, ids=self.ids, items=items, metadata=self.metadata
        )
        with writer:
            for start in range(0, len(self), 65536):
                writer.write(self.embeddings[start : start + 65536])
            writer.ann = self._ann
            writer.ann_factory = self.ann_factory
            writer.vector_search = self.vector_search
        self.path = os.path.abspath(path)

    @classmethod
    def open(cls, path: str, mmap: bool = True, verify: Verify = "auto") -> EmbeddingIndex:
        """Open an index written by :meth:`save` / :class:`IndexWriter`.

        Args:
            path: the index folder.
            mmap: memory-map the embeddings (fast open, shared page cache) instead of reading them into memory.
            verify: check SHA-256 checksums of every file (``True``), of the small files only (``False``: sizes and
                shapes are still checked), or ``"auto"``: full checks unless the embeddings exceed 256 MiB.

        Raises:
            FileNotFoundError: no folder at ``path``.
            IndexCorruptedError: the manifest is missing (interrupted write) or a file does not match it.
        """
        if not os.path.isdir(path):
            raise FileNotFoundError(f"No embedding index folder at {path!r}")
        manifest_path = os.path.join(path, MANIFEST_FILE)
        if not os.path.isfile(manifest_path):
            raise IndexCorruptedError(
                f"{path!r} has no {MANIFEST_FILE}: the index was not completely written (interrupted save?) or is "
                "not an mm_sbert EmbeddingIndex; rebuild it"
            )
        try:
            with open(manifest_path, encoding="utf-8") as f:
                manifest = json.load(f)
        except (OSError, ValueError) as error:
            raise IndexCorruptedError(f"{manifest_path} is unreadable ({error}); rebuild the index") from error
        if manifest.get("format") != FORMAT_NAME:
            raise IndexCorruptedError(f"{manifest_path} is not an {FORMAT_NAME} manifest")
        if manifest.get("version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{path!r} was written by a newer mm_sbert (format version {manifest['version']} > {FORMAT_VERSION})"
            )

        files = manifest["files"]
        embeddings_bytes = files[EMBEDDINGS_FILE]["bytes"]
        full = verify is True or (verify == "auto" and embeddings_bytes <= AUTO_VERIFY_MAX_BYTES)
        for name, expected in files.items():
            file_path = os.path.join(path, name)
            if not os.path.isfile(file_path):
                raise IndexCorruptedError(f"{path!r} is missing {name}, listed in its manifest; rebuild the index")
            size = os.path.getsize(file_path)
            if size != expected["bytes"]:
                raise IndexCorruptedError(
                    f"{file_path} has {size} bytes but the manifest says {expected['bytes']}: the file is truncated "
                    "or was changed after the index was written; rebuild the index"
                )
            if (full or name != EMBEDDINGS_FILE) and _sha256(file_path) != expected["sha256"]:
                raise IndexCorruptedError(
                    f"{file_path} does not match the checksum in the manifest: it was changed or corrupted after the "
                    "index was written; rebuild the index"
                )

        embeddings_path = os.path.join(path, EMBEDDINGS_FILE)
        try:
            # Copy-on-write mapping: torch gets a writable zero-copy view, and nothing is ever written back.
            embeddings = np.load(embeddings_path, mmap_mode="c" if mmap else None)
        except ValueError as error:
            raise IndexCorruptedError(f"{embeddings_path} is not a valid .npy file ({error})") from error
        expected_shape = (manifest["count"], manifest["dim"])
        if embeddings.shape != expected_shape or str(embeddings.dtype) != manifest["dtype"]:
            raise IndexCorruptedError(
                f"{embeddings_path} holds {embeddings.shape} {embeddings.dtype} but the manifest says "
                f"{expected_shape} {manifest['dtype']}; rebuild the index"
            )

        def read(name: str) -> Any:
            if name not in files:
                return None
            with open(os.path.join(path, name), encoding="utf-8") as f:
                return json.load(f)

        index = cls.__new__(cls)
        index._set(embeddings, read(IDS_FILE), read(ITEMS_FILE), read(METADATA_FILE) or {})
        index.ann_factory = manifest.get("ann_factory")
        index._ann = None
        if ANN_FILE in files:
            import faiss

            index._ann = faiss.read_index(os.path.join(path, ANN_FILE))
        index.vector_search = None
        if manifest.get("precision", "float32") != "float32":
            index.vector_search = VectorSearch.load(path, mmap=mmap)
        index.path = os.path.abspath(path)
        return index


class IndexWriter:
    """Streams embeddings into a new index folder; only a completed ``with`` block makes the index visible.

    Used to encode big collections chunk by chunk without holding all embeddings in memory. Rows must be
    written in order and already normalised.

    Example:
        >>> with IndexWriter("collection", count=len(items), dim=384) as writer:
        ...     for chunk in chunks:
        ...         writer.write(model.encode(chunk, normalize_embeddings=True))
    """

    def __init__(
        self,
        path: str,
        count: int,
        dim: int,
        dtype: str = "float32",
        ids: Sequence[Any] | None = None,
        items: Sequence[Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if ids is not None and len(ids) != count:
            raise ValueError(f"Got {len(ids)} ids for {count} rows; pass exactly one id per row")
        if items is not None and len(items) != count:
            raise ValueError(f"Got {len(items)} items for {count} rows; pass exactly one item per row")
        ids = _json_values(ids, "ids") if ids is not None else None
        items = _json_values(items, "items") if items is not None else None
        self.path = os.path.abspath(path)
        self.count, self.dim, self.dtype = int(count), int(dim), np.dtype(dtype)
        self.ids, self.items, self.metadata = ids, items, dict(metadata or {})
        self.ann = None
        self.ann_factory: str | None = None
        self.vector_search: VectorSearch | None = None
        self.rows_written = 0
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        self.tmp_path = os.path.join(parent, f".{os.path.basename(self.path)}.tmp-{uuid.uuid4().hex[:8]}")
        self._embeddings: np.ndarray | None = None

    def __enter__(self) -> IndexWriter:
        os.makedirs(self.tmp_path)
        self._embeddings = np.lib.format.open_memmap(
            os.path.join(self.tmp_path, EMBEDDINGS_FILE), mode="w+", dtype=self.dtype, shape=(self.count, self.dim)
        )
        return self

    def write(self, embeddings: np.ndarray | torch.Tensor) -> None:
        """Append the next rows."""
        if isinstance(embeddings, torch.Tensor):
            embeddings = embeddings.detach().cpu().float().numpy()
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"Expected [n, {self.dim}] embeddings, got shape {embeddings.shape}")
        end = self.rows_written + len(embeddings)
        if end > self.count:
            raise ValueError(f"Writing rows {self.rows_written}..{end} overflows the index of {self.count} rows")
        self._embeddings[self.rows_written : end] = embeddings
        self.rows_written = end

    def build_ann(self, factory: str) -> None:
        """Also build and save a FAISS index over the rows written so far (call after the last :meth:`write`)."""
        self.ann = build_faiss_index(self._embeddings[: self.rows_written], factory)
        self.ann_factory = factory

    def set_precision(self, precision: Precision, search_options: dict[str, Any] | None = None) -> None:
        """Also build and save a :class:`VectorSearch` of this precision (call after the last :meth:`write`)."""
        self.vector_search = build_vector_search(self._embeddings[: self.rows_written], precision, search_options)

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            self._embeddings = None
            if os.path.isdir(self.tmp_path):
                shutil.rmtree(self.tmp_path, ignore_errors=True)

    def _commit(self) -> None:
        if self.rows_written != self.count:
            raise ValueError(f"Only {self.rows_written} of {self.count} rows were written; the index was not saved")
        self._embeddings.flush()
        self._embeddings = None
        _fsync_file(os.path.join(self.tmp_path, EMBEDDINGS_FILE))
        if self.ids is not None:
            _write_json(os.path.join(self.tmp_path, IDS_FILE), list(self.ids))
        if self.items is not None:
            _write_json(os.path.join(self.tmp_path, ITEMS_FILE), list(self.items))
        _write_json(os.path.join(self.tmp_path, METADATA_FILE), self.metadata)
        if self.ann is not None:
            import faiss

            faiss.write_index(self.ann, os.path.join(self.tmp_path, ANN_FILE))
            _fsync_file(os.path.join(self.tmp_path, ANN_FILE))
        if self.vector_search is not None:
            for name in self.vector_search.save(self.tmp_path):
                _fsync_file(os.path.join(self.tmp_path, name))

        files = {}
        for name in sorted(os.listdir(self.tmp_path)):
            file_path = os.path.join(self.tmp_path, name)
            files[name] = {"bytes": os.path.getsize(file_path), "sha256": _sha256(file_path)}
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "count": self.count,
            "dim": self.dim,
            "dtype": str(self.dtype),
            "normalized": True,
            "ann_factory": self.ann_factory,
            "precision": "float32" if self.vector_search is None else self.vector_search.precision,
            "files": files,
        }
        # The manifest is the commit record: written last, after every file it describes is on disk.
        _write_json(os.path.join(self.tmp_path, MANIFEST_FILE), manifest)
        _fsync_dir(self.tmp_path)

        old_path = None
        if os.path.exists(self.path):
            old_path = f"{self.tmp_path}.old"
            os.rename(self.path, old_path)
        os.rename(self.tmp_path, self.path)
        _fsync_dir(os.path.dirname(self.path))
        if old_path is not None:
            shutil.rmtree(old_path, ignore_errors=True)


def build_vector_search(
    embeddings: np.ndarray, precision: str, search_options: dict[str, Any] | None = None
) -> VectorSearch | None:
    """The :class:`VectorSearch` of ``precision`` over ``embeddings``, or ``None`` for exact float32 search."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "float32":
        if search_options:
            raise ValueError(f"search_options {sorted(search_options)} need a precision other than 'float32'")
        return None
    return VectorSearch(precision, **(search_options or {})).build(embeddings)


def _json_values(values: Sequence[Any], name: str) -> list[str | int]:
    """Ids / items as JSON values: str or int (numpy integers converted); anything else cannot be persisted."""
    converted = []
    for position, value in enumerate(values):
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            converted.append(int(value))
        elif isinstance(value, str):
            converted.append(value)
        else:
            raise TypeError(
                f"{name}[{position}] is a {type(value).__name__}; only str and int {name} can be saved with an index"
            )
    return converted
