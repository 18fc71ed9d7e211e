"""A collection's embeddings in Milvus (embedded milvus-lite file or a server / cluster URI), searched like
an :class:`~mm_sbert.EmbeddingIndex`."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mm_sbert.errors import InvalidInputError, UnknownIdError
from mm_sbert.retrieval.base_index import BaseIndex

logger = logging.getLogger(__name__)

METADATA_PROPERTY = "mm_sbert.metadata"
ITEMS_PROPERTY = "mm_sbert.items_stored"
DEFAULT_COLLECTION = "mm_sbert"
# Milvus VARCHAR fields hold at most 65535 bytes.
MAX_VARCHAR = 65535


class MilvusIndex(BaseIndex):
    """Normalised embeddings in a Milvus collection; :meth:`search` returns ``(scores, rows)`` as
    :meth:`EmbeddingIndex.search` does, so a :class:`~mm_sbert.CooperativeRetriever` retrieves from the engine and
    reranks locally (``retriever.use_index(MilvusIndex(uri))``).

    Each entity is one collection row: the primary key ``row`` (its position), the ``vector``, the item's id as
    JSON (``item_id``) and the item itself when it is a string (``item``: a caption or an image path), so the
    reranker finds the candidates' items without a local copy. The index metadata (e.g. the modality) is a
    collection property.

    Args:
        uri: a local file path ending in ``.db`` (embedded milvus-lite, started in this process) or a server /
            cluster address such as ``"http://localhost:19530"``.
        collection_name: the Milvus collection.
        token: credentials for a server (``"user:password"`` or an API key); unused by milvus-lite.
        search_params: passed to Milvus' search (e.g. ``{"params": {"ef": 128}}`` for an HNSW index on a server).

    Raises:
        ValueError: no such collection at ``uri`` (create it with :meth:`create` or :meth:`from_index`).

    Example:
        >>> MilvusIndex.from_index(EmbeddingIndex.open("images.index"), "images.db")  # once
        >>> retriever = CooperativeRetriever(bi_encoder, cross_encoder).use_index(MilvusIndex("images.db"))
    """

    def __init__(
        self,
        uri: str,
        collection_name: str = DEFAULT_COLLECTION,
        token: str = "",
        search_params: dict[str, Any] | None = None,
    ) -> None:
        from pymilvus import MilvusClient

        self.uri = uri
        self.collection_name = collection_name
        self.search_params = dict(search_params or {})
        self.client = MilvusClient(uri=uri, token=token)
        if not self.client.has_collection(collection_name):
            self.client.close()
            raise InvalidInputError(
                f"Milvus at {uri!r} has no collection {collection_name!r}; build it with MilvusIndex.create(...) "
                "or MilvusIndex.from_index(...)"
            )
        description = self.client.describe_collection(collection_name)
        fields = {field["name"]: field for field in description["fields"]}
        if not {"row", "vector", "item_id", "item"} <= set(fields):
            self.client.close()
            raise InvalidInputError(
                f"The Milvus collection {collection_name!r} at {uri!r} was not written by mm_sbert's MilvusIndex "
                f"(fields {sorted(fields)})"
            )
        self._dim = int(fields["vector"]["params"]["dim"])
        properties = description.get("properties", {})
        self.metadata: dict[str, Any] = json.loads(properties.get(METADATA_PROPERTY, "{}"))
        self._has_items = properties.get(ITEMS_PROPERTY) == "true"
        self._count = int(self.client.get_collection_stats(collection_name)["row_count"])
        # id / item of the rows the last search returned, so Hit ids and reranking need no extra round trip.
        self._cache: dict[int, tuple[Any, str]] = {}

    @classmethod
    def create(
        cls,
        uri: str,
        embeddings: np.ndarray | torch.Tensor,
        ids: Sequence[Any] | None = None,
        items: Sequence[Any] | None = None,
        metadata: dict[str, Any] | None = None,
        collection_name: str = DEFAULT_COLLECTION,
        token: str = "",
        index_type: str = "AUTOINDEX",
        index_params: dict[str, Any] | None = None,
        overwrite: bool = False,
        batch_size: int = 4096,
        normalize: bool = True,
    ) -> MilvusIndex:
        """Write ``embeddings`` ``[N, D]`` (and their ids / string items) into a new Milvus collection.

        Args:
            uri / collection_name / token: see the class.
            embeddings: one row per collection item; L2-normalised here unless ``normalize=False``.
            ids: one JSON-serialisable id per row (default: the row numbers).
            items: captions or image paths for reranking (other items are not stored; pass them to the retriever).
            metadata: JSON-serialisable information (``{"modality": "image"}`` lets the retriever build pairs).
            index_type / index_params: the Milvus vector index (``"AUTOINDEX"``: FLAT on milvus-lite, the
                server's choice on a cluster; e.g. ``"HNSW"`` with ``{"M": 32, "efConstruction": 200}``), always
                with the inner-product metric.
            overwrite: replace an existing collection of that name instead of refusing.
            batch_size: rows per insert call.
        """
        from pymilvus import DataType, MilvusClient

        from mm_sbert.retrieval.embedding_index import _json_values, _normalize

        if isinstance(embeddings, torch.Tensor):
            embeddings = embeddings.detach().cpu().float().numpy()
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or len(embeddings) == 0:
            raise InvalidInputError(f"embeddings must be a non-empty 2-d [N, D] array, got shape {embeddings.shape}")
        count, dim = embeddings.shape
        if ids is not None and len(ids) != count:
            raise InvalidInputError(f"Got {len(ids)} ids for {count} embeddings; pass exactly one id per row")
        if items is not None and len(items) != count:
            raise InvalidInputError(f"Got {len(items)} items for {count} embeddings; pass exactly one item per row")
        stored_ids = _json_values(ids, "ids") if ids is not None else list(range(count))
        items_stored = items is not None and all(isinstance(item, str) for item in items)
        if items is not None and not items_stored:
            logger.warning("The items are not all strings (captions / image paths), so they are not stored in Milvus")

        client = MilvusClient(uri=uri, token=token)
        try:
            if client.has_collection(collection_name):
                if not overwrite:
                    raise InvalidInputError(
                        f"Milvus at {uri!r} already has a collection {collection_name!r}; pass overwrite=True to "
                        "replace it"
                    )
                client.drop_collection(collection_name)
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("row", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            schema.add_field("item_id", DataType.VARCHAR, max_length=MAX_VARCHAR)
            schema.add_field("item", DataType.VARCHAR, max_length=MAX_VARCHAR)
            milvus_index = client.prepare_index_params()
            milvus_index.add_index(
                field_name="vector", index_type=index_type, metric_type="IP", params=dict(index_params or {})
            )
            client.create_collection(
                collection_name,
                schema=schema,
                index_params=milvus_index,
                properties={
                    METADATA_PROPERTY: json.dumps(metadata or {}),
                    ITEMS_PROPERTY: "true" if items_stored else "false",
                },
            )
            for start in range(0, count, batch_size):
                chunk = embeddings[start : start + batch_size].astype(np.float32, copy=False)
                chunk = _normalize(chunk).astype(np.float32, copy=False) if normalize else chunk
                client.insert(
                    collection_name,
                    [
                        {
                            "row": start + offset,
                            "vector": vector,
                            "item_id": json.dumps(stored_ids[start + offset]),
                            "item": _varchar(items[start + offset], start + offset) if items_stored else "",
                        }
                        for offset, vector in enumerate(chunk)
                    ],
                )
            client.flush(collection_name)
        finally:
            client.close()
        return cls(uri, collection_name, token=token)

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray | torch.Tensor,
        ids: Sequence[Any] | None = None,
        items: Sequence[Any] | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        uri: str,
        **options: Any,
    ) -> MilvusIndex:
        """:meth:`create` with the arguments in the order every index's ``build`` takes them (``uri`` required)."""
        return cls.create(uri, embeddings, ids=ids, items=items, metadata=metadata, **options)

    @classmethod
    def open(cls, path: str, **options: Any) -> MilvusIndex:
        """``MilvusIndex(path, **options)``: the collection at the URI ``path``."""
        return cls(path, **options)

    def add(
        self,
        embeddings: np.ndarray | torch.Tensor,
        ids: Sequence[Any] | None = None,
        items: Sequence[Any] | None = None,
    ) -> None:
        """Insert rows after the existing ones (ids default to the row numbers; items only when the collection
        stores items)."""
        from mm_sbert.retrieval.embedding_index import _json_values, _normalize

        embeddings = np.asarray(torch.as_tensor(embeddings).detach().cpu().float().numpy())
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise InvalidInputError(f"add() expects [n, {self.dim}] embeddings, got shape {embeddings.shape}")
        if (items is not None) != self._has_items:
            raise InvalidInputError("Pass items to add() exactly when the collection stores items")
        count = len(embeddings)
        start = self._count
        stored_ids = _json_values(ids, "ids") if ids is not None else list(range(start, start + count))
        if len(stored_ids) != count or (items is not None and len(items) != count):
            raise InvalidInputError(f"Pass exactly one id / item per row ({count} rows)")
        rows = _normalize(embeddings).astype(np.float32, copy=False)
        self.client.insert(
            self.collection_name,
            [
                {
                    "row": start + offset,
                    "vector": vector,
                    "item_id": json.dumps(stored_ids[offset]),
                    "item": _varchar(items[offset], start + offset) if items is not None else "",
                }
                for offset, vector in enumerate(rows)
            ],
        )
        self._count += count

    def save(self, path: str | None = None) -> None:
        """Milvus keeps the rows itself: flush what was inserted (``path``, if given, must be this index's URI)."""
        if path is not None and path != self.uri:
            raise InvalidInputError(f"A MilvusIndex lives at its URI {self.uri!r}; it cannot be saved to {path!r}")
        self.client.flush(self.collection_name)

    @classmethod
    def from_index(cls, embedding_index: Any, uri: str, **kwargs: Any) -> MilvusIndex:
        """Copy an :class:`~mm_sbert.EmbeddingIndex` (rows, ids, string items, metadata) into Milvus."""
        return cls.create(
            uri,
            embedding_index.embeddings,
            ids=embedding_index.ids,
            items=embedding_index.items,
            metadata=embedding_index.metadata,
            normalize=False,
            **kwargs,
        )

    # ------------------------------------------------------------------ the EmbeddingIndex surface

    def __len__(self) -> int:
        return self._count

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def items(self) -> Any:
        """``row -> item`` for the reranker when the items (captions / image paths) are stored, else ``None``."""
        return self.item if self._has_items else None

    def row_id(self, row: int) -> Any:
        """The id of row ``row``."""
        return self._entity(row)[0]

    def item(self, row: int) -> str:
        """The caption / image path stored for row ``row``."""
        if not self._has_items:
            raise InvalidInputError(f"The Milvus collection {self.collection_name!r} holds no items")
        return self._entity(row)[1]

    def search(
        self,
        query_embeddings: torch.Tensor | np.ndarray,
        top_k: int = 10,
        exact: bool | None = None,
        threads: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k rows per query by cosine similarity, searched by Milvus.

        Args:
            query_embeddings: ``[Q, D]`` or ``[D]``; normalised here.
            top_k: hits per query (capped at the collection size).
            exact: accepted for :class:`EmbeddingIndex` compatibility; the collection's Milvus index decides
                (``AUTOINDEX`` on milvus-lite is exact), so ``True`` is refused rather than silently ignored.
            threads: accepted as every index accepts it; Milvus searches in its own server threads, not in this
                process's thread pools.

        Returns:
            ``(scores, rows)``, both ``[Q, min(top_k, N)]``, best first.
        """
        if exact:
            raise InvalidInputError("MilvusIndex cannot force exact search; the collection's Milvus index decides")
        if top_k < 1:
            raise InvalidInputError(f"top_k must be >= 1, got {top_k}")
        queries = torch.as_tensor(query_embeddings).detach().cpu().float()
        if queries.ndim == 1:
            queries = queries.unsqueeze(0)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InvalidInputError(f"Query embeddings must be [Q, {self.dim}], got shape {tuple(queries.shape)}")
        queries = torch.nn.functional.normalize(queries, dim=1)
        k = min(top_k, len(self))
        results = self.client.search(
            self.collection_name,
            data=queries.numpy(),
            limit=k,
            output_fields=["item_id", "item"],
            search_params={"metric_type": "IP", **self.search_params},
        )
        self._cache = {}
        scores = torch.empty(len(queries), k)
        rows = torch.empty(len(queries), k, dtype=torch.long)
        for query_row, hits in enumerate(results):
            if len(hits) < k:
                raise RuntimeError(
                    f"Milvus returned {len(hits)} hits for a query instead of {k}; widen the search (search_params)"
                )
            for position, hit in enumerate(hits):
                row = int(hit["row"])
                scores[query_row, position] = float(hit["distance"])
                rows[query_row, position] = row
                entity = hit["entity"]
                self._cache[row] = (json.loads(entity["item_id"]), entity["item"])
        return scores, rows

    def _entity(self, row: int) -> tuple[Any, str]:
        if row not in self._cache:
            found = self.client.get(self.collection_name, ids=[int(row)], output_fields=["item_id", "item"])
            if not found:
                raise UnknownIdError(f"Row {row} is not in the Milvus collection {self.collection_name!r}")
            self._cache[row] = (json.loads(found[0]["item_id"]), found[0]["item"])
        return self._cache[row]

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Close the connection (for milvus-lite: stop the embedded engine of this file)."""
        self.client.close()

    def __enter__(self) -> MilvusIndex:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"MilvusIndex(uri={self.uri!r}, collection_name={self.collection_name!r}, count={len(self)}, "
            f"dim={self.dim})"
        )


def _varchar(item: str, row: int) -> str:
    if len(item.encode("utf-8")) > MAX_VARCHAR:
        raise InvalidInputError(f"items[{row}] is longer than Milvus' {MAX_VARCHAR}-byte VARCHAR limit")
    return item
