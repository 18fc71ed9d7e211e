"""A persisted collection of normalised embeddings with exact (torch) or cheaper (``precision``) top-k search."""

from __future__ import annotations

import errno
import glob
import logging
import numbers
import os
import shutil
import uuid
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any, Literal

import numpy as np
import torch

from mm_sbert.errors import (
    IndexCorruptedError,
    InvalidInputError,
    InvalidInputTypeError,
    MissingFileError,
    ModelMismatchError,
    NotEnoughSpaceError,
    StorageError,
    UnknownIdError,
)
from mm_sbert.retrieval.base_index import BaseIndex
from mm_sbert.retrieval.vector_search import CONFIG_FILE as VECTOR_SEARCH_CONFIG
from mm_sbert.retrieval.vector_search import FILES as VECTOR_SEARCH_FILES
from mm_sbert.retrieval.vector_search import PRECISIONS, Precision, VectorSearch
from mm_sbert.storage import (
    atomic_write_json,
    check_output_path,
    exclusive_output,
    file_record,
    fsync_dir,
    fsync_file,
    mark_owned_folder,
    read_json_file,
    read_manifest,
    resolve_inside,
    verify_file,
)
from mm_sbert.thread_policy import get_thread_policy, thread_limit

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
EMBEDDINGS_FILE = "embeddings.npy"
IDS_FILE = "ids.json"
ITEMS_FILE = "items.json"
METADATA_FILE = "metadata.json"
# Written by the retired build_ann; folders holding one are served by the "hnsw" / "ivf" precision.
ANN_FILE = "faiss.index"
# What check_output_path / mark_owned_folder call an index folder.
OUTPUT_KIND = "embedding-index"
FORMAT_NAME = "mm_sbert.EmbeddingIndex"
# 2: every file also has a cheap checksum (size + first/last MiB), "normalized" is what the rows are.
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
CORE_FILES = (MANIFEST_FILE, EMBEDDINGS_FILE, IDS_FILE, ITEMS_FILE, METADATA_FILE, ANN_FILE)
# Full checksums of bigger embedding files are skipped on open (sizes and the cheap checksum are still checked), so
# that a 1M-item collection opens in milliseconds; pass verify=True to force them.
AUTO_VERIFY_MAX_BYTES = 256 * 1024**2

Verify = bool | Literal["auto"]

# A fixed caption whose embedding identifies the model that built an index (see encoder_fingerprint).
FINGERPRINT_PROBE = "mm_sbert fingerprint probe: a small red circle to the left of a large blue square"
# Same model, other threads / BLAS: ~1e-6 apart; another model: ~1e-1.
FINGERPRINT_TOLERANCE = 2e-3

__all__ = [
    "EmbeddingIndex",
    "IndexCorruptedError",
    "IndexWriter",
    "check_encoder_fingerprint",
    "encoder_fingerprint",
    "exact_search",
]


