"""How bi-encoder and cross-encoder scores of the top-k candidates become one ranking score (paper Table 9)."""

from __future__ import annotations

from typing import Literal

import torch

from mm_sbert.errors import InvalidInputError

ScoreMode = Literal["ce", "be", "combination", "combination_normalized"]
SCORE_MODES: tuple[str, ...] = ("ce", "be", "combination", "combination_normalized")


def min_max_normalize(scores: torch.Tensor) -> torch.Tensor:
    """Scale each row to [0, 1] over its candidates; a row of equal scores becomes all zeros."""
    low = scores.min(dim=-1, keepdim=True).values
    span = scores.max(dim=-1, keepdim=True).values - low
    return torch.where(span > 0, (scores - low) / span.clamp_min(torch.finfo(scores.dtype).tiny), 0.0)


def combine_scores(
    be_scores: torch.Tensor, ce_scores: torch.Tensor | None, mode: ScoreMode = "ce", lam: float = 0.5
) -> torch.Tensor:
    """The final ranking score of each candidate.

    - ``"ce"``: the cross-encoder logit ``s_CE`` (the paper's default and best variant),
    - ``"be"``: the bi-encoder cosine ``s_BE`` (no reranking),
    - ``"combination"``: ``lam * s_BE + (1 - lam) * sigmoid(s_CE)``,
    - ``"combination_normalized"``: ``lam * mm(s_BE) + (1 - lam) * mm(sigmoid(s_CE))`` with ``mm`` the 0-1 min-max
      normalisation over each query's top-k candidates (the last dimension).

    Args:
        be_scores: ``[..., k]`` cosine similarities.
        ce_scores: ``[..., k]`` cross-encoder logits (not probabilities); may be ``None`` only for ``"be"``.
        mode: one of the above.
        lam: weight of the bi-encoder score, in [0, 1].
    """
    if mode not in SCORE_MODES:
        raise InvalidInputError(f"Unknown score mode {mode!r}; expected one of {list(SCORE_MODES)}")
    if mode == "be":
        return be_scores
    if ce_scores is None:
        raise InvalidInputError(
            f"Score mode {mode!r} needs cross-encoder scores; rerank with a cross-encoder or use 'be'"
        )
    if ce_scores.shape != be_scores.shape:
        raise InvalidInputError(
            f"be_scores {tuple(be_scores.shape)} and ce_scores {tuple(ce_scores.shape)} differ in shape"
        )
    if mode == "ce":
        return ce_scores
    if not 0.0 <= lam <= 1.0:
        raise InvalidInputError(f"lam must be in [0, 1], got {lam}")
    # float64: confident cross-encoders give logits whose float32 sigmoids all round to a handful of values near 1,
    # which the min-max normalisation would then spread over [0, 1] as ties and steps
    be_scores, ce_probs = be_scores.double(), torch.sigmoid(ce_scores.double())
    if mode == "combination_normalized":
        be_scores, ce_probs = min_max_normalize(be_scores), min_max_normalize(ce_probs)
    return (lam * be_scores + (1.0 - lam) * ce_probs).float()


def saturated_share(ce_scores: torch.Tensor, tolerance: float = 1e-3) -> float:
    """The share of queries (rows of ``[..., k]`` logits) whose cross-encoder probabilities ``sigmoid(s_CE)`` span
    less than ``tolerance`` over their candidates.

    For such a query ``"combination"`` adds nearly the same number to every candidate and ranks like the bi-encoder,
    and a probability printed to 3 decimals reads the same for all: a cross-encoder whose logits sit far from 0
    (e.g. 10-12, as a listwise-trained or similarity-started head gives; a softmax over candidates does not pin
    the offset) carries its information in the logit and the normalised modes, not in the probability.
    """
    if ce_scores.numel() == 0:
        return 0.0
    probabilities = torch.sigmoid(ce_scores.double()).reshape(-1, ce_scores.shape[-1])
    span = probabilities.max(dim=-1).values - probabilities.min(dim=-1).values
    return (span < tolerance).double().mean().item()
