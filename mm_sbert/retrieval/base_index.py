"""The interface every searchable collection of embeddings offers, whatever holds the rows (a folder, Milvus)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


class BaseIndex(ABC):
    """Normalised embeddings with ids, optional items (captions / image paths) and metadata, searched by cosine
    similarity. :class:`~mm_sbert.retrieval.EmbeddingIndex` (a folder, exact or ``precision`` search) and
    :class:`~mm_sbert.retrieval.MilvusIndex` (a Milvus collection) implement it, so a
    :class:`~mm_sbert.CooperativeRetriever` retrieves from either and reranks locally.

    The verbs are the package's usual ones: :meth:`build` a new index from embeddings, :meth:`add` rows,
    :meth:`search`, :meth:`save` and :meth:`open`.

    Attributes:
        metadata: JSON-serialisable information about the collection (e.g. ``{"modality": "image"}``).
        items: the rows' items for reranking: a sequence, a function ``row -> item``, or ``None`` when not stored.
    """

    metadata: dict[str, Any]
    items: Any

    @classmethod
    @abstractmethod
    def build(
        cls,
        embeddings: np.ndarray | torch.Tensor,
        ids: Sequence[Any] | None = None,
        items: Sequence[Any] | None = None,
        metadata: dict[str, Any] | None = None,
        **options: Any,
    ) -> BaseIndex:
        """A new index over ``embeddings`` ``[N, D]`` (normalised here) with one id / item per row."""

    @abstractmethod
    def add(
        self,
        embeddings: np.ndarray | torch.Tensor,
        ids: Sequence[Any] | None = None,
        items: Sequence[Any] | None = None,
    ) -> None:
        """Append rows (with their ids / items when the index has them)."""

    @abstractmethod
    def search(
        self,
        query_embeddings: torch.Tensor | np.ndarray,
        top_k: int = 10,
        exact: bool | None = None,
        threads: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, rows)`` of the ``top_k`` best rows per query, both ``[Q, min(top_k, N)]``, best first;
        ``threads`` caps this process's CPU threads for the search (default: :class:`~mm_sbert.ThreadPolicy`)."""

    @abstractmethod
    def save(self, path: str) -> None:
        """Persist the index so :meth:`open` finds it again at ``path``."""

    @classmethod
    @abstractmethod
    def open(cls, path: str, **options: Any) -> BaseIndex:
        """Reopen an index that :meth:`save` (or :meth:`build`) persisted at ``path``."""

    @abstractmethod
    def __len__(self) -> int:
        """The number of rows."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """The embedding size."""

    @abstractmethod
    def row_id(self, row: int) -> Any:
        """The id of row ``row``."""

    def close(self) -> None:  # noqa: B027 - a no-op for indexes holding no connection
        """Release what the index holds open (a connection); a no-op for a folder."""
