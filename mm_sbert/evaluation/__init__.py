from __future__ import annotations

from mm_sbert.evaluation.image_text_retrieval_evaluator import (
    ImageTextRetrievalEvaluator,
    image_retrieval_recall,
    text_retrieval_recall,
)

__all__ = ["ImageTextRetrievalEvaluator", "image_retrieval_recall", "text_retrieval_recall"]
