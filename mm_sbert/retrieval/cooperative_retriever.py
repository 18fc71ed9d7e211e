"""Retrieve fast with the bi-encoder, rerank smart with the cross-encoder (paper §3.3 / §3.4).

:func:`rerank` is the one place that turns (queries, candidate rows) into a reranked order; the retriever, the
evaluator, the demo and the benchmarks call it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
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
from mm_sbert.models.views import resolve_views
from mm_sbert.retrieval.embedding_index import EmbeddingIndex, IndexWriter, Verify
from mm_sbert.retrieval.pair_score_cache import PairScoreCache
from mm_sbert.retrieval.score_combination import SCORE_MODES, ScoreMode, combine_scores
from mm_sbert.retrieval.vector_search import Precision
from mm_sbert.thread_policy import thread_limit

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
    """The given cross-encoder, or the joint model's own CE view when the bi-encoder's module has a score head.

    Kept for existing callers; :func:`mm_sbert.models.views.resolve_views` is the one place that switches views.
    """
    return resolve_views(bi_encoder, cross_encoder)[1]


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


@dataclass
class Reranked:
    """The candidates of each query, reordered by :func:`rerank`; every tensor is ``[num_queries, k]``, best first.

    Attributes:
        rows: candidate rows (positions in the candidate collection).
        scores: the ranking score (see ``score`` in :func:`rerank`).
        be_scores: the bi-encoder scores passed in, in the new order.
        ce_scores: the cross-encoder logits (``None`` for ``score="be"``).
        ce_seconds: cross-encoder time of these pairs; pairs found in the cache are charged what they cost when
            they were scored, so the figure is what this ranking costs on its own.
        ce_pairs: pairs cross-encoded by this call (the cache misses).
    """

    rows: torch.Tensor
    scores: torch.Tensor
    be_scores: torch.Tensor
    ce_scores: torch.Tensor | None
    ce_seconds: float
    ce_pairs: int


def rerank(
    cross_encoder: Any | None,
    queries: Sequence[Any],
    candidates: ItemSource,
    rows: torch.Tensor | np.ndarray | Sequence[Sequence[int]],
    be_scores: torch.Tensor | np.ndarray | None = None,
    k: int | None = None,
    *,
    score: ScoreMode = "ce",
    lam: float = 0.5,
    query_modality: Modality | None = None,
    query_ids: Sequence[Hashable] | None = None,
    candidate_ids: Sequence[Hashable] | None = None,
    cache: PairScoreCache | None = None,
    batch_size: int = 32,
    show_progress_bar: bool = False,
) -> Reranked:
    """Rerank each query's candidates with the cross-encoder: the one path from (queries, candidate rows) to a
    ranking, used by :class:`CooperativeRetriever`, the evaluator, the demo and the benchmarks.

    Pairs are always built as ``(caption, image)``: captions as queries search images, images search captions.

    Args:
        cross_encoder: anything with the host's ``CrossEncoder.predict`` (logits are read, no sigmoid); may be
            ``None`` for ``score="be"``.
        queries: one query item per row of ``rows`` (captions, or images: PIL, paths, RegionFeatures).
        candidates: the collection the rows point into: a sequence, or a function ``row -> item`` (read only for
            pairs that are not cached).
        rows: ``[num_queries, K]`` candidate rows per query, e.g. the bi-encoder's top-K (best first).
        be_scores: ``[num_queries, K]`` bi-encoder scores of those candidates; needed for every score but ``"ce"``.
        k: rerank only the first ``k`` candidates of each query (default: all ``K``).
        score: ``"ce"`` (cross-encoder logit, the paper's default), ``"combination"``, ``"combination_normalized"``
            (with ``lam``; see :func:`~mm_sbert.retrieval.combine_scores`) or ``"be"`` (no cross-encoding).
        lam: the bi-encoder weight of the combinations.
        query_modality: ``"text"`` or ``"image"``; inferred from ``queries`` when left out.
        query_ids / candidate_ids: the ids that key the cache (default: query positions / candidate rows);
            ``query_ids`` is required with a cache, so two query lists never share keys by position.
        cache: a :class:`PairScoreCache` to read and fill (keys ``(caption id, image id)``).
        batch_size / show_progress_bar: passed to ``predict``.

    Returns:
        A :class:`Reranked`.

    Example:
        A benchmark with precomputed, normalised embeddings:

        >>> be_scores, rows = exact_search(caption_embeddings, image_embeddings, top_k=20)
        >>> cache = PairScoreCache()
        >>> result = rerank(cross_encoder, captions, images, rows, be_scores, query_ids=caption_ids, cache=cache)
        >>> result.rows[:, 0], result.ce_seconds
    """
    if score not in SCORE_MODES:
        raise ValueError(f"Unknown score {score!r}; expected one of {list(SCORE_MODES)}")
    rows = torch.as_tensor(rows).cpu().long()
    if rows.ndim != 2:
        raise ValueError(f"rows must be [num_queries, K] candidate rows, got shape {tuple(rows.shape)}")
    if len(rows) != len(queries):
        raise ValueError(f"Got candidate rows for {len(rows)} queries but {len(queries)} queries")
    if be_scores is None:
        if score != "ce":
            raise ValueError(f"Score {score!r} needs be_scores; pass the bi-encoder scores of the candidates")
        be_scores = torch.zeros(rows.shape)
    be_scores = torch.as_tensor(be_scores).detach().float().cpu()
    if be_scores.shape != rows.shape:
        raise ValueError(f"be_scores {tuple(be_scores.shape)} and rows {tuple(rows.shape)} differ in shape")
    if k is not None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        rows, be_scores = rows[:, :k], be_scores[:, :k]
    if query_ids is not None and len(query_ids) != len(queries):
        raise ValueError(f"Got {len(query_ids)} query_ids for {len(queries)} queries")
    if cache is not None and query_ids is None:
        raise ValueError("A cache needs query_ids: ids that name the queries across calls (not their positions)")

    ce_scores, seconds, computed = None, 0.0, 0
    if score != "be":
        if cross_encoder is None:
            raise ValueError(f"Score {score!r} needs a cross-encoder; pass one, or use score='be'")
        caption_first = (query_modality or collection_modality(queries, what="queries")) == "text"
        item = candidates if callable(candidates) else candidates.__getitem__
        flat = [(query, row) for query, query_rows in enumerate(rows.tolist()) for row in query_rows]

        def pair(query: int, row: int) -> tuple[Any, Any]:
            return (queries[query], item(row)) if caption_first else (item(row), queries[query])

        def score_pairs(positions: list[tuple[int, int]]) -> torch.Tensor:
            if hasattr(cross_encoder, "score_candidates"):
                # An exported cross-encoder (OnnxCrossEncoder) scores a query's candidates in one batch with the
                # query preprocessed once; logits are put back in the order of ``positions``.
                by_query: dict[int, list[int]] = {}
                for slot, (query, _) in enumerate(positions):
                    by_query.setdefault(query, []).append(slot)
                logits = torch.empty(len(positions))
                for query, slots in by_query.items():
                    scores = cross_encoder.score_candidates(queries[query], [item(positions[s][1]) for s in slots])
                    logits[slots] = scores.detach().float().cpu().reshape(-1)
                return logits
            return cross_encoder_logits(
                cross_encoder, [pair(q, r) for q, r in positions], batch_size, show_progress_bar=show_progress_bar
            )

        if cache is None:
            start = time.perf_counter()
            logits = score_pairs(flat)
            seconds, computed = time.perf_counter() - start, len(flat)
        else:

            def key(query: int, row: int) -> tuple[Hashable, Hashable]:
                ids = (query_ids[query], row if candidate_ids is None else candidate_ids[row])
                return ids if caption_first else ids[::-1]

            keys = [key(q, r) for q, r in flat]
            todo: dict[tuple[Hashable, Hashable], tuple[int, int]] = {}
            for pair_key, position in zip(keys, flat):
                if pair_key not in cache and pair_key not in todo:
                    todo[pair_key] = position
            if todo:
                start = time.perf_counter()
                fresh = score_pairs(list(todo.values()))
                cache.put(todo, fresh.tolist(), (time.perf_counter() - start) / len(todo))
            entries = [cache.get(pair_key) for pair_key in keys]
            logits = torch.tensor([logit for logit, _ in entries], dtype=torch.float32)
            seconds, computed = sum(cost for _, cost in entries), len(todo)
        ce_scores = logits.reshape(rows.shape)

    final = combine_scores(be_scores, ce_scores, score, lam)
    # Best first, ties in the incoming (bi-encoder) order; the reference implementation returned hits worst-first.
    order = torch.argsort(final, dim=1, descending=True, stable=True)
    return Reranked(
        rows=rows.gather(1, order),
        scores=final.gather(1, order),
        be_scores=be_scores.gather(1, order),
        ce_scores=None if ce_scores is None else ce_scores.gather(1, order),
        ce_seconds=seconds,
        ce_pairs=computed,
    )


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
        self.bi_encoder, self.cross_encoder = resolve_views(bi_encoder, cross_encoder)
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
        threads: int | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """Retrieve the top-k items for each query with the bi-encoder, then rerank them with the cross-encoder.

        Args:
            queries: one query (a caption for an image collection, an image for a caption collection) or a list.
            top_k: candidates retrieved and returned per query, >= 1 (default: the retriever's ``top_k``).
            rerank: rerank with the cross-encoder; ``False`` returns the bi-encoder ranking.
            score: how hits are ordered after reranking: ``"ce"`` (cross-encoder logit, paper default),
                ``"combination"`` (``lam * s_BE + (1 - lam) * sigmoid(s_CE)``) or ``"combination_normalized"``
                (both min-max normalised over the k candidates first); see :func:`combine_scores`.
            lam: the bi-encoder weight of the combinations.
            query_embeddings: precomputed bi-encoder embeddings of ``queries`` (skips encoding them).
            exact: ``True`` forces exact search when the index also has an ANN index.
            threads: CPU threads for encoding, search and reranking; default: the process's
                :class:`~mm_sbert.ThreadPolicy` per stage (the cores other processes leave free; search at most one
                per query).

        Returns:
            For one query a list of :class:`Hit`, for a list of queries one such list per query; best hit first.
        """
        if self.embedding_index is None:
            raise RuntimeError("No collection to search: call index(items) or open(path) first")
        single = not isinstance(queries, (list, tuple))
        query_list = [queries] if single else list(queries)
        if not query_list:
            raise ValueError("search() got an empty list of queries")
        if top_k is None:
            top_k = self.top_k
        elif isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            # 0 used to fall back to the default k silently
            raise ValueError(
                f"top_k must be an integer >= 1 (or None for the retriever's {self.top_k}), got {top_k!r}"
            )
        score_mode = score if rerank else "be"
        if score_mode not in SCORE_MODES:
            raise ValueError(f"Unknown score {score!r}; expected one of {list(SCORE_MODES)}")

        if query_embeddings is None:
            with thread_limit("encode", len(query_list), threads):
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
        # Other engines (MilvusIndex) run their own threads.
        search_threads = {"threads": threads} if isinstance(self.embedding_index, EmbeddingIndex) else {}
        be_scores, rows = self.embedding_index.search(query_embeddings, top_k, exact=exact, **search_threads)
        query_kind = self._check_rerank(query_list) if rerank else None
        with thread_limit("rerank", rows.numel(), threads):
            reranked = self._rank(query_list, rows, be_scores, score_mode, lam, query_kind)

        ce_scores = reranked.ce_scores.tolist() if reranked.ce_scores is not None else None
        results = []
        for query_row, rows_of_query in enumerate(reranked.rows.tolist()):
            hits = []
            for position, row in enumerate(rows_of_query):
                hits.append(
                    Hit(
                        id=self.embedding_index.row_id(row),
                        score=float(reranked.scores[query_row, position]),
                        be_score=float(reranked.be_scores[query_row, position]),
                        ce_score=None if ce_scores is None else ce_scores[query_row][position],
                        corpus_id=row,
                    )
                )
            results.append(hits)
        return results[0] if single else results

    def _rank(
        self,
        queries: list[Any],
        rows: torch.Tensor,
        be_scores: torch.Tensor,
        score: ScoreMode,
        lam: float,
        query_modality: Modality | None,
    ) -> Reranked:
        return rerank(
            self.cross_encoder if score != "be" else None,
            queries,
            self._item,
            rows,
            be_scores,
            score=score,
            lam=lam,
            query_modality=query_modality,
            batch_size=self.ce_batch_size,
            show_progress_bar=bool(self.show_progress_bar),
        )

    def _check_rerank(self, queries: list[Any]) -> Modality:
        """The queries' modality, after checking that reranking them against this collection is possible."""
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
        return query_kind

    def _item(self, row: int) -> Any:
        return self.items(row) if callable(self.items) else self.items[row]