def exact_search(
    query_embeddings: torch.Tensor,
    corpus_embeddings: torch.Tensor | np.ndarray,
    top_k: int,
    query_chunk_size: int = 256,
    corpus_chunk_size: int = 65536,
    workers: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact dot-product top-k of every query over the corpus, chunked so no big score matrix is ever built.

    Both sides must already be normalised for cosine similarity. A float16 corpus is scored in float32.

    Args:
        query_embeddings: ``[Q, D]`` float tensor.
        corpus_embeddings: ``[N, D]`` tensor or (memory-mapped) array.
        top_k: hits per query; capped at ``N``.
        query_chunk_size / corpus_chunk_size: block sizes; the largest score block is their product.
        workers: for one query on CPU, score the corpus in small pieces handed out to this many threads as they
            come free (see :meth:`~mm_sbert.ThreadPolicy.scan_workers`); 1: one matrix-vector product per chunk,
            split by the BLAS library's own threads.

    Returns:
        ``(scores, indices)``, both ``[Q, min(top_k, N)]``, best first.
    """
    if query_embeddings.ndim != 2 or corpus_embeddings.ndim != 2:
        raise InvalidInputError(
            f"exact_search expects 2-d query and corpus embeddings, got shapes {tuple(query_embeddings.shape)} and "
            f"{tuple(corpus_embeddings.shape)}"
        )
    if query_embeddings.shape[1] != corpus_embeddings.shape[1]:
        raise InvalidInputError(
            f"Query embeddings are {query_embeddings.shape[1]}-d but the corpus is {corpus_embeddings.shape[1]}-d"
        )
    if top_k < 1:
        raise InvalidInputError(f"top_k must be >= 1, got {top_k}")
    num_corpus = corpus_embeddings.shape[0]
    if num_corpus == 0:
        raise InvalidInputError("Cannot search an empty collection")
    k = min(top_k, num_corpus)
    queries = query_embeddings.float()
    on_cpu = not isinstance(corpus_embeddings, torch.Tensor) or corpus_embeddings.device.type == "cpu"
    if workers > 1 and len(queries) == 1 and queries.device.type == "cpu" and on_cpu:
        return _scan_one_query(queries[0], corpus_embeddings, k, workers)
    all_scores, all_indices = [], []
    for q_start in range(0, len(queries), query_chunk_size):
        query_chunk = queries[q_start : q_start + query_chunk_size]
        best_scores: torch.Tensor | None = None
        best_indices: torch.Tensor | None = None
        for c_start in range(0, num_corpus, corpus_chunk_size):
            corpus_chunk = _as_float_tensor(corpus_embeddings[c_start : c_start + corpus_chunk_size])
            if len(query_chunk) == 1 and query_chunk.device.type == corpus_chunk.device.type == "cpu":
                # One query is a matrix-vector product, bound by memory: numpy's BLAS sgemv reads the chunk at
                # memory speed on one thread, torch's matmul took twice as long there (retrieval_latency.md).
                vector = query_chunk[0].detach().numpy()
                scores = torch.from_numpy(corpus_chunk.detach().numpy() @ vector).unsqueeze(0)
            else:
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


# Row blocks of one query's shared scan: small enough that a thread descheduled by another process holds back
# little of the scan, large enough (12 MB of float32 rows at 384-d) that handing them out costs nothing.
SCAN_BLOCK_ROWS = 8192
_SCAN_POOLS: dict[int, ThreadPoolExecutor] = {}


def _scan_one_query(
    query: torch.Tensor, corpus: torch.Tensor | np.ndarray, k: int, workers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of one query: ``workers`` threads take row blocks as they come free (no barrier), each block's
    matrix-vector product on its own thread, then one top-k over all scores."""
    vector = query.detach().numpy()
    scores = np.empty(len(corpus), dtype=np.float32)

    def score(start: int) -> None:
        rows = _as_float_tensor(corpus[start : start + SCAN_BLOCK_ROWS]).numpy()
        np.dot(rows, vector, out=scores[start : start + len(rows)])

    pool = _SCAN_POOLS.get(workers)
    if pool is None:
        pool = _SCAN_POOLS.setdefault(workers, ThreadPoolExecutor(workers, thread_name_prefix="mm_sbert_scan"))
    list(pool.map(score, range(0, len(corpus), SCAN_BLOCK_ROWS)))
    best_scores, best_rows = torch.from_numpy(scores).topk(k)
    return best_scores.unsqueeze(0), best_rows.unsqueeze(0)


def _as_float_tensor(array: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(array, np.ndarray):
        array = torch.from_numpy(array)
    return array if array.dtype == torch.float32 else array.float()


def _normalize(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings.astype(np.float32, copy=False), axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def _check_rankable_rows(embeddings: np.ndarray | torch.Tensor, what: str, first_row: int = 0) -> None:
    """A clear error for rows that cannot be ranked: NaN / infinite ones, which would come back as NaN scores ranked
    first, and all-zero ones, which have no direction (every cosine with them is 0, whatever the query)."""
    array = embeddings.numpy() if isinstance(embeddings, torch.Tensor) else np.asarray(embeddings)
    # In blocks of rows: a whole-array mask of a 1M x 384 collection would cost 384 MB.
    blocks = [array[start : start + 65536] for start in range(0, len(array), 65536)]
    finite = np.concatenate([np.ones(0, dtype=bool)] + [np.isfinite(block).all(axis=1) for block in blocks])
    nonzero = np.concatenate([np.ones(0, dtype=bool)] + [(block != 0).any(axis=1) for block in blocks])
    for ok, kind in ((finite, "NaN or infinite values"), (nonzero, "only zeros")):
        if not ok.all():
            bad = np.flatnonzero(~ok)
            rows = [int(row) + first_row for row in bad[:5]]
            raise InvalidInputError(
                f"{what} hold {kind} (rows {rows}{' ...' if len(bad) > 5 else ''}); they cannot be ranked: fix or "
                "drop those rows"
            )


def _duplicates(ids: Sequence[Any]) -> list[Any]:
    seen: set[Any] = set()
    duplicates = []
    for value in ids:
        key = (type(value) is str, value)  # 1 and "1" are different ids
        if key in seen:
            duplicates.append(value)
        seen.add(key)
    return duplicates


def _check_unique_ids(ids: Sequence[Any] | None) -> None:
    if ids is not None and (duplicates := _duplicates(ids)):
        raise InvalidInputError(
            f"The index ids must be unique (a hit is reported by its id); duplicated: {duplicates[:5]}"
            f"{' ...' if len(duplicates) > 5 else ''}"
        )


def encoder_fingerprint(model: Any, probe: str = FINGERPRINT_PROBE) -> dict[str, Any]:
    """What identifies the encoder that embeds a collection: its embedding size and its (normalised) embedding of
    a fixed probe caption, rounded to 6 decimals. Store it with an index; :func:`check_encoder_fingerprint` tells
    whether another model would embed queries the same way."""
    embedding = model.encode([probe], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)[0]
    return {
        "embedding_dim": len(embedding),
        "probe": probe,
        "probe_embedding": [round(float(value), 6) for value in embedding],
    }


def check_encoder_fingerprint(saved: dict[str, Any], model: Any, what: str = "the index") -> None:
    """Raise :class:`~mm_sbert.errors.ModelMismatchError` unless ``model`` embeds the probe of ``saved`` (an
    :func:`encoder_fingerprint`) like the model that built ``what`` did: another model's scores are meaningless
    against these embeddings even when the sizes agree."""
    current = encoder_fingerprint(model, saved.get("probe", FINGERPRINT_PROBE))
    if current["embedding_dim"] != saved.get("embedding_dim"):
        raise ModelMismatchError(
            f"{what} holds {saved.get('embedding_dim')}-d embeddings but this model makes "
            f"{current['embedding_dim']}-d ones: search it with the model that built it"
        )
    difference = float(np.abs(np.subtract(current["probe_embedding"], saved.get("probe_embedding", []))).max())
    if difference > FINGERPRINT_TOLERANCE:
        raise ModelMismatchError(
            f"This model is not the one that built {what}: it embeds the fingerprint caption differently (largest "
            f"difference {difference:.3g} > {FINGERPRINT_TOLERANCE}), so its scores would be meaningless"
        )


class EmbeddingIndex(BaseIndex):
    """Embeddings ``[N, D]`` (normalised by default) with their ids, optional items and metadata; exact or
    ``precision`` top-k search.

    Exact search (default) is a chunked matrix product + ``topk`` in torch, so even 1M x 384 float32 embeddings
    (1.5 GB) are searched without building an ``N``-wide score matrix per query chunk. On disk the embeddings are an
    ``.npy`` file opened memory-mapped, so a big collection opens instantly and pages in on first search.

    Writes are atomic: everything is written into a temporary folder next to ``path``, fsynced, a manifest with
    counts, dims, sizes and checksums is written *last*, and the folder is renamed into place. Opening a folder
    without a manifest, or whose files do not match it (truncated, half-written, edited), raises
    :class:`~mm_sbert.errors.StorageError` (also known as :class:`IndexCorruptedError`) instead of returning wrong
    results. Ids must be unique and rows finite and not all zero (NaN rows would rank first with NaN scores, zero rows
    score 0 against every query).

    Args:
        embeddings: ``[N, D]`` float array or tensor (normalised here unless ``normalize=False``).
        ids: one unique id per row (JSON-serialisable: int or str); default the row numbers.
        items: optional collection items (captions or image paths) the cross-encoder needs for reranking.
        metadata: free JSON-serialisable information (model name, modality, ...).
        normalize: L2-normalise the rows, so the dot product is the cosine similarity (recorded in the manifest
            as ``"normalized"``; with ``False`` the scores are dot products with the normalised queries).
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
            raise InvalidInputError(f"embeddings must be a 2-d [N, D] array, got shape {embeddings.shape}")
        if dtype not in ("float32", "float16"):
            raise InvalidInputError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        _check_rankable_rows(embeddings, "The embeddings")
        if normalize:
            embeddings = _normalize(embeddings)
        _check_unique_ids(ids)
        self._set(np.ascontiguousarray(embeddings, dtype=dtype), ids, items, metadata or {})
        self.normalized = bool(normalize)
        self.path: str | None = None
        self.files: dict[str, dict[str, Any]] = {}
        self.vector_search = build_vector_search(self.embeddings, precision, search_options)

    def _set(self, embeddings: np.ndarray, ids, items, metadata: dict[str, Any]) -> None:
        count = embeddings.shape[0]
        if ids is not None and len(ids) != count:
            raise InvalidInputError(f"Got {len(ids)} ids for {count} embeddings; pass exactly one id per row")
        if items is not None and len(items) != count:
            raise InvalidInputError(f"Got {len(items)} items for {count} embeddings; pass exactly one item per row")
        self.embeddings = embeddings
        self.ids = list(ids) if ids is not None else None
        self.items = items
        self.metadata = dict(metadata)
        # A zero-copy torch view of the (possibly memory-mapped) array; searching slices it chunk by chunk.
        with warnings.catch_warnings():
            # Read-only arrays are fine: search never writes to this view.
            warnings.simplefilter("ignore", UserWarning)
            self._tensor = torch.from_numpy(embeddings)

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray | torch.Tensor,
        ids: Sequence[Any] | None = None,
        items: Sequence[Any] | None = None,
        metadata: dict[str, Any] | None = None,
        **options: Any,
    ) -> EmbeddingIndex:
        """``EmbeddingIndex(embeddings, ids, items, metadata, **options)``: the verb every index shares."""
        return cls(embeddings, ids=ids, items=items, metadata=metadata, **options)

    def add(
        self,
        embeddings: np.ndarray | torch.Tensor,
        ids: Sequence[Any] | None = None,
        items: Sequence[Any] | None = None,
    ) -> None:
        """Append rows in memory (normalised like the existing ones); the ``precision`` search is rebuilt.

        Ids and items must be given exactly when the index has them. Call :meth:`save` to persist the result.
        """
        if isinstance(embeddings, torch.Tensor):
            embeddings = embeddings.detach().cpu().float().numpy()
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise InvalidInputError(f"add() expects [n, {self.dim}] embeddings, got shape {embeddings.shape}")
        if (ids is None) != (self.ids is None) or (items is None) != (self.items is None):
            raise InvalidInputError("Pass ids / items to add() exactly when the index has them")
        _check_rankable_rows(embeddings, "The embeddings added")
        if self.normalized:
            embeddings = _normalize(embeddings)
        new_ids = None if ids is None else [*self.ids, *ids]
        _check_unique_ids(new_ids)
        new_items = None if items is None else [*self.items, *items]
        rows = np.concatenate([np.asarray(self.embeddings), embeddings.astype(self.dtype)])
        self._set(np.ascontiguousarray(rows), new_ids, new_items, self.metadata)
        if self.vector_search is not None:
            options = {"rescore_multiplier": self.vector_search.rescore_multiplier}
            if self.vector_search.precision in ("hnsw", "ivf"):
                options["factory"] = self.vector_search.factory
            self.vector_search = build_vector_search(self.embeddings, self.vector_search.precision, options)
        self.path, self.files = None, {}

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

    def file_path(self, name: str) -> str:
        """The path of a file the manifest of this (opened) index lists, e.g. one written with
        :meth:`IndexWriter.add_file`; names that lead outside the index folder are refused."""
        if self.path is None:
            raise InvalidInputError("This index was not saved or opened from a folder, so it has no files")
        if name not in self.files:
            raise UnknownIdError(f"The index at '{self.path}' has no file {name!r}; it has {sorted(self.files)}")
        return str(resolve_inside(self.path, name))

    def __repr__(self) -> str:
        return (
            f"EmbeddingIndex(count={len(self)}, dim={self.dim}, dtype={self.dtype}, precision={self.precision!r}, "
            f"path={self.path!r})"
        )

    # ------------------------------------------------------------------ search

    def search(
        self,
        query_embeddings: torch.Tensor | np.ndarray,
        top_k: int = 10,
        exact: bool | None = None,
        threads: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k rows per query by cosine similarity.

        Args:
            query_embeddings: ``[Q, D]`` or ``[D]``; normalised here; NaN / infinite values are refused.
            top_k: hits per query (capped at the collection size).
            exact: ``None`` uses the ``precision`` search (exact for ``"float32"``); ``True`` forces exact search.
            threads: CPU threads for this search (FAISS, BLAS, torch); default: the process's
                :class:`~mm_sbert.ThreadPolicy` (the cores other processes leave free).

        Returns:
            ``(scores, row_indices)``, both ``[Q, min(top_k, N)]``, best first.

        Raises:
            ValueError: bad ``top_k``, query shape or NaN queries.
            StorageError: a retrieved row of the stored embeddings is NaN (the index is corrupt).
        """
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
            raise InvalidInputError(f"top_k must be an integer >= 1, got {top_k!r}")
        queries = torch.as_tensor(query_embeddings).detach().cpu().float()
        if queries.ndim == 1:
            queries = queries.unsqueeze(0)
        if queries.ndim == 2:
            if queries.shape[1] != self.dim:
                raise InvalidInputError(f"Query embeddings are {queries.shape[1]}-d but the index is {self.dim}-d")
            _check_rankable_rows(queries, "The query embeddings")
        queries = torch.nn.functional.normalize(queries, dim=1)
        with thread_limit("search", threads):
            # One query's scan may take more threads than the free cores: its threads meet only at the end.
            policy, single = get_thread_policy(), len(queries) == 1
            if self.vector_search is not None and not exact:
                workers = policy.block_scan_threads(threads) if single else 1
                scores, rows = self.vector_search.search(queries, int(top_k), self.embeddings, workers=workers)
            else:
                workers = policy.scan_workers(threads) if single else 1
                scores, rows = exact_search(queries, self._tensor, int(top_k), workers=workers)
        if torch.isnan(scores).any():
            # Rows are checked when an index is built; NaN rows in a stored index mean it was altered on disk.
            bad = sorted({int(row) for row in rows[torch.isnan(scores)].tolist()})
            raise StorageError(
                f"The index{f' at {self.path!r}' if self.path else ''} holds NaN embeddings (rows {bad[:5]}); it is "
                "corrupt: rebuild it"
            )
        return scores, rows

    # ------------------------------------------------------------------ retired

    def build_ann(self, factory: str = "HNSW32") -> None:
        """Deprecated: pass ``precision="hnsw"`` / ``"ivf"`` (and ``search_options={"factory": ...}``) instead.

        Builds that precision's search with this FAISS ``factory``; warns.
        """
        warnings.warn(
            "EmbeddingIndex.build_ann is deprecated: build the index with precision='hnsw' or 'ivf' (and "
            "search_options={'factory': ...}); it is the one approximate-search setting",
            DeprecationWarning,
            stacklevel=2,
        )
        self.vector_search = _factory_search(self.embeddings, factory)

    # ------------------------------------------------------------------ persistence

    def save(
        self, path: str, extra_files: Mapping[str, bytes] | None = None, inputs: Sequence[str | None] = ()
    ) -> None:
        """Write the index atomically to the folder ``path`` (replacing an index mm_sbert wrote there).

        ``path`` must be new, empty, or an index folder mm_sbert wrote (see
        :func:`~mm_sbert.storage.check_output_path`); anything else is refused before any work, so a user's folder
        is never replaced.

        Items are saved only when they are all strings (captions, image paths); other items (PIL images,
        ``RegionFeatures``) must be passed again to whatever reranks after :meth:`open`.

        Args:
            path: the index folder.
            extra_files: more files to store with the index (name -> content), listed and checked in the manifest
                like its own; see :meth:`IndexWriter.add_file`.
            inputs: paths the caller reads (images, a model, a store): ``path`` may not be, hold or lie inside one.

        Raises:
            UnsafeOutputError: ``path`` is a foreign folder, a file, an input, or inside another mm_sbert folder.
            OutputInUseError: another process is writing ``path``.
            OSError: not enough free space for the new copy (checked before writing), or a write failed; an
                index already at ``path`` stays usable either way.
        """
        items = self.items
        if items is not None and not all(isinstance(item, str) for item in items):
            logger.warning("The index items are not all strings (captions / image paths), so they are not saved")
            items = None
        writer = IndexWriter(
            path,
            len(self),
            self.dim,
            dtype=self.dtype,
            ids=self.ids,
            items=items,
            metadata=self.metadata,
            normalized=self.normalized,
            inputs=inputs,
        )
        with writer:
            for start in range(0, len(self), 65536):
                writer.write(self.embeddings[start : start + 65536])
            for name, data in (extra_files or {}).items():
                writer.add_file(name, data)
            writer.vector_search = self.vector_search
        self.path = os.path.abspath(path)
        self.files = writer.manifest["files"]

    @classmethod
    def open(cls, path: str, mmap: bool = True, verify: Verify = "auto") -> EmbeddingIndex:
        """Open an index written by :meth:`save` / :class:`IndexWriter`.

        What is verified: the manifest's format and version; for every file it lists, that its name stays inside
        the folder, its size, and a cheap checksum (SHA-256 of the size + first and last MiB: every byte of files up
        to 2 MiB, so ids, items and metadata are always fully checked); the embeddings' ``.npy`` shape and dtype;
        unique ids. ``verify=True`` also checks the full SHA-256 of every file.

        Args:
            path: the index folder.
            mmap: memory-map the embeddings (fast open, shared page cache) instead of reading them into memory.
            verify: ``True``: full SHA-256 of every file; ``False``: sizes + cheap checksums; ``"auto"``: full
                checks unless the embeddings exceed 256 MiB.

        Raises:
            FileNotFoundError: no folder at ``path``.
            StorageError (= IndexCorruptedError): the manifest is missing (interrupted write), empty or invalid, a
                file does not match it, or a listed name points outside the folder (``UnsafePathError``).
            UnsupportedFormatError: a format version this mm_sbert does not know (a StorageError too).
        """
        if not os.path.isdir(path):
            raise MissingFileError(f"No embedding index folder at {path!r}")
        manifest = read_manifest(os.path.join(path, MANIFEST_FILE), FORMAT_NAME, SUPPORTED_VERSIONS)
        files = manifest.get("files")
        if not isinstance(files, dict) or EMBEDDINGS_FILE not in files:
            raise StorageError(f"The manifest of {path!r} lists no {EMBEDDINGS_FILE}; rebuild the index")
        embeddings_bytes = files[EMBEDDINGS_FILE].get("bytes", 0)
        full = verify is True or (verify == "auto" and embeddings_bytes <= AUTO_VERIFY_MAX_BYTES)
        paths = {name: str(verify_file(path, name, record, full=full)) for name, record in files.items()}

        try:
            # Copy-on-write mapping: torch gets a writable zero-copy view, and nothing is ever written back.
            embeddings = np.load(paths[EMBEDDINGS_FILE], mmap_mode="c" if mmap else None, allow_pickle=False)
        except ValueError as error:
            raise StorageError(f"{paths[EMBEDDINGS_FILE]} is not a valid .npy file ({error})") from error
        expected_shape = (manifest.get("count"), manifest.get("dim"))
        if embeddings.shape != expected_shape or str(embeddings.dtype) != manifest.get("dtype"):
            raise StorageError(
                f"{paths[EMBEDDINGS_FILE]} holds {embeddings.shape} {embeddings.dtype} but the manifest says "
                f"{expected_shape} {manifest.get('dtype')}; rebuild the index"
            )

        def read(name: str) -> Any:
            return read_json_file(paths[name], f"index file {name}") if name in paths else None

        ids, items, metadata = read(IDS_FILE), read(ITEMS_FILE), read(METADATA_FILE) or {}
        index = cls.__new__(cls)
        try:
            if ids is not None and not isinstance(ids, list) or items is not None and not isinstance(items, list):
                raise InvalidInputError(f"{IDS_FILE} and {ITEMS_FILE} must hold JSON lists")
            if not isinstance(metadata, dict):
                raise InvalidInputError(f"{METADATA_FILE} must hold a JSON object")
            _check_unique_ids(ids)
            index._set(embeddings, ids, items, metadata)
        except ValueError as error:
            raise StorageError(f"The index at {path!r} is inconsistent: {error}; rebuild it") from error
        index.normalized = bool(manifest.get("normalized", True))
        index.vector_search = None
        precision = manifest.get("precision", "float32")
        if ANN_FILE in paths:
            # Written by the retired build_ann: its FAISS index serves as the "hnsw" / "ivf" precision search.
            try:
                index.vector_search = VectorSearch.from_faiss_file(paths[ANN_FILE], manifest.get("ann_factory"))
            except RuntimeError as error:
                raise StorageError(f"The {ANN_FILE} of the index at {path!r} is unreadable ({error})") from error
            logger.info(
                "The index at %r was built with build_ann; its FAISS index serves as precision %r",
                path,
                index.vector_search.precision,
            )
        elif precision != "float32":
            try:
                index.vector_search = VectorSearch.load(paths, mmap=mmap)
                if index.vector_search.precision != precision:
                    raise InvalidInputError(f"{VECTOR_SEARCH_CONFIG} holds a {index.vector_search.precision} search")
            except (FileNotFoundError, KeyError, ValueError) as error:
                raise StorageError(
                    f"The {precision} search of the index at {path!r} is unreadable ({error}); rebuild it"
                ) from error
        index.path = os.path.abspath(path)
        index.files = files
        return index


class IndexWriter:
    """Streams embeddings into a new index folder; only a completed ``with`` block makes the index visible.

    Used to encode big collections chunk by chunk without holding all embeddings in memory. Rows must be
    written in order, finite and (unless ``normalized=False``) already normalised.

    Every index folder of the package is written here, and safely:

    - ``path`` must be new, empty, or an index folder mm_sbert wrote, and none of ``inputs``
      (:func:`~mm_sbert.storage.check_output_path`): checked when the writer is made, before any work;
    - one writer per ``path`` (:func:`~mm_sbert.storage.exclusive_output`; a second gets
      :class:`~mm_sbert.errors.OutputInUseError`), and temporary folders carry their writer's process id, so a
      writer only ever deletes its own or those of a dead process;
    - free space for the whole new copy is checked before writing (the old index stays until the new one is
      complete); rows are written with ordinary file writes, so a full disk is an ``OSError``, never a ``SIGBUS``
      through a memory map; a failed write leaves the old index as it was;
    - the finished folder is marked as mm_sbert's ``"embedding-index"`` (:func:`~mm_sbert.storage.mark_owned_folder`).

    Args:
        path: the index folder.
        count / dim / dtype: the shape and storage type of the rows.
        ids / items / metadata / normalized: see :class:`EmbeddingIndex`.
        inputs: paths the caller reads (images, model, store, data), which ``path`` may not be, hold or lie in.
        lock: take the write lock of ``path``; ``False`` only when the caller holds the lock of a folder that will
            contain ``path`` (e.g. a retriever's index folder).

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
        normalized: bool = True,
        inputs: Sequence[str | None] = (),
        lock: bool = True,
    ) -> None:
        if ids is not None and len(ids) != count:
            raise InvalidInputError(f"Got {len(ids)} ids for {count} rows; pass exactly one id per row")
        if items is not None and len(items) != count:
            raise InvalidInputError(f"Got {len(items)} items for {count} rows; pass exactly one item per row")
        ids = _json_values(ids, "ids") if ids is not None else None
        _check_unique_ids(ids)
        items = _json_values(items, "items") if items is not None else None
        self.path = str(check_output_path(path, OUTPUT_KIND, folder=True, inputs=inputs, what="The index folder"))
        self.count, self.dim, self.dtype = int(count), int(dim), np.dtype(dtype)
        self.ids, self.items, self.metadata = ids, items, dict(metadata or {})
        self.normalized = bool(normalized)
        self.vector_search: VectorSearch | None = None
        self.rows_written = 0
        self.manifest: dict[str, Any] = {}
        self._extra_files: dict[str, bytes] = {}
        self._lock = lock
        self._stack = ExitStack()
        self.tmp_path = os.path.join(
            os.path.dirname(self.path), f"{_tmp_prefix(self.path)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        self._file: Any = None

    @staticmethod
    def remove_leftovers(path: str) -> list[str]:
        """Delete the temporary folders that writers of the index ``path`` left next to it when they were killed.

        Only folders of writers that are no longer running are removed (their process id is in the name), so a
        writer never deletes another live writer's work. Returns the removed paths.
        """
        path = os.path.abspath(path)
        pattern = os.path.join(os.path.dirname(path), glob.escape(_tmp_prefix(path)) + "*")
        removed = []
        for leftover in glob.glob(pattern):
            if _writer_alive(leftover[len(os.path.join(os.path.dirname(path), _tmp_prefix(path))) :]):
                continue
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
        return removed

    def __enter__(self) -> IndexWriter:
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        if self._lock:
            self._stack.enter_context(exclusive_output(self.path, what="The index folder"))
        try:
            self.remove_leftovers(self.path)
            check_free_space(parent, self._bytes_needed(), f"the index {self.path!r}")
            os.makedirs(self.tmp_path)
            # Plain writes, not a memory map: a full disk then fails a write() with ENOSPC instead of killing the
            # process with SIGBUS when a page of a sparse file cannot be backed.
            self._file = open(os.path.join(self.tmp_path, EMBEDDINGS_FILE), "wb")
            header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
            np.lib.format.write_array_header_2_0(self._file, {**header, "shape": (self.count, self.dim)})
        except BaseException:
            self._cleanup()
            raise
        return self

    def _bytes_needed(self) -> int:
        rows = self.count * self.dim * self.dtype.itemsize
        labels = sum(len(str(value)) + 4 for values in (self.ids or (), self.items or ()) for value in values)
        return rows + labels + 1024**2

    def write(self, embeddings: np.ndarray | torch.Tensor) -> None:
        """Append the next rows."""
        if isinstance(embeddings, torch.Tensor):
            embeddings = embeddings.detach().cpu().float().numpy()
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise InvalidInputError(f"Expected [n, {self.dim}] embeddings, got shape {embeddings.shape}")
        end = self.rows_written + len(embeddings)
        if end > self.count:
            raise InvalidInputError(
                f"Writing rows {self.rows_written}..{end} overflows the index of {self.count} rows"
            )
        _check_rankable_rows(embeddings, "The embeddings written", first_row=self.rows_written)
        self._file.write(np.ascontiguousarray(embeddings, dtype=self.dtype).tobytes())
        self.rows_written = end

    def _rows(self) -> np.ndarray:
        """The rows written so far, read back (memory-mapped read-only from the fully written file)."""
        self._file.flush()
        array = np.load(os.path.join(self.tmp_path, EMBEDDINGS_FILE), mmap_mode="r", allow_pickle=False)
        return array[: self.rows_written]

    def add_file(self, name: str, data: bytes) -> None:
        """Store one more file with the index (e.g. a quantised copy of the embeddings): listed in the manifest,
        checked on open like the index's own files, found again with :meth:`EmbeddingIndex.file_path`."""
        if not isinstance(name, str) or not name or name != os.path.basename(name) or name.startswith("."):
            raise InvalidInputError(f"An index file name must be a plain file name, got {name!r}")
        if name in CORE_FILES or name in VECTOR_SEARCH_FILES:
            raise InvalidInputError(f"{name!r} is one of the index's own files; choose another name")
        self._extra_files[name] = bytes(data)

    def build_ann(self, factory: str) -> None:
        """Deprecated: use :meth:`set_precision` (``"hnsw"`` / ``"ivf"`` with ``{"factory": ...}``); warns."""
        warnings.warn(
            "IndexWriter.build_ann is deprecated: use set_precision('hnsw' or 'ivf', {'factory': ...})",
            DeprecationWarning,
            stacklevel=2,
        )
        if self.rows_written != self.count:
            raise InvalidInputError("Call build_ann after the last write()")
        self.vector_search = _factory_search(self._rows(), factory)

    def set_precision(self, precision: Precision, search_options: dict[str, Any] | None = None) -> None:
        """Also build and save a :class:`VectorSearch` of this precision (call after the last :meth:`write`)."""
        self.vector_search = build_vector_search(self._rows(), precision, search_options)

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
                self._file = None
            if os.path.isdir(self.tmp_path):
                shutil.rmtree(self.tmp_path, ignore_errors=True)
        finally:
            self._stack.close()

    def _commit(self) -> None:
        if self.rows_written != self.count:
            raise InvalidInputError(
                f"Only {self.rows_written} of {self.count} rows were written; the index was not saved"
            )
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        # Files in the temporary folder need no rename of their own: the folder's rename publishes them all.
        if self.ids is not None:
            atomic_write_json(os.path.join(self.tmp_path, IDS_FILE), list(self.ids))
        if self.items is not None:
            atomic_write_json(os.path.join(self.tmp_path, ITEMS_FILE), list(self.items))
        atomic_write_json(os.path.join(self.tmp_path, METADATA_FILE), self.metadata)
        for name, data in self._extra_files.items():
            with open(os.path.join(self.tmp_path, name), "wb") as f:
                f.write(data)
        # The precision's codes / FAISS index are extra files too: listed and checked in the manifest.
        written = self.vector_search.write_files(self.tmp_path) if self.vector_search is not None else []
        for name in [*self._extra_files, *written]:
            fsync_file(os.path.join(self.tmp_path, name))

        files = {name: file_record(os.path.join(self.tmp_path, name)) for name in sorted(os.listdir(self.tmp_path))}
        self.manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "count": self.count,
            "dim": self.dim,
            "dtype": str(self.dtype),
            "normalized": self.normalized,
            "precision": "float32" if self.vector_search is None else self.vector_search.precision,
            "files": files,
        }
        # The manifest is the commit record: written last, after every file it describes is on disk.
        atomic_write_json(os.path.join(self.tmp_path, MANIFEST_FILE), self.manifest)
        mark_owned_folder(self.tmp_path, OUTPUT_KIND)
        fsync_dir(self.tmp_path)
        replace_folder(self.tmp_path, self.path)


def replace_folder(new: str, path: str) -> None:
    """Publish the finished folder ``new`` at ``path``: the old folder there is moved aside first and deleted only
    once the new one is in place."""
    old_path = None
    if os.path.exists(path):
        old_path = f"{new}.old"
        os.rename(path, old_path)
    os.rename(new, path)
    fsync_dir(os.path.dirname(path))
    if old_path is not None:
        shutil.rmtree(old_path, ignore_errors=True)


def check_free_space(folder: str, needed: int, what: str) -> None:
    """Raise :class:`~mm_sbert.errors.NotEnoughSpaceError` (an ``OSError``, ENOSPC) naming ``what`` when
    ``folder``'s file system has less than ``needed`` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise NotEnoughSpaceError(
            errno.ENOSPC,
            f"Not enough free space to write {what}: it needs about {needed / 1024**2:.1f} MiB, {folder!r} has "
            f"{free / 1024**2:.1f} MiB free; nothing was changed",
        )


def _writer_alive(suffix: str) -> bool:
    """Whether the writer that named a temporary folder ``<prefix><pid>-<hex>`` (``suffix``) is still running."""
    pid_text = suffix.split("-", 1)[0]
    if not pid_text.isdigit() or "-" not in suffix:
        return False  # a name from before writers recorded their process id
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # this process's own leftovers (an earlier writer of it that failed)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _factory_search(embeddings: np.ndarray, factory: str) -> VectorSearch:
    precision = "hnsw" if factory.upper().startswith("HNSW") else "ivf"
    return VectorSearch(precision, factory=factory).build(embeddings)


def _tmp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.tmp-"


def build_vector_search(
    embeddings: np.ndarray, precision: str, search_options: dict[str, Any] | None = None
) -> VectorSearch | None:
    """The :class:`VectorSearch` of ``precision`` over ``embeddings``, or ``None`` for exact float32 search."""
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "float32":
        if search_options:
            raise InvalidInputError(f"search_options {sorted(search_options)} need a precision other than 'float32'")
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
            raise InvalidInputTypeError(
                f"{name}[{position}] is a {type(value).__name__}; only str and int {name} can be saved with an index"
            )
    return converted
