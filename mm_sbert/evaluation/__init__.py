from __future__ import annotations

from mm_sbert.evaluation.image_text_retrieval_evaluator import (
    ImageTextRetrievalEvaluator,
    image_retrieval_recall,
    text_retrieval_recall,
)
from mm_sbert.evaluation.results_table import evaluate_modes, format_table

__all__ = [
    "ImageTextRetrievalEvaluator",
    "evaluate_modes",
    "format_table",
    "image_retrieval_recall",
    "text_retrieval_recall",
]
