"""BE, CE and Coop side by side: :class:`~mm_sbert.evaluation.ImageTextRetrievalEvaluator`'s metrics in percent,
with the cross-encoder pairs each mode scored, and the paper's comparison as a text table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mm_sbert.evaluation.image_text_retrieval_evaluator import RECALL_AT, ImageTextRetrievalEvaluator
from mm_sbert.retrieval.score_combination import ScoreMode


def evaluate_modes(
    model: Any,
    images: Sequence[Any],
    captions: Sequence[str],
    caption_image_ids: Sequence[int],
    top_k: int = 20,
    modes: Sequence[str] = ("be", "ce", "coop"),
    recall_at: Sequence[int] = RECALL_AT,
    batch_size: int = 64,
    show_progress_bar: bool = False,
    score: ScoreMode = "ce",
    lam: float = 0.5,
    cross_encoder: Any | None = None,
    cross_encoder_images: Sequence[Any] | None = None,
) -> dict[str, float]:
    """Run the package's evaluator on a joint model and return ``{mode}_{t2i|i2t}_r@{k}`` in percent, plus
    ``{mode}_seconds`` (wall time, BE encoding included for Coop) and ``{mode}_pairs`` (cross-encoder pairs scored).
    ``score`` / ``lam`` order Coop's reranked candidates (see :func:`~mm_sbert.retrieval.combine_scores`).
    ``cross_encoder`` reranks instead of ``model``'s own head (the paper's separate setting), reading
    ``cross_encoder_images`` (default: ``images``) when its featurizer is not ``model``'s.
    """
    evaluator = ImageTextRetrievalEvaluator(
        images,
        captions,
        caption_image_ids,
        cross_encoder=cross_encoder,
        cross_encoder_images=cross_encoder_images,
        modes=tuple(modes),
        top_k=top_k,
        batch_size=batch_size,
        ce_batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        score=score,
        lam=lam,
        recall_at=sorted(set(recall_at) | set(RECALL_AT)),
    )
    raw = evaluator(model)
    metrics = {
        key: 100.0 * value if "_r@" in key or key.endswith("mean_recall") else value for key, value in raw.items()
    }
    num_images, num_captions = len(evaluator.all_images), len(evaluator.all_captions)
    pairs = {
        "be": 0,
        "ce": evaluator.num_ce_pairs,
        # Coop cross-encodes each query's BE top-k, in both directions.
        "coop": len(captions) * min(top_k, num_images) + len(evaluator.query_images) * min(top_k, num_captions),
    }
    for mode in evaluator.modes:
        metrics[f"{mode}_pairs"] = pairs[mode]
    return metrics


def format_table(metrics: dict[str, float], top_k: int) -> str:
    """The paper's comparison as a fixed-width text table: one row per mode, recall in %, time in seconds."""
    names = {"be": "BE", "ce": "CE", "coop": f"Coop (k={top_k})"}
    header = (
        f"{'mode':<14}{'t2i R@1':>9}{'R@5':>7}{'R@10':>7}  {'i2t R@1':>9}{'R@5':>7}{'R@10':>7}"
        f"  {'time (s)':>9}{'CE pairs':>10}"
    )
    lines = [header, "-" * len(header)]
    for mode in ("be", "ce", "coop"):
        if f"{mode}_seconds" not in metrics:
            continue
        r = {key[len(mode) + 1 :]: value for key, value in metrics.items() if key.startswith(mode + "_")}
        lines.append(
            f"{names[mode]:<14}"
            f"{r['t2i_r@1']:>9.1f}{r['t2i_r@5']:>7.1f}{r['t2i_r@10']:>7.1f}  "
            f"{r['i2t_r@1']:>9.1f}{r['i2t_r@5']:>7.1f}{r['i2t_r@10']:>7.1f}"
            f"  {r['seconds']:>9.2f}{int(r.get('pairs', 0)):>10d}"
        )
    return "\n".join(lines)
