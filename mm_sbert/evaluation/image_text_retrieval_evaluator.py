"""Recall@M for image retrieval (text -> image) and text retrieval (image -> text) with BE, CE and Coop."""

from __future__ import annotations

import csv
import logging
import operator
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from sentence_transformers.base.evaluation.evaluator import SentenceEvaluator

from mm_sbert.errors import InvalidInputError, UnsafeOutputError
from mm_sbert.models.views import resolve_views
from mm_sbert.retrieval.cooperative_retriever import Reranked, cross_encoder_logits, rerank
from mm_sbert.retrieval.cross_encoder_ensemble import check_cross_encoder
from mm_sbert.retrieval.embedding_index import exact_search
from mm_sbert.retrieval.pair_score_cache import PairScoreCache
from mm_sbert.retrieval.score_combination import SCORE_MODES, ScoreMode, saturated_share

logger = logging.getLogger(__name__)

MODES = ("be", "ce", "coop")
RECALL_AT = (1, 5, 10)


def _check_ranks(values: Iterable[int], name: str) -> tuple[int, ...]:
    """``values`` as a non-empty tuple of integers >= 1 (the M of Recall@M, or the k of a top-k), or a clear error."""
    values = tuple(values)
    if not values or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in values):
        raise InvalidInputError(f"{name} must be integers >= 1 (Recall@M of the first M), got {values}")
    return values


