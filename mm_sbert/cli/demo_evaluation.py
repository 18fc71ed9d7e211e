"""The demo's comparison of BE, CE and Coop retrieval: recall@k in both directions, wall-clock time, latency curve.

INTERIM: the recall computation stands in for ``mm_sbert.evaluation.ImageTextRetrievalEvaluator`` (the retrieval
area) until it lands on main. Protocol as in the paper / reference code: image retrieval (t2i) hits when the
caption's image is in the top k; text retrieval (i2t) hits when any of the image's captions is.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mm_sbert.image_features.region_features import RegionFeatures
from mm_sbert.models import MMCrossEncoder, MMSentenceTransformer

RECALL_AT = (1, 5, 10)


@dataclass
class ModeResult:
    """Rankings and timing of one retrieval mode on one evaluation set."""

    mode: str
    t2i: np.ndarray  # [captions, depth] image ids, best first
    i2t: np.ndarray  # [images, depth] caption ids, best first
    seconds: float
    pairs_scored: int = 0


def recall_from_rankings(
    t2i: np.ndarray, i2t: np.ndarray, caption_image_ids: Sequence[int], ks: Sequence[int]
) -> dict[str, dict[int, float]]:
    """Recall@k in percent for both directions from ranked id arrays."""
    caption_image_ids = np.asarray(caption_image_ids)
    t2i_hits = t2i == caption_image_ids[:, None]
    i2t_hits = caption_image_ids[i2t] == np.arange(len(i2t))[:, None]
    return {
        "t2i": {k: 100.0 * float(t2i_hits[:, :k].any(1).mean()) for k in ks},
        "i2t": {k: 100.0 * float(i2t_hits[:, :k].any(1).mean()) for k in ks},
    }


def _rank(scores: np.ndarray, depth: int) -> np.ndarray:
    # Stable sort on negated scores: ties keep index order, so results do not depend on the sort algorithm.
    return np.argsort(-scores, axis=1, kind="stable")[:, :depth]


def bi_encoder_scores(
    bi_encoder: MMSentenceTransformer, regions: Sequence[RegionFeatures], captions: Sequence[str], batch_size: int
) -> np.ndarray:
    """Cosine similarities ``[captions, images]`` of the bi-encoder."""
    image_embeddings = bi_encoder.encode(list(regions), batch_size=batch_size, convert_to_tensor=True)
    caption_embeddings = bi_encoder.encode(list(captions), batch_size=batch_size, convert_to_tensor=True)
    image_embeddings = torch.nn.functional.normalize(image_embeddings, dim=-1)
    caption_embeddings = torch.nn.functional.normalize(caption_embeddings, dim=-1)
    return (caption_embeddings @ image_embeddings.T).cpu().numpy()


def evaluate_modes(
    bi_encoder: MMSentenceTransformer,
    cross_encoder: MMCrossEncoder,
    regions: Sequence[RegionFeatures],
    captions: Sequence[str],
    caption_image_ids: Sequence[int],
    top_k: int = 20,
    modes: Sequence[str] = ("be", "ce", "coop"),
    batch_size: int = 64,
    show_progress_bar: bool = True,
) -> dict[str, ModeResult]:
    """Run BE, CE (every caption-image pair) and Coop (BE top-k, CE rerank) retrieval, each timed from scratch."""
    depth = max(top_k, max(RECALL_AT), 20)
    results: dict[str, ModeResult] = {}

    start = time.perf_counter()
    be = bi_encoder_scores(bi_encoder, regions, captions, batch_size)
    be_seconds = time.perf_counter() - start
    if "be" in modes:
        results["be"] = ModeResult("be", _rank(be, depth), _rank(be.T, depth), be_seconds)

    if "ce" in modes:
        start = time.perf_counter()
        pairs = [(caption, region) for caption in captions for region in regions]
        ce = np.asarray(
            cross_encoder.predict(
                pairs, batch_size=batch_size, activation_fn=torch.nn.Identity(), show_progress_bar=show_progress_bar
            )
        ).reshape(len(captions), len(regions))
        results["ce"] = ModeResult(
            "ce", _rank(ce, depth), _rank(ce.T, depth), time.perf_counter() - start, pairs_scored=len(pairs)
        )

    if "coop" in modes:
        # Coop includes its own BE pass: a user of Coop pays for both stages.
        start = time.perf_counter()
        be = bi_encoder_scores(bi_encoder, regions, captions, batch_size)
        k = min(top_k, be.shape[1])
        t2i_candidates = _rank(be, k)
        i2t_candidates = _rank(be.T, min(top_k, be.shape[0]))
        # One CE call for the union of both directions' candidate pairs: a pair needed twice is scored once.
        wanted = {(c, i) for c, row in enumerate(t2i_candidates) for i in row}
        wanted |= {(c, i) for i, row in enumerate(i2t_candidates) for c in row}
        order = sorted(wanted)
        scores = cross_encoder.predict(
            [(captions[c], regions[i]) for c, i in order],
            batch_size=batch_size,
            activation_fn=torch.nn.Identity(),
            show_progress_bar=show_progress_bar,
        )
        ce_of = dict(zip(order, np.asarray(scores).tolist()))
        t2i = np.stack(
            [row[np.argsort([-ce_of[(c, i)] for i in row], kind="stable")] for c, row in enumerate(t2i_candidates)]
        )
        i2t = np.stack(
            [row[np.argsort([-ce_of[(c, i)] for c in row], kind="stable")] for i, row in enumerate(i2t_candidates)]
        )
        results["coop"] = ModeResult("coop", t2i, i2t, time.perf_counter() - start, pairs_scored=len(order))
    return results


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


def run_evaluation(
    bi_encoder: MMSentenceTransformer,
    images: Sequence[object],
    captions: Sequence[str],
    caption_image_ids: Sequence[int],
    top_k: int = 20,
    modes: Sequence[str] = ("be", "ce", "coop"),
    recall_at: Sequence[int] = RECALL_AT,
    batch_size: int = 64,
) -> dict[str, float]:
    """Metrics ``{mode}_{t2i|i2t}_r@{k}`` (percent), ``{mode}_seconds`` and ``{mode}_pairs`` for each mode.

    Uses the interim implementation above; the numbers follow the same protocol as
    ``mm_sbert.evaluation.ImageTextRetrievalEvaluator``.
    """
    cross_encoder = bi_encoder.to_cross_encoder()
    results = evaluate_modes(
        bi_encoder, cross_encoder, images, captions, caption_image_ids, top_k=top_k, modes=modes, batch_size=batch_size
    )
    ks = sorted(set(recall_at) | set(RECALL_AT))
    metrics: dict[str, float] = {}
    for mode, result in results.items():
        recall = recall_from_rankings(result.t2i, result.i2t, caption_image_ids, ks)
        for direction in ("t2i", "i2t"):
            for k in ks:
                metrics[f"{mode}_{direction}_r@{k}"] = recall[direction][k]
        metrics[f"{mode}_seconds"] = result.seconds
        metrics[f"{mode}_pairs"] = result.pairs_scored
    return metrics
