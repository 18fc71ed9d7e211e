from __future__ import annotations

from mm_sbert.models.mm_cross_encoder import MMCrossEncoder
from mm_sbert.models.mm_sentence_transformer import MMSentenceTransformer
from mm_sbert.models.view_checks import check_reranker, check_view_trained, same_featurizer, trained_views

__all__ = [
    "MMCrossEncoder",
    "MMSentenceTransformer",
    "check_reranker",
    "check_view_trained",
    "same_featurizer",
    "trained_views",
]