def _position(value: Any) -> int | None:
    """``value`` as a position if it is an integer of any kind (not a bool, float or string), else ``None``."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def image_retrieval_recall(
    ranked_images: torch.Tensor | Sequence[Sequence[int]], gold_images: Sequence[int], at: Iterable[int] = RECALL_AT
) -> dict[int, float]:
    """Text -> image Recall@M: the share of caption queries whose image is among their first M ranked images.

    Args:
        ranked_images: ``[num_captions, K]`` image indices per caption query, best first.
        gold_images: the image index of each caption query.
        at: the M values.
    """
    at = _check_ranks(at, "at")
    ranked = torch.as_tensor(ranked_images)
    gold = torch.as_tensor(list(gold_images)).reshape(-1, 1)
    if len(ranked) != len(gold):
        raise InvalidInputError(f"Got rankings for {len(ranked)} captions but {len(gold)} gold images")
    return {m: (ranked[:, :m] == gold).any(dim=1).double().mean().item() for m in at}


def text_retrieval_recall(
    ranked_captions: torch.Tensor | Sequence[Sequence[int]],
    caption_image_ids: Sequence[int],
    query_images: Sequence[int],
    at: Iterable[int] = RECALL_AT,
) -> dict[int, float]:
    """Image -> text Recall@M: the share of image queries with ANY of their captions among the first M captions.

    Args:
        ranked_captions: ``[num_image_queries, K]`` caption indices per image query, best first.
        caption_image_ids: the image index of every caption in the search space (-1 for distractor captions).
        query_images: the image index of each query row.
        at: the M values.
    """
    at = _check_ranks(at, "at")
    ranked = torch.as_tensor(ranked_captions)
    owners = torch.as_tensor(list(caption_image_ids))[ranked]
    query = torch.as_tensor(list(query_images)).reshape(-1, 1)
    if len(ranked) != len(query):
        raise InvalidInputError(f"Got rankings for {len(ranked)} images but {len(query)} query images")
    return {m: (owners[:, :m] == query).any(dim=1).double().mean().item() for m in at}


class ImageTextRetrievalEvaluator(SentenceEvaluator):
    """Image-text retrieval evaluation as in the paper: R@1/5/10 for image retrieval and text retrieval.

    - image retrieval (``t2i``): every caption is a query; a hit is its own image in the top M;
    - text retrieval (``i2t``): every image with a caption is a query; a hit is ANY of its captions in the top M
      (COCO / Flickr30k have 5 per image).

    Modes:

    - ``"be"``: bi-encoder embeddings and cosine similarity over the whole collection;
    - ``"ce"``: cross-encode every (caption, image) pair; refused above ``ce_max_pairs`` pairs with an estimate of
      the time it would take (COCO 1k is 5M pairs: hours on a GPU);
    - ``"coop"``: the bi-encoder retrieves ``top_k`` candidates, the cross-encoder reranks them (both directions).

    Distractor images / captions (paper §6, Table 5) are merged into the search space only: the queries and their
    gold items stay the same, the search just gets harder.

    Metrics (prefixed with ``name_`` when a name is given): ``{mode}_{t2i|i2t}_r@{M}``, ``{mode}_mean_recall``
    (mean over both directions and all M), ``{mode}_seconds`` (wall time, encoding included for be / coop). The
    primary metric is ``coop_mean_recall`` when ``"coop"`` runs, else the first mode's mean recall.

    Args:
        images: the test images (PIL images, image paths or RegionFeatures).
        captions: the test captions.
        caption_image_ids: for each caption, its image: a position in ``images``, or an element of ``image_ids``.
        cross_encoder: the reranker for ``ce`` / ``coop``. Left out, a joint model evaluated with this evaluator
            reranks with its own head (``model.to_cross_encoder()``).
        cross_encoder_images: ``images`` as the separate ``cross_encoder`` reads them, when its featurizer is not the
            bi-encoder's (e.g. the regions of its own featurizer); default: ``images``.
        modes: any of ``"be"``, ``"ce"``, ``"coop"``.
        top_k: candidates the bi-encoder retrieves for ``coop`` (paper: 20).
        distractor_images / distractor_captions: extra items merged into the search space only.
        ce_max_pairs: the largest number of pairs ``ce`` mode cross-encodes.
        score / lam: how ``coop`` orders the reranked candidates (see :func:`~mm_sbert.retrieval.combine_scores`).
            With ``score="combination"`` the metrics include ``coop_ce_saturated``, the share of queries whose
            cross-encoder probabilities are all but equal (see
            :func:`~mm_sbert.retrieval.score_combination.saturated_share`): near 1, it ranks like the bi-encoder.
        image_ids: ids of ``images`` when ``caption_image_ids`` holds ids instead of positions.
        batch_size / ce_batch_size: bi-encoder / cross-encoder batch sizes.
        show_progress_bar: progress bars while encoding and cross-encoding.
        name: metric-name prefix.
        write_csv: append the metrics to a CSV in ``output_path`` when the trainer passes one.
        recall_at: the M values.
        pair_score_cache: a :class:`~mm_sbert.retrieval.PairScoreCache` kept across calls, so evaluators over the
            same images and captions (e.g. one per score mode, or with distractors appended) score each pair once;
            share it only while the cross-encoder does not change. Default: a fresh cache per call.

    Example:
        >>> evaluator = ImageTextRetrievalEvaluator(images, captions, caption_image_ids, name="coco-1k")
        >>> evaluator(bi_encoder)  # {"coco-1k_be_t2i_r@1": ..., "coco-1k_coop_i2t_r@10": ..., ...}
    """

    def __init__(
        self,
        images: Sequence[Any],
        captions: Sequence[str],
        caption_image_ids: Sequence[Any],
        cross_encoder: Any | None = None,
        cross_encoder_images: Sequence[Any] | None = None,
        modes: Sequence[str] = ("be", "coop"),
        top_k: int = 20,
        distractor_images: Sequence[Any] | None = None,
        distractor_captions: Sequence[str] | None = None,
        ce_max_pairs: int = 1_000_000,
        score: ScoreMode = "ce",
        lam: float = 0.5,
        image_ids: Sequence[Any] | None = None,
        batch_size: int = 32,
        ce_batch_size: int = 64,
        show_progress_bar: bool = False,
        name: str = "",
        write_csv: bool = True,
        recall_at: Sequence[int] = RECALL_AT,
        pair_score_cache: PairScoreCache | None = None,
    ) -> None:
        super().__init__()
        images, captions = list(images), list(captions)
        if not images or not captions:
            raise InvalidInputError("ImageTextRetrievalEvaluator needs at least one image and one caption")
        if len(caption_image_ids) != len(captions):
            raise InvalidInputError(
                f"Got {len(caption_image_ids)} caption_image_ids for {len(captions)} captions; pass one per caption"
            )
        unknown = [mode for mode in modes if mode not in MODES]
        if unknown or not modes:
            raise InvalidInputError(f"Unknown modes {unknown}; expected a non-empty subset of {list(MODES)}")
        if score not in SCORE_MODES:
            raise InvalidInputError(f"Unknown score {score!r}; expected one of {list(SCORE_MODES)}")
        if _position(top_k) is None or top_k < 1:
            raise InvalidInputError(f"top_k must be an integer >= 1, got {top_k!r}")
        recall_at = _check_ranks(recall_at, "recall_at")
        if cross_encoder_images is not None:
            cross_encoder_images = list(cross_encoder_images)
            if len(cross_encoder_images) != len(images):
                raise InvalidInputError(
                    f"Got {len(cross_encoder_images)} cross_encoder_images for {len(images)} images; pass one each"
                )
            if distractor_images:
                raise InvalidInputError("cross_encoder_images with distractor_images is not supported")
        if image_ids is not None:
            if len(image_ids) != len(images):
                raise InvalidInputError(f"Got {len(image_ids)} image_ids for {len(images)} images")
            position = {image_id: index for index, image_id in enumerate(image_ids)}
            if len(position) != len(image_ids):
                # A caption of a duplicated id would count only one of its images as the right answer.
                seen: set[Any] = set()
                twice = [image_id for image_id in image_ids if image_id in seen or seen.add(image_id)]
                raise InvalidInputError(f"image_ids must be distinct; {twice[:5]} come more than once")
            missing = [image_id for image_id in caption_image_ids if image_id not in position]
            if missing:
                raise InvalidInputError(f"caption_image_ids {missing[:5]} are not in image_ids")
            caption_image_ids = [position[image_id] for image_id in caption_image_ids]
        # Integer positions only (numpy / torch integers too): int() would turn "3" or 1.5 into another image's.
        gold = [_position(index) for index in caption_image_ids]
        bad = [caption_image_ids[i] for i, index in enumerate(gold) if index is None or not 0 <= index < len(images)]
        if bad:
            raise InvalidInputError(
                f"caption_image_ids {bad[:5]} are not positions in images (0..{len(images) - 1}); pass image_ids= "
                "when they are ids"
            )

        if cross_encoder is not None:
            check_cross_encoder(cross_encoder)

        self.images = images
        self.captions = captions
        self.caption_image_ids = gold
        self.cross_encoder = cross_encoder
        self.cross_encoder_images = cross_encoder_images
        self.modes = tuple(dict.fromkeys(modes))
        self.top_k = _position(top_k)
        self.distractor_images = list(distractor_images or [])
        self.distractor_captions = list(distractor_captions or [])
        self.ce_max_pairs = ce_max_pairs
        self.score = score
        self.lam = lam
        self.pair_score_cache = pair_score_cache
        self.batch_size = batch_size
        self.ce_batch_size = ce_batch_size
        self.show_progress_bar = show_progress_bar
        self.name = name
        self.write_csv = write_csv
        self.recall_at = tuple(recall_at)
        # Images without any caption cannot be text-retrieval queries (no gold caption), as in the reference code.
        self.query_images = sorted(set(gold))
        self.primary_metric = ("coop" if "coop" in self.modes else self.modes[0]) + "_mean_recall"

    # ------------------------------------------------------------------ search space

    @property
    def all_images(self) -> list[Any]:
        return self.images + self.distractor_images

    @property
    def all_captions(self) -> list[str]:
        return self.captions + self.distractor_captions

    @property
    def all_caption_image_ids(self) -> list[int]:
        return self.caption_image_ids + [-1] * len(self.distractor_captions)

    @property
    def num_ce_pairs(self) -> int:
        """Pairs ``ce`` mode scores: real captions x all images, plus distractor captions x the query images."""
        return len(self.captions) * len(self.all_images) + len(self.distractor_captions) * len(self.query_images)

    # ------------------------------------------------------------------ entry points

    def __call__(
        self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        """Evaluate ``model`` (the bi-encoder, or a joint model's cross-encoder view) in every mode."""
        bi_encoder, cross_encoder = self._views(model)
        logger.info(f"Image-text retrieval evaluation {self.name!r}{self._when(epoch, steps)}")
        metrics: dict[str, float] = {}
        retrieval = None
        if "be" in self.modes or "coop" in self.modes:
            retrieval = self._retrieve(bi_encoder, max(self.top_k, *self.recall_at))
        if "be" in self.modes:
            metrics |= self._metrics("be", retrieval["t2i_rows"], retrieval["i2t_rows"], retrieval["seconds"])
        cache = self._cache()
        if "coop" in self.modes:
            metrics |= self._coop(cross_encoder, retrieval, self.top_k, cache)
        if "ce" in self.modes:
            metrics |= self._full_cross_encoding(cross_encoder, cache)

        self._log(metrics)
        if output_path is not None and self.write_csv:
            self._write_csv(output_path, metrics, epoch, steps)
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        if hasattr(model, "model_card_data"):
            self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def evaluate_top_k(self, model: Any, ks: Sequence[int] = (10, 20, 50)) -> dict[int, dict[str, float]]:
        """The paper's top-k ablation (Table 8): Coop metrics and wall time for each k.

        The images and captions are encoded and searched once, and each pair is cross-encoded once for all k (a
        :class:`~mm_sbert.retrieval.PairScoreCache`); each k's ``coop_seconds`` is the shared encoding + search time
        plus the cross-encoder time of its own top-k pairs, as if it had run alone.
        """
        ks = _check_ranks(ks, "ks")
        bi_encoder, cross_encoder = self._views(model)
        retrieval = self._retrieve(bi_encoder, max(*ks, *self.recall_at))
        cache = self._cache()
        results = {}
        for k in ks:
            metrics = self._coop(cross_encoder, retrieval, k, cache)
            results[k] = self.prefix_name_to_metrics(metrics, self.name)
            logger.info(f"top-k {k}: {results[k]}")
        return results

    # ------------------------------------------------------------------ modes

    def _cache(self) -> PairScoreCache:
        # Without a shared cache, one per call: the model may have changed since the last one (the trainer calls
        # between steps).
        return self.pair_score_cache if self.pair_score_cache is not None else PairScoreCache()

    def _views(self, model: Any) -> tuple[Any, Any | None]:
        bi_encoder, cross_encoder = resolve_views(model, self.cross_encoder)
        if ("ce" in self.modes or "coop" in self.modes) and cross_encoder is None:
            raise InvalidInputError(
                "Modes 'ce' / 'coop' need a cross-encoder: pass cross_encoder=... or evaluate a joint model (a "
                "MultimodalTransformer with a score head)"
            )
        return bi_encoder, cross_encoder

    def _retrieve(self, bi_encoder: Any, depth: int) -> dict[str, Any]:
        """Bi-encoder top-``depth`` in both directions: rows, cosine scores and the wall time (encoding included)."""
        start = time.perf_counter()
        encode = dict(
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_tensor=True,
            show_progress_bar=self.show_progress_bar,
        )
        image_embeddings = bi_encoder.encode(self.all_images, **encode).float().cpu()
        caption_embeddings = bi_encoder.encode(self.all_captions, **encode).float().cpu()
        t2i_scores, t2i_rows = exact_search(caption_embeddings[: len(self.captions)], image_embeddings, depth)
        i2t_scores, i2t_rows = exact_search(image_embeddings[self.query_images], caption_embeddings, depth)
        return {
            "t2i_scores": t2i_scores,
            "t2i_rows": t2i_rows,
            "i2t_scores": i2t_scores,
            "i2t_rows": i2t_rows,
            "seconds": time.perf_counter() - start,
        }

    def _coop(self, cross_encoder: Any, retrieval: dict[str, Any], k: int, cache: PairScoreCache) -> dict[str, float]:
        """BE top-``k`` reranked in both directions; the time is the BE's plus the CE time of these pairs."""
        t2i, i2t = (
            self._rerank(
                cross_encoder, direction, retrieval[f"{direction}_rows"], retrieval[f"{direction}_scores"], k, cache
            )
            for direction in ("t2i", "i2t")
        )
        metrics = self._metrics("coop", t2i.rows, i2t.rows, retrieval["seconds"] + t2i.ce_seconds + i2t.ce_seconds)
        if self.score == "combination":
            queries = len(t2i.rows) + len(i2t.rows)
            saturated = saturated_share(t2i.ce_scores) * len(t2i.rows) + saturated_share(i2t.ce_scores) * len(i2t.rows)
            metrics["coop_ce_saturated"] = saturated / queries
        return metrics

    def _full_cross_encoding(self, cross_encoder: Any, cache: PairScoreCache) -> dict[str, float]:
        num_pairs = self.num_ce_pairs
        if num_pairs > self.ce_max_pairs:
            raise InvalidInputError(
                f"Mode 'ce' would cross-encode {num_pairs:,} pairs ({len(self.all_captions)} captions x "
                f"{len(self.all_images)} images), more than ce_max_pairs={self.ce_max_pairs:,}; at the "
                f"{self._seconds_per_pair(cross_encoder) * 1e3:.2f} ms per pair measured just now that takes about "
                f"{self._format_duration(num_pairs * self._seconds_per_pair(cross_encoder))}. Raise ce_max_pairs if "
                "you mean it, or evaluate 'coop' instead"
            )
        # Every candidate of every query, ranked by the CE logit alone; text retrieval reuses the real captions'
        # pairs from image retrieval, so only the distractor captions are cross-encoded on top.
        everything = {
            "t2i": torch.arange(len(self.all_images)).expand(len(self.captions), -1),
            "i2t": torch.arange(len(self.all_captions)).expand(len(self.query_images), -1),
        }
        t2i, i2t = (
            self._rerank(cross_encoder, direction, rows, None, None, cache) for direction, rows in everything.items()
        )
        depth = max(self.recall_at)
        return self._metrics("ce", t2i.rows[:, :depth], i2t.rows[:, :depth], cache.seconds_of(self._ce_pair_keys()))

    def _rerank(
        self,
        cross_encoder: Any,
        direction: str,
        rows: torch.Tensor,
        be_scores: torch.Tensor | None,
        k: int | None,
        cache: PairScoreCache,
    ) -> Reranked:
        """Rerank the candidate ``rows`` of every ``t2i`` (caption) or ``i2t`` (image) query.

        Pairs are keyed by (position in ``all_captions``, position in ``all_images``), so both directions, every k
        and full cross-encoding share one cache.
        """
        images = self.images if self.cross_encoder_images is None else self.cross_encoder_images
        if direction == "t2i":
            candidates = images + self.distractor_images
            queries, query_ids = self.captions, list(range(len(self.captions)))
        else:
            queries, query_ids = [images[image] for image in self.query_images], self.query_images
            candidates = self.all_captions
        return rerank(
            cross_encoder,
            queries,
            candidates,
            rows,
            be_scores,
            k,
            score="ce" if be_scores is None else self.score,
            lam=self.lam,
            query_modality="text" if direction == "t2i" else "image",
            query_ids=query_ids,
            cache=cache,
            batch_size=self.ce_batch_size,
            show_progress_bar=self.show_progress_bar,
        )

    def _ce_pair_keys(self) -> list[tuple[int, int]]:
        """The pairs full cross-encoding scores: real captions x all images, distractor captions x query images."""
        first_distractor = len(self.captions)
        keys = [(caption, image) for caption in range(len(self.captions)) for image in range(len(self.all_images))]
        keys += [
            (first_distractor + caption, image)
            for caption in range(len(self.distractor_captions))
            for image in self.query_images
        ]
        return keys

    def _seconds_per_pair(self, cross_encoder: Any) -> float:
        if not hasattr(self, "_measured_seconds_per_pair"):
            sample = [(self.captions[i % len(self.captions)], self.images[i % len(self.images)]) for i in range(16)]
            cross_encoder_logits(cross_encoder, sample[:4], batch_size=self.ce_batch_size)  # warm-up
            start = time.perf_counter()
            cross_encoder_logits(cross_encoder, sample, batch_size=self.ce_batch_size)
            self._measured_seconds_per_pair = (time.perf_counter() - start) / len(sample)
        return self._measured_seconds_per_pair

    # ------------------------------------------------------------------ metrics and output

    def _metrics(self, mode: str, t2i_rows: torch.Tensor, i2t_rows: torch.Tensor, seconds: float) -> dict[str, float]:
        t2i = image_retrieval_recall(t2i_rows, self.caption_image_ids, self.recall_at)
        i2t = text_retrieval_recall(i2t_rows, self.all_caption_image_ids, self.query_images, self.recall_at)
        metrics = {f"{mode}_t2i_r@{m}": value for m, value in t2i.items()}
        metrics |= {f"{mode}_i2t_r@{m}": value for m, value in i2t.items()}
        metrics[f"{mode}_mean_recall"] = (sum(t2i.values()) + sum(i2t.values())) / (len(t2i) + len(i2t))
        metrics[f"{mode}_seconds"] = seconds
        return metrics

    @staticmethod
    def _format_duration(seconds: float) -> str:
        if seconds < 120:
            return f"{seconds:.0f} s"
        if seconds < 7200:
            return f"{seconds / 60:.0f} min"
        return f"{seconds / 3600:.1f} h"

    @staticmethod
    def _when(epoch: int, steps: int) -> str:
        if epoch == -1:
            return ""
        return f" after epoch {epoch}" if steps == -1 else f" in epoch {epoch} after {steps} steps"

    def _log(self, metrics: dict[str, float]) -> None:
        for mode in self.modes:
            recalls = "  ".join(
                f"{direction} R@{m} {metrics[f'{mode}_{direction}_r@{m}'] * 100:.1f}"
                for direction in ("t2i", "i2t")
                for m in self.recall_at
            )
            logger.info(f"{mode:>4}: {recalls}  ({metrics[f'{mode}_seconds']:.1f} s)")

    def _write_csv(self, output_path: str, metrics: dict[str, float], epoch: int, steps: int) -> None:
        if os.path.lexists(output_path) and not os.path.isdir(output_path):
            raise UnsafeOutputError(f"output_path '{output_path}' is a file, not a folder; name a folder for results")
        os.makedirs(output_path, exist_ok=True)
        csv_path = os.path.join(
            output_path, f"image_text_retrieval_evaluation{'_' + self.name if self.name else ''}_results.csv"
        )
        header = ["epoch", "steps", *metrics]
        new_file = not os.path.lexists(csv_path)
        if not new_file:
            # Rows go only into a results file of this evaluator (its exact header), never into a user's file that
            # merely has the name (the ownership rule of mm_sbert.storage for a file appended to, not replaced).
            try:
                with open(csv_path, encoding="utf-8", newline="") as f:
                    first = next(csv.reader(f), None)
            except (OSError, UnicodeDecodeError, csv.Error):
                first = None
            if os.path.islink(csv_path) or first != header:
                raise UnsafeOutputError(
                    f"'{csv_path}' exists and is not this evaluator's results file (its first row is not the header "
                    f"{header[:3]}...); move it or pass another output_path"
                )
        with open(csv_path, "a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(header)
            writer.writerow([epoch, steps, *metrics.values()])

    @property
    def description(self) -> str:
        return "Image-Text Retrieval"

    def get_config_dict(self) -> dict[str, Any]:
        config = {"modes": list(self.modes), "top_k": self.top_k, "score": self.score}
        if self.score.startswith("combination"):
            config["lam"] = self.lam
        if self.distractor_images or self.distractor_captions:
            config["distractor_images"] = len(self.distractor_images)
            config["distractor_captions"] = len(self.distractor_captions)
        return config
