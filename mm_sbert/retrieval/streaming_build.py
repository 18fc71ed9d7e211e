"""Build an index folder from a stream of embedding chunks, for collections whose float32 rows do not fit in memory."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from mm_sbert.errors import InvalidInputError
from mm_sbert.retrieval.embedding_index import EmbeddingIndex, IndexWriter
from mm_sbert.retrieval.vector_search import VectorSearch

__all__ = ["build_index_streaming"]


def build_index_streaming(
    path: str,
    chunks: Iterable[np.ndarray | torch.Tensor],
    count: int,
    dim: int,
    *,
    precision: Literal["float32", "binary"] = "binary",
    dtype: Literal["float32", "float16"] = "float16",
    ids: Sequence[Any] | None = None,
    items: Sequence[Any] | None = None,
    metadata: dict[str, Any] | None = None,
    normalize: bool = True,
    search_options: dict[str, Any] | None = None,
    train_size: int = 100_000,
) -> EmbeddingIndex:
    """Write the index folder ``path`` from ``chunks`` of ``[n, dim]`` embeddings, holding one chunk at a time.

    Each chunk is normalised (unless ``normalize=False``), stored as ``dtype`` and appended to the rows on disk,
    which later rescore the candidates; with ``precision="binary"`` its sign codes are added to the binary search
    (32x smaller than float32, the only part kept in memory). A binary IVF (``search_options={"factory":
    "BIVF4096"}``) is trained on the first ``train_size`` rows, so the stream should not be sorted. The folder is
    the one :class:`~mm_sbert.EmbeddingIndex` writes (same manifest, same checks on open) and searches the same as
    ``EmbeddingIndex(all_rows, dtype=dtype, precision=precision, search_options=search_options)`` would.

    Args:
        path: the index folder (written atomically, see :class:`~mm_sbert.retrieval.IndexWriter`).
        chunks: arrays or tensors ``[n, dim]``, in row order, ``count`` rows in all (e.g. a generator over an
            encoder's batches or a memory-mapped file's slices).
        count / dim: the collection's shape.
        precision: ``"binary"`` (codes + rescoring, default) or ``"float32"`` (exact search over the rows).
        dtype: how the rows are stored; ``"float16"`` halves the disk.
        ids / items / metadata / normalize: as for :class:`~mm_sbert.EmbeddingIndex`.
        search_options: :class:`~mm_sbert.retrieval.VectorSearch` options (``rescore_multiplier``, ``factory``,
            ``search_parameters``).
        train_size: rows a binary IVF is trained on.

    Returns:
        The index, opened from ``path`` (rows memory-mapped).

    Raises:
        ValueError: a chunk of the wrong shape or with NaN / infinite values, more or fewer than ``count`` rows,
            an unsupported precision; nothing is written then.
    """
    if precision not in ("float32", "binary"):
        raise InvalidInputError(f"A streamed build supports precision 'float32' or 'binary', got {precision!r}")
    if precision == "float32" and search_options:
        raise InvalidInputError(f"search_options {sorted(search_options)} need precision='binary'")
    search = VectorSearch("binary", **(search_options or {})) if precision == "binary" else None
    # A binary IVF needs its lists before the first row goes in: the first rows are held until train_size of them
    # (or the whole stream) have come.
    pending: list[np.ndarray] = []
    waiting = search is not None and search.factory is not None

    def add(rows: np.ndarray) -> None:
        if search is None:
            return
        if not waiting:
            search.add(rows)
            return
        pending.append(rows)
        if sum(len(held) for held in pending) >= train_size:
            flush_pending()

    def flush_pending() -> None:
        nonlocal waiting
        if waiting and pending:
            held = np.concatenate(pending)
            pending.clear()
            search.train(held[:train_size])
            search.add(held)
        waiting = False

    with IndexWriter(
        path, count, dim, dtype=dtype, ids=ids, items=items, metadata=metadata, normalized=normalize
    ) as writer:
        for chunk in chunks:
            if isinstance(chunk, torch.Tensor):
                chunk = chunk.detach().cpu().float().numpy()
            chunk = np.asarray(chunk)
            if chunk.ndim != 2 or chunk.shape[1] != dim:
                raise InvalidInputError(f"Expected chunks of shape [n, {dim}], got {chunk.shape}")
            if normalize:
                chunk = np.array(chunk, dtype=np.float32)  # a copy of our own (never the caller's array) ...
                chunk /= np.maximum(np.linalg.norm(chunk, axis=1, keepdims=True), 1e-12)  # ... normalised in place
            stored = np.ascontiguousarray(chunk, dtype=dtype)
            del chunk  # from here on only the stored rows are read (a normalised copy is freed now)
            writer.write(stored)  # checks shape, finiteness and the row count
            # Codes from the stored rows, as EmbeddingIndex(..., dtype=dtype) quantises its own rows (add() and
            # train() read them as float32 a slice at a time).
            add(stored)
        if search is not None:
            flush_pending()
            writer.vector_search = search
    return EmbeddingIndex.open(path)
