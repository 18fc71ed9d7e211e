"""The demo's report: per-query latency against growing collections, one query's ranks, the verdict in words, the
real-photo results it closes with, and the plot."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LATENCY_SIZES = (100, 1_000, 10_000, 100_000, 1_000_000)


def measure_latency(
    model: Any,
    regions: Sequence[Any],
    captions: Sequence[str],
    metrics: dict[str, float],
    top_k: int,
    cross_encoder: Any | None = None,
) -> dict[str, dict[int, float]]:
    """Seconds per text query against collections of growing size, as in the paper's latency table.

    BE and Coop are measured: encode one caption, exact search over ``n`` stored image embeddings (the held-out
    embeddings tiled to size ``n``), and for Coop rerank the top-k with the cross-encoder
    (:func:`~mm_sbert.retrieval.rerank`). Full CE over ``n`` images is ``n`` cross-encoder pairs; it is the pairs per
    second of the CE evaluation (``metrics["ce_seconds"] / metrics["ce_pairs"]``) times ``n`` (extrapolated).

    Args:
        model: the bi-encoder.
        regions: the held-out images (featurized), the collection that is tiled.
        captions: the first is the query.
        metrics: the evaluation's metrics, with ``ce_seconds`` and ``ce_pairs``.
        top_k: candidates Coop reranks.
        cross_encoder: the reranker; ``None``: ``model``'s own cross-encoder view (a joint model).
    """
    import torch

    from mm_sbert.models.views import to_cross_encoder
    from mm_sbert.retrieval import exact_search, rerank

    cross_encoder = cross_encoder if cross_encoder is not None else to_cross_encoder(model)
    image_embeddings = model.encode(list(regions), convert_to_tensor=True, normalize_embeddings=True).float().cpu()
    query = captions[0]
    model.encode([query])  # warm-up
    # The top-k candidates of one query; which images they are does not change the cost.
    candidates = torch.arange(top_k).remainder(len(regions)).unsqueeze(0)
    rerank(cross_encoder, [query], regions, candidates[:, :2], query_modality="text", batch_size=top_k)  # warm-up
    rerank_seconds = rerank(
        cross_encoder, [query], regions, candidates, query_modality="text", batch_size=top_k
    ).ce_seconds
    pair_seconds = metrics["ce_seconds"] / max(metrics["ce_pairs"], 1)

    latency: dict[str, dict[int, float]] = {"be": {}, "coop": {}, "ce": {}}
    for n in LATENCY_SIZES:
        if n > 100_000:
            # A million stored 384-d vectors would need 1.5 GB here; grow BE linearly from the 100k measurement.
            latency["be"][n] = latency["be"][100_000] * n / 100_000
        else:
            collection = image_embeddings.repeat((n + len(image_embeddings) - 1) // len(image_embeddings), 1)[:n]
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                query_embedding = model.encode([query], convert_to_tensor=True, normalize_embeddings=True).float()
                exact_search(query_embedding.cpu(), collection, top_k)
                best = min(best, time.perf_counter() - start)
            latency["be"][n] = best
        latency["coop"][n] = latency["be"][n] + rerank_seconds
        latency["ce"][n] = n * pair_seconds
    return latency


# The Flickr8k runs the demo's closing lines quote (benchmarks/results/flickr8k.md tells how each was trained):
# (what, result file of the separate CE, result file of the joint model).
REAL_PHOTO_RUNS = (
    (
        "split 1, 400 CE steps",
        "flickr8k_en_sep_sim_crossfit_unseen.json",
        "flickr8k_en_joint_sim_ratio13_crossfit.json",
    ),
    (
        "split 2, 1,000 CE steps",
        "flickr8k_en_sep_crossfit_image_part_1000.json",
        "flickr8k_en_joint_crossfit_image_part_1000.json",
    ),
    (
        "split 2, seed 7",
        "flickr8k_en_sep_crossfit_image_part_1000_seed7.json",
        "flickr8k_en_joint_crossfit_image_part_1000_seed7.json",
    ),
)
# Where those files are in a clone of the repository (they are not part of an installed package).
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def real_photos_outcome(results_dir: str | Path = RESULTS_DIR) -> list[str]:
    """The demo's closing lines: what the same idea gave on real photos (Flickr8k dev), read from the result files.

    Each run's R@1 (text-to-image / image-to-text) of its bi-encoder, Sep+Coop and Joint+Coop, and the verdict the
    numbers give (Coop at or above BE at R@1 everywhere: "beats"; below everywhere: "does NOT beat"; else
    "level"). Without the result files (an installed package, not a clone) the lines say where they are.
    """
    import json

    results_dir = Path(results_dir)
    if not all((results_dir / name).is_file() for _, *names in REAL_PHOTO_RUNS for name in names):
        return ["Real-photo results (Flickr8k): see benchmarks/results/flickr8k.md in the repository."]
    lines, pairs = [], []
    for what, *names in REAL_PHOTO_RUNS:
        rows = {}
        for name in names:
            for row in json.loads((results_dir / name).read_text(encoding="utf-8"))["tables"]["table1"]:
                rows[row["mode"]] = row
        be = rows["BE"]
        quoted = [f"BE {be['t2i_r@1']} / {be['i2t_r@1']} (R@10 {be['t2i_r@10']} / {be['i2t_r@10']})"]
        for mode in ("Sep+Coop", "Joint+Coop"):
            quoted.append(f"{mode} {rows[mode]['t2i_r@1']} / {rows[mode]['i2t_r@1']}")
            pairs += [(rows[mode][f"{d}_r@1"], be[f"{d}_r@1"]) for d in ("t2i", "i2t")]
        lines.append(f"  {what}: " + ", ".join(quoted))
    if all(coop >= be for coop, be in pairs):
        finding = "reranking beats retrieval"
    elif all(coop < be for coop, be in pairs):
        finding = "reranking does NOT beat retrieval"
    else:
        finding = "reranking is level with retrieval"
    return [
        "On real photos (Flickr8k dev, 5,000 caption / 1,000 image queries; MiniLM-L6 + MobileNetV2 grid; BE on half"
        f" the training images, CE and joint model from it on the other half; 2 CPU cores), {finding}. R@1 t2i / i2t:",
        *lines,
        f"  (details and learning curves: benchmarks/results/flickr8k.md; read from {results_dir})",
    ]


def verdict(
    metrics: dict[str, float],
    last_losses: Sequence[float] = (),
    chance_loss: float = math.log(2),
    latency: dict[str, dict[int, float]] | None = None,
) -> list[str]:
    """Say in words whether the run shows the paper's result: Coop recall >= BE at a fraction of CE's time."""

    def mean_recall(mode: str) -> float:
        keys = [f"{mode}_{d}_r@{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)]
        return sum(metrics[key] for key in keys) / len(keys)

    be, coop, ce = mean_recall("be"), mean_recall("coop"), mean_recall("ce")
    fraction = metrics["coop_seconds"] / max(metrics["ce_seconds"], 1e-9)
    lines = [
        f"Mean recall (R@1/5/10, both directions): BE {be:.1f}, Coop {coop:.1f}, CE {ce:.1f}",
        f"Coop took {metrics['coop_seconds']:.1f} s = {100 * fraction:.0f}% of full cross-encoding "
        f"({metrics['ce_seconds']:.1f} s) on this collection; the gap grows with the collection (see the plot).",
    ]
    if latency:
        largest = max(latency["ce"])
        lines.append(
            f"One text query over {largest:,} images: Coop {latency['coop'][largest]:.2f} s, full CE "
            f"{latency['ce'][largest]:,.0f} s (extrapolated from its pairs per second), "
            f"BE {latency['be'][largest]:.2f} s."
        )
    if coop >= be and fraction <= 0.5:
        lines.append("As in the paper: Coop recall is at or above the bi-encoder's, at a fraction of CE's time.")
    else:
        reasons = []
        if coop < be:
            reasons.append(
                "Coop recall is below BE's"
                + (": the cross-encoder is weaker than the bi-encoder (see docs/quickstart.md)" if ce < be else "")
            )
        if fraction > 0.5:
            reasons.append("Coop took more than half of CE's time: the collection is smaller than a few times k")
        lines.append(
            f"Note: this run does NOT show the paper's result ({'; '.join(reasons)}). The numbers are as measured; "
            "more --bi-encoder-steps / --cross-encoder-steps / --train-images lift both models."
        )
    if abs(coop - be) < 3.0:
        lines.append(
            f"Coop and BE differ by {coop - be:+.1f} points, within the noise of a small held-out set (one query "
            "moves R@1 by 100/queries points): --seed and --eval-images show how much it moves."
        )
    if last_losses:
        loss = sum(last_losses) / len(last_losses)
        learned = "has not learned yet" if loss > 0.95 * chance_loss else "learned"
        lines.append(
            f"Cross-encoder loss over its last {len(last_losses)} steps: {loss:.3f} (chance: {chance_loss:.3f}): "
            f"it {learned}."
        )
    return lines


def query_ranks(
    model: Any, regions: Sequence[Any], caption: str, image_id: int, top_k: int, cross_encoder: Any | None = None
) -> dict[str, int]:
    """Where one caption's own image ranks among ``regions``: by the bi-encoder ``model`` (``"be"``), and after
    ``cross_encoder`` (default: ``model``'s own view) reranks the bi-encoder's top ``top_k`` (``"coop"``; unchanged
    when the image is not among them). Ranks start at 1."""
    from mm_sbert.models.views import to_cross_encoder
    from mm_sbert.retrieval import exact_search, rerank

    images = model.encode(list(regions), convert_to_tensor=True, normalize_embeddings=True).float().cpu()
    query = model.encode([caption], convert_to_tensor=True, normalize_embeddings=True).float().cpu()
    _, order = exact_search(query, images, len(regions))
    be_rank = order[0].tolist().index(image_id) + 1
    if be_rank > top_k:
        return {"be": be_rank, "coop": be_rank}
    cross_encoder = cross_encoder if cross_encoder is not None else to_cross_encoder(model)
    reranked = rerank(cross_encoder, [caption], regions, order[:, :top_k], query_modality="text")
    return {"be": be_rank, "coop": reranked.rows[0].tolist().index(image_id) + 1}


def save_plot(path: str, metrics: dict[str, float], latency: dict[str, dict[int, float]], top_k: int) -> None:
    """Write :func:`plot_results` to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    figure = plot_results(metrics, latency, top_k)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_results(metrics: dict[str, float], latency: dict[str, dict[int, float]], top_k: int) -> Any:
    """Recall@k curves (image retrieval) of the three modes, and per-query latency vs collection size (a
    matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    labels = {"be": "BE", "ce": "CE", "coop": f"Coop (k={top_k})"}
    # Coop often equals CE at small k: distinct markers, line styles and a little horizontal offset keep both seen.
    styles = {
        "be": {"linestyle": "-", "marker": "o", "offset": 0.0},
        "ce": {"linestyle": "--", "marker": "s", "offset": -0.12},
        "coop": {"linestyle": ":", "marker": "^", "offset": 0.12},
    }
    figure, (recall_axis, latency_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode in ("be", "ce", "coop"):
        ks = sorted(int(key.rsplit("@", 1)[1]) for key in metrics if key.startswith(f"{mode}_t2i_r@"))
        style = styles[mode]
        recall_axis.plot(
            [k + style["offset"] for k in ks],
            [metrics[f"{mode}_t2i_r@{k}"] for k in ks],
            linestyle=style["linestyle"],
            marker=style["marker"],
            markersize=4,
            label=labels[mode],
        )
    recall_axis.set(xlabel="k", ylabel="recall@k (%)", title="Image retrieval (text -> image), held-out scenes")
    recall_axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    recall_axis.set_ylim(0, 100)
    recall_axis.grid(alpha=0.3)
    recall_axis.legend()

    for mode in ("be", "coop", "ce"):
        sizes = sorted(latency[mode])
        latency_axis.plot(
            sizes,
            [latency[mode][n] for n in sizes],
            linestyle=styles[mode]["linestyle"],
            marker=styles[mode]["marker"],
            markersize=4,
            label=labels[mode],
        )
    latency_axis.set(
        xscale="log",
        yscale="log",
        xlabel="images in the collection",
        ylabel="seconds per text query",
        title="Latency of one query (CE dashed: extrapolated)",
    )
    latency_axis.grid(alpha=0.3, which="both")
    latency_axis.legend()
    figure.tight_layout()
    return figure
