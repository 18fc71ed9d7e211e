from __future__ import annotations

from mm_sbert.retrieval.cooperative_retriever import CooperativeRetriever, Hit, Reranked, rerank
from mm_sbert.retrieval.embedding_index import EmbeddingIndex, IndexCorruptedError, IndexWriter, exact_search
from mm_sbert.retrieval.pair_score_cache import PairScoreCache
from mm_sbert.retrieval.score_combination import combine_scores, min_max_normalize

__all__ = [
    "CooperativeRetriever",
    "EmbeddingIndex",
    "Hit",
    "IndexCorruptedError",
    "IndexWriter",
    "PairScoreCache",
    "Reranked",
    "combine_scores",
    "exact_search",
    "min_max_normalize",
    "rerank",
]
