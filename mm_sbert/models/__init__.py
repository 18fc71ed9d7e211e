from __future__ import annotations

from mm_sbert.models.mm_cross_encoder import MMCrossEncoder
from mm_sbert.models.mm_sentence_transformer import MMSentenceTransformer

__all__ = ["MMCrossEncoder", "MMSentenceTransformer"]
