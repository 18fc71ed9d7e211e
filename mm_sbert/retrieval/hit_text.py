"""Search hits as text: JSON lines (one hit a line, for scripts) and a fixed-width table (for people), as
``mm-sbert search`` prints them. The HTML page is :mod:`mm_sbert.retrieval.results_page`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mm_sbert.retrieval.results_page import sigmoid


def hits_as_json_lines(hits: Sequence[Any], images: Sequence[str], combined: bool = False) -> str:
    """One JSON object a line, best hit first: ``rank``, ``image``, ``ce_score`` (the cross-encoder logit, ``null``
    without reranking), ``be_score`` (the bi-encoder cosine) and, when hits are ordered by a ``combined`` score, that
    ``score``."""
    lines = []
    for rank, (hit, image) in enumerate(zip(hits, images), 1):
        row = {"rank": rank, "image": image, "ce_score": hit.ce_score, "be_score": hit.be_score}
        lines.append(json.dumps({**row, "score": hit.score} if combined else row))
    return "\n".join(lines)


def hits_as_table(query: str, hits: Sequence[Any], images: Sequence[str], combined: bool = False) -> str:
    """The query, then one row per hit: rank, the ``combined`` score (if any), the cross-encoder probability and
    logit, the bi-encoder cosine and the image."""
    score_column = f"  {'score':>7}" if combined else ""
    lines = [f"Query: {query}", f"{'rank':>4}{score_column}  {'CE prob':>7}  {'CE logit':>8}  {'BE cos':>7}  image"]
    for rank, (hit, image) in enumerate(zip(hits, images), 1):
        score = f"  {hit.score:7.3f}" if combined else ""
        ce = "" if hit.ce_score is None else f"{sigmoid(hit.ce_score):7.3f}  {hit.ce_score:8.3f}"
        lines.append(f"{rank:>4}{score}  {ce or ' ' * 17:>17}  {hit.be_score:7.3f}  {image}")
    return "\n".join(lines)
