"""Retrieve fast with the bi-encoder, rerank smart with the cross-encoder (paper §3.3 / §3.4).

:func:`rerank` is the one place that turns (queries, candidate rows) into a reranked order; the retriever, the
evaluator, the demo and the benchmarks call it.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
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

from mm_sbert import memory_policy
from mm_sbert.errors import InvalidInputError, MissingFileError, StorageError, UnknownIdError
from mm_sbert.export.onnx_cross_encoder import onnx_module, query_candidate_features, score_candidates
from mm_sbert.image_features.image_loading import ItemKind, is_text
from mm_sbert.models.views import multimodal_module, resolve_views
from mm_sbert.retrieval.base_index import BaseIndex
from mm_sbert.retrieval.cross_encoder_ensemble import check_cross_encoder, ensemble_members, mean_logits
from mm_sbert.retrieval.embedding_index import (
    EmbeddingIndex,
    IndexWriter,
    Verify,
    check_encoder_fingerprint,
    encoder_fingerprint,
)
from mm_sbert.retrieval.index_folder import (
    EMBEDDINGS_FOLDER,
    MILVUS_FILE,
    confined_paths,
    image_root_of,
    is_index_folder,
    read_index_config,
    write_index_folder,
    write_milvus_index_folder,
)
from mm_sbert.retrieval.pair_score_cache import PairScoreCache
from mm_sbert.retrieval.score_combination import SCORE_MODES, ScoreMode, combine_scores
from mm_sbert.retrieval.vector_search import Precision
from mm_sbert.thread_policy import thread_limit

logger = logging.getLogger(__name__)

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
            raise UnknownIdError(key)
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collection_modality(items: Sequence[Any], what: str = "items") -> ItemKind:
    """``"text"`` when every item is a caption, ``"image"`` when none is; a mix is refused."""
    kinds = {is_text(item) for item in items}
    if len(kinds) != 1:
        raise InvalidInputError(f"The {what} mix captions and images; a collection holds one modality only")
    return "text" if kinds.pop() else "image"


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


def eager_module(cross_encoder: Any) -> Any | None:
    """The ``MultimodalTransformer`` of a PyTorch cross-encoder made of that module alone (in eval mode, with a
    score head), else ``None``. Reranking then scores a query's candidates with :func:`eager_candidate_logits`
    instead of ``predict``: the same logits without tokenising the query once per pair or checking every candidate
    twice."""
    module = multimodal_module(cross_encoder)
    if module is None or len(cross_encoder) != 1 or module.classifier is None:
        return None
    if module.training or module.onnx_scorer is not None:
        return None
    return module


def eager_candidate_logits(module: Any, query: Any, candidates: Sequence[Any], batch_size: int = 32) -> torch.Tensor:
    """Logits ``[k]`` of the pairs (query, candidate) from the module's own forward, ``batch_size`` pairs at a time,
    the query preprocessed once (see :func:`~mm_sbert.export.onnx_cross_encoder.query_candidate_features`)."""
    device = next(module.parameters()).device
    logits = []
    with torch.inference_mode():
        for start in range(0, len(candidates), batch_size):
            features = query_candidate_features(module, query, candidates[start : start + batch_size])
            features = {name: tensor.to(device) for name, tensor in features.items()}
            logits.append(module(features)["scores"].float().cpu().reshape(-1))
    return torch.cat(logits)


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
    query_modality: ItemKind | None = None,
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
        cross_encoder: anything with the host's ``CrossEncoder.predict`` (logits are read, no sigmoid), or a
            :class:`CrossEncoderEnsemble` (each member scores on its own fast path; their logits are averaged); may
            be ``None`` for ``score="be"``.
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
        raise InvalidInputError(f"Unknown score {score!r}; expected one of {list(SCORE_MODES)}")
    rows = torch.as_tensor(rows).cpu().long()
    if rows.ndim != 2:
        raise InvalidInputError(f"rows must be [num_queries, K] candidate rows, got shape {tuple(rows.shape)}")
    if len(rows) != len(queries):
        raise InvalidInputError(f"Got candidate rows for {len(rows)} queries but {len(queries)} queries")
    if be_scores is None:
        if score != "ce":
            raise InvalidInputError(f"Score {score!r} needs be_scores; pass the bi-encoder scores of the candidates")
        be_scores = torch.zeros(rows.shape)
    be_scores = torch.as_tensor(be_scores).detach().float().cpu()
    if be_scores.shape != rows.shape:
        raise InvalidInputError(f"be_scores {tuple(be_scores.shape)} and rows {tuple(rows.shape)} differ in shape")
    if k is not None:
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        rows, be_scores = rows[:, :k], be_scores[:, :k]
    if query_ids is not None and len(query_ids) != len(queries):
        raise InvalidInputError(f"Got {len(query_ids)} query_ids for {len(queries)} queries")
    if cache is not None and query_ids is None:
        raise InvalidInputError(
            "A cache needs query_ids: ids that name the queries across calls (not their positions)"
        )

    ce_scores, seconds, computed = None, 0.0, 0
    if score != "be":
        if cross_encoder is None:
            raise InvalidInputError(f"Score {score!r} needs a cross-encoder; pass one, or use score='be'")
        check_cross_encoder(cross_encoder)
        caption_first = (query_modality or collection_modality(queries, what="queries")) == "text"
        item = candidates if callable(candidates) else candidates.__getitem__
        flat = [(query, row) for query, query_rows in enumerate(rows.tolist()) for row in query_rows]

        def pair(query: int, row: int) -> tuple[Any, Any]:
            return (queries[query], item(row)) if caption_first else (item(row), queries[query])

        def member_logits(member: Any, positions: list[tuple[int, int]]) -> torch.Tensor:
            fast = onnx_module(member)
            eager = eager_module(member) if fast is None else None
            if fast is not None or eager is not None:
                # A query's candidates are scored in batches with the query preprocessed once (ONNX Runtime, or the
                # PyTorch module itself); logits are put back in the order of ``positions``.
                by_query: dict[int, list[int]] = {}
                for slot, (query, _) in enumerate(positions):
                    by_query.setdefault(query, []).append(slot)
                logits = torch.empty(len(positions))
                for query, slots in by_query.items():
                    found = [item(positions[s][1]) for s in slots]
                    if fast is not None:
                        scores = score_candidates(fast, queries[query], found)
                    else:
                        scores = eager_candidate_logits(eager, queries[query], found, batch_size)
                    logits[slots] = scores.detach().float().cpu().reshape(-1)
                return logits
            return cross_encoder_logits(
                member, [pair(q, r) for q, r in positions], batch_size, show_progress_bar=show_progress_bar
            )

        members = ensemble_members(cross_encoder)

        def score_pairs(positions: list[tuple[int, int]]) -> torch.Tensor:
            if len(members) == 1:
                return member_logits(members[0], positions)
            return mean_logits([member_logits(member, positions) for member in members])

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
        cross_encoder: a :class:`~mm_sbert.MMCrossEncoder` (loaded with ``backend="onnx"``, it scores each query's
            k candidates in one ONNX Runtime batch, the query preprocessed once), or a :class:`CrossEncoderEnsemble`
            of several (their mean logit). Left out, a joint model (a bi-encoder whose ``MultimodalTransformer``
            has a score head) reranks with its own head; otherwise only ``rerank=False`` searches work.
        top_k: hits returned per query (paper: 20).
        rerank_k: candidates the bi-encoder retrieves and the cross-encoder reranks per query (default: ``top_k``,
            the paper's setting; at least ``top_k``).
        batch_size: bi-encoder batch size.
        ce_batch_size: cross-encoder batch size.
        show_progress_bar: progress bars while encoding / reranking (default: when indexing).
        retain_freed_memory: let this process's malloc keep the memory tensors free for the next query (see
            :func:`mm_sbert.memory_policy.retain_freed_memory`; process-wide, glibc only): each query then reuses
            its activations' memory instead of faulting in fresh pages.

    Example:
        >>> retriever = CooperativeRetriever(bi_encoder, cross_encoder, top_k=20)
        >>> retriever.index(image_paths, path="coco-images.index")  # once: an index folder
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
        rerank_k: int | None = None,
        retain_freed_memory: bool = True,
    ) -> None:
        if top_k < 1:
            raise InvalidInputError(f"top_k must be >= 1, got {top_k}")
        if rerank_k is not None and rerank_k < 1:
            raise InvalidInputError(f"rerank_k must be >= 1, got {rerank_k}")
        self.rerank_k = rerank_k
        self.bi_encoder, self.cross_encoder = resolve_views(bi_encoder, cross_encoder)
        if self.cross_encoder is not None:
            check_cross_encoder(self.cross_encoder)
        self.top_k = top_k
        self.batch_size = batch_size
        self.ce_batch_size = ce_batch_size
        self.show_progress_bar = show_progress_bar
        self.embedding_index: BaseIndex | None = None
        self.items: ItemSource | None = None
        self.image_paths: Callable[[int], str] | None = None
        if retain_freed_memory:
            memory_policy.retain_freed_memory()

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
        *,
        store: Any | None = None,
        backend: Literal["local", "milvus"] = "local",
        uri: str | None = None,
        collection: str = "mm_sbert",
        model_path: str | None = None,
        inputs: Sequence[str | None] = (),
        processes: int | Sequence[str] | None = None,
    ) -> BaseIndex:
        """Encode a collection of images (or captions) with the bi-encoder and keep it for :meth:`search`.

        Args:
            items: images (PIL, paths, RegionFeatures) or captions; one modality.
            ids: one id per item (returned in the hits); default the positions.
            path: persist the collection as an index folder (see :mod:`mm_sbert.retrieval.index_folder`): the
                rows, the bi-encoder's fingerprint, the folder the image paths lie in and the store they were read
                from, so :meth:`open` can refuse another model and read no image outside that folder. ``path``
                must be new, empty or an index folder mm_sbert wrote, and none of the items or ``inputs``; a
                rebuild is published only once complete (the old index stays usable if it fails). Items that are
                strings (captions, image paths) are saved; other items must be passed to :meth:`open` again.
            batch_size: bi-encoder batch size (default: the retriever's).
            dtype: storage precision of the embeddings.
            ann: deprecated; use ``precision="hnsw"`` / ``"ivf"`` (with ``search_options={"factory": ann}``).
            chunk_size: items encoded between writes, so the collection never has to fit in memory twice.
            precision / search_options: the search the index uses (``"float32"`` exact, ``"int8"``, ``"binary"``,
                ``"hnsw"``, ``"ivf"``), see :class:`EmbeddingIndex`.
            store: a :class:`~mm_sbert.FeatureStore` (or its folder) holding the regions of the image paths
                ``items`` (by file name): they are encoded from it instead of being featurized, and reranking after
                :meth:`open` reads the candidates' regions from it.
            backend: ``"local"`` (an :class:`EmbeddingIndex` in the folder) or ``"milvus"`` (a
                :class:`~mm_sbert.retrieval.MilvusIndex` collection ``collection`` at ``uri``, default
                ``<path>/milvus.db``; needs ``path``).
            model_path: the bi-encoder's folder, recorded so a search can load it by default.
            inputs: more paths the caller reads (data, model), which ``path`` may not be, hold or lie in.
            processes: encode in several processes (the host's multi-process pool): a count of CPU processes, or
                their devices (``["cuda:0", "cuda:1"]``). Each chunk of ``chunk_size`` items is split into shards
                over the processes and their embeddings come back in order, so the index is the one a single
                process writes.

        Returns:
            The index (also kept as ``self.embedding_index``).
        """
        items = list(items)
        if not items:
            raise InvalidInputError("index() got an empty collection; pass at least one image or caption")
        if ann is not None:
            warnings.warn(
                "index(ann=...) is deprecated: pass precision='hnsw' or 'ivf' (and search_options={'factory': ...})",
                DeprecationWarning,
                stacklevel=2,
            )
            precision = "hnsw" if ann.upper().startswith("HNSW") else "ivf"
            search_options = {**(search_options or {}), "factory": ann}
        if backend not in ("local", "milvus"):
            raise InvalidInputError(f"backend must be 'local' or 'milvus', got {backend!r}")
        if backend == "milvus" and path is None:
            raise InvalidInputError("backend='milvus' needs path=, the index folder that records the collection")
        if backend == "milvus" and (precision != "float32" or search_options):
            raise InvalidInputError(
                "precision and search_options choose the local index's search; with Milvus, Milvus does"
            )
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
        to_encode = items
        if store is not None:
            store = _as_store(store)
            to_encode = _stored_regions(store, items, self.bi_encoder)

        devices = _process_devices(processes)
        pool_holder: dict[str, Any] = {}

        def chunks():
            with tqdm(total=len(items), desc=f"Encoding {modality}s", unit=modality, disable=not show) as bar:
                for start in range(0, len(items), chunk_size):
                    chunk = to_encode[start : start + chunk_size]
                    options = {}
                    if devices is not None:
                        if "pool" not in pool_holder:
                            pool_holder["pool"] = self.bi_encoder.start_multi_process_pool(devices)
                        # Shards of the chunk, one batch or more per process; the host returns them in order.
                        shard = max(batch_size, -(-len(chunk) // len(devices)))
                        options = {"pool": pool_holder["pool"], "chunk_size": shard}
                    yield self.bi_encoder.encode(
                        chunk,
                        batch_size=batch_size,
                        normalize_embeddings=True,
                        convert_to_numpy=True,
                        show_progress_bar=False,
                        **options,
                    ).astype(np.float32, copy=False)
                    bar.update(len(chunk))

        try:
            if path is None:
                embedding_index: BaseIndex = EmbeddingIndex(
                    np.concatenate(list(chunks())),
                    ids=ids,
                    items=items,
                    metadata=metadata,
                    dtype=dtype,
                    precision=precision,
                    search_options=search_options,
                )
            else:
                image_paths = [item for item in items if isinstance(item, str) and modality == "image"]
                inputs = [*inputs, model_path, None if store is None else str(store.path), *image_paths]
                config = {
                    "model": None if model_path is None else os.path.abspath(model_path),
                    "model_fingerprint": encoder_fingerprint(self.bi_encoder),
                    "image_root": image_root_of(items) if modality == "image" else None,
                    "store": None if store is None else os.path.abspath(store.path),
                    "num_images": len(items),
                    "backend": backend,
                    "precision": precision,
                    "complete": True,
                }
                saved_items = items if storable else None
                if backend == "milvus":
                    from mm_sbert.retrieval.milvus_index import MilvusIndex

                    uri = uri or os.path.join(os.path.abspath(path), MILVUS_FILE)
                    if "://" not in uri:  # a milvus-lite file: recorded absolute, so search works from any directory
                        uri = os.path.abspath(uri)
                    config.update(uri=uri, collection=collection)

                    def write_collection(overwrite: bool) -> None:
                        rows = EmbeddingIndex(
                            np.concatenate(list(chunks())), ids, saved_items, metadata, normalize=False
                        )
                        MilvusIndex.from_index(rows, uri, collection_name=collection, overwrite=overwrite).close()

                    write_milvus_index_folder(path, config, write_collection, inputs=inputs)
                    embedding_index = MilvusIndex(uri, collection)
                else:

                    def write_rows(folder: str) -> None:
                        with IndexWriter(
                            folder,
                            len(items),
                            dim,
                            dtype=dtype,
                            ids=ids,
                            items=saved_items,
                            metadata=metadata,
                            lock=False,
                        ) as writer:
                            for embeddings in chunks():
                                writer.write(embeddings)
                            if precision != "float32" or search_options:
                                writer.set_precision(precision, search_options)

                    write_index_folder(path, config, write_rows, inputs=inputs)
                    embedding_index = EmbeddingIndex.open(os.path.join(path, EMBEDDINGS_FOLDER))
            self.embedding_index = embedding_index
            self.items = items
            self.image_paths = None
        finally:
            if "pool" in pool_holder:
                self.bi_encoder.stop_multi_process_pool(pool_holder["pool"])
        return embedding_index

    def open(
        self,
        path: str,
        items: ItemSource | None = None,
        mmap: bool = True,
        verify: Verify = "auto",
        *,
        image_root: str | None = None,
        store: Any | None = None,
    ) -> Self:
        """Reopen a collection persisted by :meth:`index` (an index folder) or :meth:`EmbeddingIndex.save`.

        An index folder is searched only as safely as ``mm-sbert search`` does: the bi-encoder must embed like the
        one that built it (:class:`~mm_sbert.errors.ModelMismatchError` otherwise), and every stored image path is
        read inside ``image_root`` (:class:`~mm_sbert.errors.UnsafePathError` for one that leads elsewhere). With a
        feature store (given, or the one the index was built from when it still exists and fits the
        cross-encoder's featurizer), the candidates' regions are read from it instead of featurizing their images.

        Args:
            path: the index folder.
            items: the collection items, needed for reranking when they were not saved with the index (PIL images,
                RegionFeatures): a sequence aligned with the index rows, or a function ``row -> item``.
            mmap / verify: see :meth:`EmbeddingIndex.open`.
            image_root: the folder the indexed images are read from (default: the one recorded at indexing; pass it
                when the images moved).
            store: a :class:`~mm_sbert.FeatureStore` (or folder) with the images' regions, for reranking.

        Raises:
            ModelMismatchError: the bi-encoder is not the one that built the index.
            StorageError: the folder is incomplete, corrupt or of an unknown format.
            FileNotFoundError: no index at ``path``, or no ``image_root`` folder.
        """
        self.image_paths = None
        if not is_index_folder(path):
            return self.use_index(EmbeddingIndex.open(path, mmap=mmap, verify=verify), items)
        config = read_index_config(path)
        fingerprint = config.get("model_fingerprint")
        if fingerprint is None:
            warnings.warn(
                f"The index '{path}' records no model fingerprint (an older `mm-sbert index` wrote it), so the model "
                "cannot be checked against the one that built it; rebuild the index to record one",
                UserWarning,
                stacklevel=2,
            )
        else:
            check_encoder_fingerprint(fingerprint, self.bi_encoder, what=f"the index '{path}'")
        if config.get("backend") == "milvus":
            from mm_sbert.retrieval.milvus_index import MilvusIndex

            try:
                embedding_index: BaseIndex = MilvusIndex(config["uri"], config["collection"])
            except ValueError as error:
                raise StorageError(f"The Milvus collection of the index '{path}' cannot be opened: {error}") from error
        else:
            embedding_index = EmbeddingIndex.open(os.path.join(path, EMBEDDINGS_FOLDER), mmap=mmap, verify=verify)
        stored = embedding_index.items
        if items is None and stored is not None and embedding_index.metadata.get("modality") == "image":
            recorded = config.get("image_root")
            root = image_root or recorded
            if root is None:
                raise InvalidInputError(
                    f"The index '{path}' records no image folder (an older `mm-sbert index` wrote it); pass "
                    "image_root= (images are read only inside it) or rebuild the index"
                )
            if not os.path.isdir(root):
                raise MissingFileError(
                    f"The image folder '{root}' of the index '{path}' does not exist; pass image_root="
                )
            self.image_paths = confined_paths(stored, recorded, root)
            items = self.image_paths
            explicit = store is not None
            store = store if explicit else config.get("store")
            if store is not None and self.cross_encoder is not None and (explicit or os.path.isdir(store)):
                items = _store_candidates(_as_store(store), self.image_paths, self.cross_encoder, explicit) or items
            if items is self.image_paths and self.cross_encoder is not None:
                _check_reads_images(self.cross_encoder)
        return self.use_index(embedding_index, items)

    def image_path(self, row: int) -> Any:
        """The file of row ``row`` as :meth:`open` confined it to the image folder (the stored item otherwise)."""
        return self.image_paths(row) if self.image_paths is not None else self._stored_item(row)

    def use_index(self, embedding_index: BaseIndex, items: ItemSource | None = None) -> Self:
        """Search an existing index (e.g. an :class:`EmbeddingIndex` built from embeddings computed elsewhere, or a
        :class:`~mm_sbert.retrieval.MilvusIndex`): the engine retrieves, the cross-encoder reranks here."""
        if items is None:
            items = embedding_index.items
        if items is not None and not callable(items) and len(items) != len(embedding_index):
            raise InvalidInputError(f"Got {len(items)} items for an index of {len(embedding_index)} rows")
        self.embedding_index = embedding_index
        self.items = items
        return self

    def close(self) -> None:
        """Close the index (a Milvus connection); a no-op for a folder."""
        if self.embedding_index is not None:
            self.embedding_index.close()

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
        rerank_k: int | None = None,
        threads: int | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """Retrieve the top-k items for each query with the bi-encoder, then rerank them with the cross-encoder.

        Args:
            queries: one query (a caption for an image collection, an image for a caption collection) or a list.
            top_k: hits returned per query, >= 1 (default: the retriever's ``top_k``).
            rerank: rerank with the cross-encoder; ``False`` returns the bi-encoder ranking.
            score: how hits are ordered after reranking: ``"ce"`` (cross-encoder logit, paper default),
                ``"combination"`` (``lam * s_BE + (1 - lam) * sigmoid(s_CE)``) or ``"combination_normalized"``
                (both min-max normalised over the k candidates first); see :func:`combine_scores`.
            lam: the bi-encoder weight of the combinations.
            query_embeddings: precomputed bi-encoder embeddings of ``queries`` (skips encoding them).
            exact: ``True`` forces exact search when the index has a cheaper ``precision``.
            rerank_k: candidates retrieved and reranked per query (default: the retriever's ``rerank_k``, else
                ``top_k``); at least ``top_k`` are.
            threads: CPU threads for encoding, search and reranking; default: the process's
                :class:`~mm_sbert.ThreadPolicy` per stage (the cores other processes leave free).

        Returns:
            For one query a list of :class:`Hit`, for a list of queries one such list per query; best hit first.
        """
        if self.embedding_index is None:
            raise RuntimeError("No collection to search: call index(items) or open(path) first")
        single = not isinstance(queries, (list, tuple))
        query_list = [queries] if single else list(queries)
        if not query_list:
            raise InvalidInputError("search() got an empty list of queries")
        if top_k is None:
            top_k = self.top_k
        elif isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            # 0 used to fall back to the default k silently
            raise InvalidInputError(
                f"top_k must be an integer >= 1 (or None for the retriever's {self.top_k}), got {top_k!r}"
            )
        if rerank_k is not None and (isinstance(rerank_k, bool) or not isinstance(rerank_k, int) or rerank_k < 1):
            raise InvalidInputError(f"rerank_k must be an integer >= 1, got {rerank_k!r}")
        candidates = max(top_k, rerank_k or self.rerank_k or top_k)
        score_mode = score if rerank else "be"
        if score_mode not in SCORE_MODES:
            raise InvalidInputError(f"Unknown score {score!r}; expected one of {list(SCORE_MODES)}")

        if query_embeddings is None:
            with thread_limit("encode", threads):
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
            raise InvalidInputError(f"Got {len(query_embeddings)} query embeddings for {len(query_list)} queries")
        be_scores, rows = self.embedding_index.search(query_embeddings, candidates, exact=exact, threads=threads)
        query_kind = self._check_rerank(query_list) if rerank else None
        with thread_limit("rerank", threads):
            reranked = self._rank(query_list, rows, be_scores, score_mode, lam, query_kind)

        ce_scores = reranked.ce_scores.tolist() if reranked.ce_scores is not None else None
        results = []
        for query_row, rows_of_query in enumerate(reranked.rows.tolist()):
            hits = []
            for position, row in enumerate(rows_of_query[:top_k]):
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
        query_modality: ItemKind | None,
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

    def _check_rerank(self, queries: list[Any]) -> ItemKind:
        """The queries' modality, after checking that reranking them against this collection is possible."""
        if self.cross_encoder is None:
            raise InvalidInputError(
                "Reranking needs a cross-encoder: pass cross_encoder=... (or a joint model) or use rerank=False"
            )
        if self.items is None:
            raise InvalidInputError(
                "Reranking needs the collection items, which were not saved with this index (they are not strings); "
                "pass items=... to open() / use_index()"
            )
        collection = self.embedding_index.metadata.get("modality")
        if collection is None:
            collection = "image" if is_text(queries[0]) else "text"
        query_kind = collection_modality(queries, what="queries")
        if query_kind == collection:
            raise InvalidInputError(
                f"The queries are {query_kind}s and so is the collection; the cross-encoder scores (caption, image) "
                "pairs, so search an image collection with captions or a caption collection with images"
            )
        return query_kind

    def _item(self, row: int) -> Any:
        return self.items(row) if callable(self.items) else self.items[row]

    def _stored_item(self, row: int) -> Any:
        stored = self.embedding_index.items
        return self.embedding_index.row_id(row) if stored is None else stored(row) if callable(stored) else stored[row]


def _process_devices(processes: int | Sequence[str] | None) -> list[str] | None:
    """The devices of ``index(processes=...)``: ``None`` for this process alone."""
    if isinstance(processes, bool) or (isinstance(processes, int) and processes < 1):
        raise InvalidInputError(f"processes must be a count >= 1 or a list of devices, got {processes!r}")
    if processes is None or processes == 1:
        return None
    if isinstance(processes, int):
        return ["cpu"] * processes
    devices = [str(device) for device in processes]
    if not devices:
        raise InvalidInputError("processes got an empty list of devices")
    return devices


def _check_reads_images(cross_encoder: Any) -> None:
    """What reranking image files needs of a cross-encoder (its own tokenizer reads the captions): a featurizer."""
    for member in ensemble_members(cross_encoder):
        try:
            module = member[0]
        except (TypeError, IndexError, KeyError):
            continue  # not a MultimodalTransformer model: its predict decides what it reads
        if not hasattr(module, "featurizer") or module.featurizer is not None:
            continue
        raise InvalidInputError(
            "The cross-encoder has no image featurizer, so it cannot read the candidate images; pass store= with "
            "their region features (built by the featurizer it was trained on)"
        )


def _as_store(store: Any) -> Any:
    from mm_sbert.image_features import FeatureStore

    return store if isinstance(store, FeatureStore) else FeatureStore(store)


def _stored_regions(store: Any, images: list[Any], model: Any) -> list[Any]:
    """The regions of ``images`` (paths, looked up by file name) read from ``store``, checked against ``model``'s
    featurizer and region width."""
    from mm_sbert.data.store_image_resolver import StoreImageResolver

    store.check_compatible(model)
    return StoreImageResolver(store).resolve(images, what="the images to index")


def _store_candidates(
    store: Any, image_paths: Callable[[int], str], cross_encoder: Any, explicit: bool
) -> Callable[[int], Any] | None:
    """``row -> regions`` read from ``store`` (the image file where the store lacks it) when the cross-encoder's
    featurizer made the store; otherwise ``None`` (or, for a store the caller passed, the error)."""
    from mm_sbert.data.store_image_resolver import default_store_key

    try:
        for member in ensemble_members(cross_encoder):
            store.check_compatible(member)
    except (ValueError, TypeError) as error:
        if explicit:
            raise
        logger.info(
            "Reranking featurizes the images: the index's feature store does not fit the cross-encoder (%s)", error
        )
        return None

    def candidate(row: int) -> Any:
        path = image_paths(row)  # confined first, even when the regions come from the store
        key = default_store_key(path)
        return store[key] if key in store else path

    return candidate
