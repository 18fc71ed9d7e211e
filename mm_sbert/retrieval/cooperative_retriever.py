"""Retrieve fast with the bi-encoder, rerank smart with the cross-encoder (paper §3.3 / §3.4)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

try:
    from typing import Self
except ImportError:  # Python < 3.11
    from typing_extensions import Self

import numpy as np
import torch
from tqdm.autonotebook import tqdm

from mm_sbert.image_features.image_loading import looks_like_image_path
from mm_sbert.retrieval.embedding_index import EmbeddingIndex, IndexWriter, Verify
from mm_sbert.retrieval.score_combination import SCORE_MODES, ScoreMode, combine_scores
from mm_sbert.retrieval.vector_search import Precision

logger = logging.getLogger(__name__)

Modality = Literal["text", "image"]
ItemSource = Sequence[Any] | Callable[[int], Any]


@dataclass
class Hit:
    """One retrieved item.

    Attributes:
        id: the item's id (its row number when the collection was indexed without ids).
        score: the ranking score (see ``score`` in :meth:`CooperativeRetriever.search`); hits are sorted by it.
        be_score: the bi-encoder cosine similarity.
        ce_score: the cross-encoder logit (``None`` without reranking); ``sigmoid(ce_score)`` is the probability.
        corpus_id: the row in the collection, as in ``util.semantic_search``; ``hit["corpus_id"]`` works too.
    """

    id: Any
    score: float
    be_score: float
    ce_score: float | None
    corpus_id: int

    def __getitem__(self, key: str) -> Any:
        # Code written for util.semantic_search reads hit["corpus_id"] / hit["score"].
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_text(value: Any) -> bool:
    """A caption, as opposed to an image (PIL image, image path, RegionFeatures, array)."""
    return isinstance(value, str) and not looks_like_image_path(value)


def collection_modality(items: Sequence[Any], what: str = "items") -> Modality:
    """``"text"`` when every item is a caption, ``"image"`` when none is; a mix is refused."""
    kinds = {is_text(item) for item in items}
    if len(kinds) != 1:
        raise ValueError(f"The {what} mix captions and images; a collection holds one modality only")
    return "text" if kinds.pop() else "image"


def resolve_cross_encoder(bi_encoder: Any, cross_encoder: Any | None) -> Any | None:
    """The given cross-encoder, or the joint model's own CE view when the bi-encoder's module has a score head."""
    if cross_encoder is not None:
        return cross_encoder
    from mm_sbert.modules.multimodal_transformer import MultimodalTransformer

    try:
        module = bi_encoder[0]
    except (TypeError, IndexError, KeyError):
        return None
    if isinstance(module, MultimodalTransformer) and module.classifier is not None:
        if hasattr(bi_encoder, "to_cross_encoder"):
            return bi_encoder.to_cross_encoder()
        from mm_sbert.models.mm_cross_encoder import MMCrossEncoder

        return MMCrossEncoder(modules=[module], device=str(bi_encoder.device))
    return None


def cross_encoder_logits(
    cross_encoder: Any, pairs: list[tuple[Any, Any]], batch_size: int = 32, show_progress_bar: bool = False
) -> torch.Tensor:
    """Raw cross-encoder logits (no sigmoid) for ``(caption, image)`` pairs, as a float CPU tensor ``[len(pairs)]``."""
    if not pairs:
        return torch.empty(0)
    scores = cross_encoder.predict(
        pairs,
        batch_size=batch_size,
        activation_fn=torch.nn.Identity(),
        convert_to_tensor=True,
        show_progress_bar=show_progress_bar,
    )
    return scores.detach().float().cpu().reshape(-1)


class CooperativeRetriever:
    """Cooperative retrieval: the bi-encoder retrieves the top-k of a pre-encoded collection, the cross-encoder
    reranks those k.

    The collection may hold images (text -> image search: queries are captions) or captions (image -> text
    search: queries are images). Cross-encoder pairs are always built as ``(caption, image)``.

    Args:
        bi_encoder: a :class:`~mm_sbert.MMSentenceTransformer` (or any SentenceTransformer over these inputs).
        cross_encoder: a :class:`~mm_sbert.MMCrossEncoder`, or its ONNX Runtime export
            (:class:`~mm_sbert.export.OnnxCrossEncoder`, which scores each query's k candidates in one batch).
            Left out, a joint model (a bi-encoder whose ``MultimodalTransformer`` has a score head) reranks with
            its own head; otherwise only ``rerank=False`` searches work.
        top_k: candidates retrieved by the bi-encoder and reranked (paper: 20).
        batch_size: bi-encoder batch size.
        ce_batch_size: cross-encoder batch size.
        show_progress_bar: progress bars while encoding / reranking (default: when indexing).

    Example:
        >>> retriever = CooperativeRetriever(bi_encoder, cross_encoder, top_k=20)
        >>> retriever.index(image_paths, path="coco-images.index")  # once
        >>> retriever = CooperativeRetriever(bi_encoder, cross_encoder).open("coco-images.index")  # later
        >>> hits = retriever.search("A dog catching a frisbee.")  # list[Hit], best first
        >>> hits[0].id, hits[0].ce_score, hits[0].be_score
    """

    def __init__(
        self,
        bi_encoder: Any,
        cross_encoder: Any | None = None,
        top_k: int = 20,
        batch_size: int = 32,
        ce_batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.bi_encoder = bi_encoder
        self.cross_encoder = resolve_cross_encoder(bi_encoder, cross_encoder)
        self.top_k = top_k
        self.batch_size = batch_size
        self.ce_batch_size = ce_batch_size
        self.show_progress_bar = show_progress_bar
        self.embedding_index: EmbeddingIndex | None = None
        self.items: ItemSource | None = None

    # ------------------------------------------------------------------ building / opening a collection

    def index(
        self,
        items: Sequence[Any],
        ids: Sequence[Any] | None = None,
        path: str | None = None,
        batch_size: int | None = None,
        dtype: Literal["float32", "float16"] = "float32",
        ann: str | None = None,
        chunk_size: int = 4096,
        precision: Precision = "float32",
        search_options: dict[str, Any] | None = None,
    ) -> EmbeddingIndex:
        """Encode a collection of images (or captions) with the bi-encoder and keep it for :meth:`search`.

        Args:
            items: images (PIL, paths, RegionFeatures) or captions; one modality.
            ids: one id per item (returned in the hits); default the positions.
            path: persist the index to this folder (atomically; embeddings memory-mapped). Items that are strings
                (captions, image paths) are saved with it; other items must be passed to :meth:`open` again.
            batch_size: bi-encoder batch size (default: the retriever's).
            dtype: storage precision of the embeddings.
            ann: a FAISS factory string (e.g. ``"HNSW32"``) to also build an approximate index; exact by default.
            chunk_size: items encoded between writes, so the collection never has to fit in memory twice.
            precision / search_options: the search the index uses (``"float32"`` exact, ``"int8"``, ``"binary"``,
                ``"hnsw"``, ``"ivf"``), see :class:`EmbeddingIndex`.

        Returns:
            The :class:`EmbeddingIndex` (also kept as ``self.embedding_index``).
        """
        items = list(items)
        if not items:
            raise ValueError("index() got an empty collection; pass at least one image or caption")
        modality = collection_modality(items)
        metadata = {"modality": modality}
        batch_size = batch_size or self.batch_size
        show = True if self.show_progress_bar is None else self.show_progress_bar
        dim = self.bi_encoder.get_embedding_dimension()
        storable = all(isinstance(item, str) for item in items)
        if path is not None and not storable:
            logger.info(
                "The collection items are not strings, so they are not saved with the index; pass items= to "
                "open() to rerank after reopening"
            )

        def chunks():
            with tqdm(total=len(items), desc=f"Encoding {modality}s", unit=modality, disable=not show) as bar:
                for start in range(0, len(items), chunk_size):
                    chunk = items[start : start + chunk_size]
                    yield self.bi_encoder.encode(
                        chunk,
                        batch_size=batch_size,
                        normalize_embeddings=True,
                        convert_to_numpy=True,
                        show_progress_bar=False,
                    ).astype(np.float32, copy=False)
                    bar.update(len(chunk))

        if path is None:
            embedding_index = EmbeddingIndex(
                np.concatenate(list(chunks())),
                ids=ids,
                items=items,
                metadata=metadata,
                dtype=dtype,
                precision=precision,
                search_options=search_options,
            )
            if ann is not None:
                embedding_index.build_ann(ann)
        else:
            with IndexWriter(
                path, len(items), dim, dtype=dtype, ids=ids, items=items if storable else None, metadata=metadata
            ) as writer:
                for embeddings in chunks():
                    writer.write(embeddings)
                if ann is not None:
                    writer.build_ann(ann)
                if precision != "float32" or search_options:
                    writer.set_precision(precision, search_options)
            embedding_index = EmbeddingIndex.open(path)
        self.embedding_index = embedding_index
        self.items = items
        return embedding_index

    def open(self, path: str, items: ItemSource | None = None, mmap: bool = True, verify: Verify = "auto") -> Self:
        """Reopen a collection persisted by :meth:`index`.

        Args:
            path: the index folder.
            items: the collection items, needed for reranking when they were not saved with the index (PIL images,
                RegionFeatures): a sequence aligned with the index rows, or a function ``row -> item``.
            mmap / verify: see :meth:`EmbeddingIndex.open`.
        """
        embedding_index = EmbeddingIndex.open(path, mmap=mmap, verify=verify)
        return self.use_index(embedding_index, items)

    def use_index(self, embedding_index: EmbeddingIndex, items: ItemSource | None = None) -> Self:
        """Search an existing :class:`EmbeddingIndex` (e.g. built from embeddings computed elsewhere), or any index
        with the same ``search`` / ``row_id`` / ``metadata`` surface, such as a
        :class:`~mm_sbert.retrieval.MilvusIndex`: the engine retrieves, the cross-encoder reranks here."""
        if items is None:
            items = embedding_index.items
        if items is not None and not callable(items) and len(items) != len(embedding_index):
            raise ValueError(f"Got {len(items)} items for an index of {len(embedding_index)} rows")
        self.embedding_index = embedding_index
        self.items = items
        return self

    # ------------------------------------------------------------------ search

    def search(
        self,
        queries: Any,
        top_k: int | None = None,
        rerank: bool = True,
        score: ScoreMode = "ce",
        lam: float = 0.5,
        query_embeddings: torch.Tensor | np.ndarray | None = None,
        exact: bool | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """Retrieve the top-k items for each query with the bi-encoder, then rerank them with the cross-encoder.

        Args:
            queries: one query (a caption for an image collection, an image for a caption collection) or a list.
            top_k: candidates retrieved and returned per query (default: the retriever's ``top_k``).
            rerank: rerank with the cross-encoder; ``False`` returns the bi-encoder ranking.
            score: how hits are ordered after reranking: ``"ce"`` (cross-encoder logit, paper default),
                ``"combination"`` (``lam * s_BE + (1 - lam) * sigmoid(s_CE)``) or ``"combination_normalized"``
                (both min-max normalised over the k candidates first); see :func:`combine_scores`.
            lam: the bi-encoder weight of the combinations.
            query_embeddings: precomputed bi-encoder embeddings of ``queries`` (skips encoding them).
            exact: ``True`` forces exact search when the index also has an ANN index.

        Returns:
            For one query a list of :class:`Hit`, for a list of queries one such list per query; best hit first.
        """
        if self.embedding_index is None:
            raise RuntimeError("No collection to search: call index(items) or open(path) first")
        single = not isinstance(queries, (list, tuple))
        query_list = [queries] if single else list(queries)
        if not query_list:
            raise ValueError("search() got an empty list of queries")
        top_k = top_k or self.top_k
        score_mode = score if rerank else "be"
        if score_mode not in SCORE_MODES:
            raise ValueError(f"Unknown score {score!r}; expected one of {list(SCORE_MODES)}")

        if query_embeddings is None:
            query_embeddings = self.bi_encoder.encode(
                query_list,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_tensor=True,
                show_progress_bar=bool(self.show_progress_bar),
            )
        query_embeddings = torch.as_tensor(query_embeddings)
        if query_embeddings.ndim == 1:
            query_embeddings = query_embeddings.unsqueeze(0)
        if len(query_embeddings) != len(query_list):
            raise ValueError(f"Got {len(query_embeddings)} query embeddings for {len(query_list)} queries")
        be_scores, rows = self.embedding_index.search(query_embeddings, top_k, exact=exact)

        ce_scores = None
        if rerank:
            ce_scores = self._rerank_scores(query_list, rows)
        final = combine_scores(be_scores, ce_scores, score_mode, lam)
        # Best first (the reference implementation returned reranked hits worst-first).
        order = torch.argsort(final, dim=1, descending=True, stable=True)

        results = []
        for query_row in range(len(query_list)):
            hits = []
            for position in order[query_row].tolist():
                row = int(rows[query_row, position])
                hits.append(
                    Hit(
                        id=self.embedding_index.row_id(row),
                        score=float(final[query_row, position]),
                        be_score=float(be_scores[query_row, position]),
                        ce_score=None if ce_scores is None else float(ce_scores[query_row, position]),
                        corpus_id=row,
                    )
                )
            results.append(hits)
        return results[0] if single else results

    def _rerank_scores(self, queries: list[Any], rows: torch.Tensor) -> torch.Tensor:
        if self.cross_encoder is None:
            raise ValueError(
                "Reranking needs a cross-encoder: pass cross_encoder=... (or a joint model) or use rerank=False"
            )
        if self.items is None:
            raise ValueError(
                "Reranking needs the collection items, which were not saved with this index (they are not strings); "
                "pass items=... to open() / use_index()"
            )
        collection = self.embedding_index.metadata.get("modality")
        if collection is None:
            collection = "image" if is_text(queries[0]) else "text"
        query_kind = collection_modality(queries, what="queries")
        if query_kind == collection:
            raise ValueError(
                f"The queries are {query_kind}s and so is the collection; the cross-encoder scores (caption, image) "
                "pairs, so search an image collection with captions or a caption collection with images"
            )
        if hasattr(self.cross_encoder, "score_candidates"):
            # An exported cross-encoder (OnnxCrossEncoder) scores a query's k candidates in one batch and
            # preprocesses the query once.
            return torch.stack(
                [
                    self.cross_encoder.score_candidates(query, [self._item(row) for row in candidate_rows])
                    for query, candidate_rows in zip(queries, rows.tolist())
                ]
            )
        pairs = []
        for query, candidate_rows in zip(queries, rows.tolist()):
            for row in candidate_rows:
                item = self._item(row)
                pairs.append((query, item) if collection == "image" else (item, query))
        logits = cross_encoder_logits(
            self.cross_encoder, pairs, batch_size=self.ce_batch_size, show_progress_bar=bool(self.show_progress_bar)
        )
        return logits.reshape(rows.shape)

    def _item(self, row: int) -> Any:
        return self.items(row) if callable(self.items) else self.items[row]
