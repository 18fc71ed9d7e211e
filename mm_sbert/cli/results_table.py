"""Deprecated location: the results table moved to :mod:`mm_sbert.evaluation.results_table` (library code)."""

from __future__ import annotations

from mm_sbert.evaluation.results_table import evaluate_modes, format_table

__all__ = ["evaluate_modes", "format_table"]
