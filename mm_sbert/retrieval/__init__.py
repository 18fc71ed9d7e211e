from __future__ import annotations

from mm_sbert.retrieval.base_index import BaseIndex
from mm_sbert.retrieval.cooperative_retriever import CooperativeRetriever, Hit, Reranked, rerank
from mm_sbert.retrieval.cross_encoder_ensemble import CrossEncoderEnsemble
from mm_sbert.retrieval.embedding_index import (
    EmbeddingIndex,
    IndexCorruptedError,
    IndexWriter,
    check_encoder_fingerprint,
    encoder_fingerprint,
    exact_search,
)
from mm_sbert.retrieval.milvus_index import MilvusIndex
from mm_sbert.retrieval.pair_score_cache import PairScoreCache
from mm_sbert.retrieval.score_combination import combine_scores, min_max_normalize
from mm_sbert.retrieval.streaming_build import build_index_streaming
from mm_sbert.retrieval.vector_search import PRECISIONS, VectorSearch

__all__ = [
    "BaseIndex",
    "CooperativeRetriever",
    "CrossEncoderEnsemble",
    "EmbeddingIndex",
    "Hit",
    "IndexCorruptedError",
    "IndexWriter",
    "MilvusIndex",
    "PRECISIONS",
    "PairScoreCache",
    "Reranked",
    "VectorSearch",
    "build_index_streaming",
    "check_encoder_fingerprint",
    "combine_scores",
    "encoder_fingerprint",
    "exact_search",
    "min_max_normalize",
    "rerank",
]
