"""BE, CE and Coop side by side: :class:`~mm_sbert.evaluation.ImageTextRetrievalEvaluator`'s metrics in percent,
with the cross-encoder pairs each mode scored, and the paper's comparison as a text table.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
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


def evaluate_models(
    model: Any,
    corpus: Any,
    cross_encoder: Any | Sequence[Any] | None = None,
    *,
    store: Any | None = None,
    modes: Sequence[str] | None = None,
    top_k: int = 20,
    batch_size: int = 64,
    score: ScoreMode = "ce",
    lam: float = 0.5,
    allow_untrained_head: bool = False,
    model_name: str = "the model",
    cross_encoder_name: str | Sequence[str] = "the cross-encoder",
) -> dict[str, float]:
    """:func:`evaluate_modes` of saved models on an :class:`~mm_sbert.data.ImageCaptionCorpus`, as
    ``mm-sbert evaluate`` runs it: every view checked before it is used, the images featurized once per featurizer.

    Args:
        model: the bi-encoder (either view of a saved model); its own score head reranks unless ``cross_encoder``.
        corpus: the evaluation images and captions.
        cross_encoder: a separately trained model whose score head reranks (the paper's Sep+Coop); it reads the
            images with its own featurizer when that is not ``model``'s. A list of such models reranks as one
            :class:`~mm_sbert.retrieval.CrossEncoderEnsemble` (their mean logit; one featurizer among them).
        store: a :class:`~mm_sbert.image_features.FeatureStore` (or its folder) with the images' regions (matched
            by file name), read instead of featurizing them; a reranker with another featurizer than the store's
            featurizes the images itself.
        modes: a subset of ``("be", "ce", "coop")``; ``None``: ``be``, plus ``coop`` when the reranker's score head
            was trained (or does not record it).
        top_k / batch_size / score / lam: see :func:`evaluate_modes`.
        allow_untrained_head: use a view no training objective trained (only logged).
        model_name / cross_encoder_name: how messages name the models (one name per cross-encoder of a list).

    Raises:
        IncompatibleModelError: an untrained view asked for, or a reranker that cannot read the images.
        StorageError: the store lacks an image or was built by another featurizer than ``model``'s.
    """
    from mm_sbert.errors import IncompatibleModelError, InvalidInputError
    from mm_sbert.models import check_reranker, check_view_trained, same_featurizer
    from mm_sbert.models.views import to_cross_encoder
    from mm_sbert.retrieval.cross_encoder_ensemble import CrossEncoderEnsemble

    images, captions, caption_image_ids = corpus.evaluation_data()
    check_view_trained(model, "bi_encoder", model_name, allow_untrained=allow_untrained_head)
    sources = [(model, model_name)]  # (a model whose score head reranks, its name in messages)
    if cross_encoder is not None:
        separate = list(cross_encoder) if isinstance(cross_encoder, list | tuple) else [cross_encoder]
        names = [cross_encoder_name] * len(separate) if isinstance(cross_encoder_name, str) else cross_encoder_name
        if len(names) != len(separate):
            raise InvalidInputError(f"Got {len(names)} cross_encoder_name for {len(separate)} cross-encoders")
        sources = list(zip(separate, names))
    reranker, members, usable = None, [], False
    if modes is None or "ce" in modes or "coop" in modes:
        try:
            for source, what in sources:
                check_view_trained(source, "cross_encoder", what, allow_untrained=allow_untrained_head)
                members.append(to_cross_encoder(source))
            if len(members) == 1:
                reranker = members[0]
            else:
                reranker = CrossEncoderEnsemble(members, names=[what for _, what in sources])
            usable = True
        except IncompatibleModelError:
            if modes is not None or cross_encoder is not None:
                raise
    if modes is None:
        # The default leaves an untrained head out rather than report scores that mean nothing.
        modes = ("be", "coop") if usable else ("be",)
    needs_reranker = "ce" in modes or "coop" in modes
    if isinstance(store, str | os.PathLike):
        from mm_sbert.image_features import FeatureStore

        store = FeatureStore(store)
    regions = _regions(model, images, store, model_name)
    reranker_regions = None
    # An ensemble's members share one featurizer (CrossEncoderEnsemble checks it): the first reads for all.
    if needs_reranker and cross_encoder is not None and not same_featurizer(model, members[0]):
        own_store = store
        if store is not None and not _fits(store, members[0]):
            own_store = None  # the store holds the bi-encoder's regions: featurize for the reranker
        for member, (_, what) in zip(members, sources):
            check_reranker(member, store=own_store, what=what, allow_untrained=allow_untrained_head)
        reranker_regions = _regions(members[0], images, own_store, sources[0][1])
    return evaluate_modes(
        model,
        regions,
        captions,
        caption_image_ids,
        top_k=top_k,
        modes=modes,
        batch_size=batch_size,
        score=score,
        lam=lam,
        cross_encoder=reranker if needs_reranker else None,
        cross_encoder_images=reranker_regions,
    )


def _fits(store: Any, model: Any) -> bool:
    try:
        store.check_featurizer(model[0].featurizer)
    except ValueError:
        return False
    return True


def _regions(model: Any, images: list[Any], store: Any | None, what: str) -> list[Any]:
    """``images`` as ``model`` reads them: regions from ``store`` (if given) or from its own featurizer, each image
    featurized once (cross-encoder pairs would otherwise featurize it again for every caption)."""
    featurizer = model[0].featurizer
    if store is not None:
        from mm_sbert.data import StoreImageResolver

        store.check_featurizer(featurizer)
        return StoreImageResolver(store).resolve(images, what="the evaluation data")
    if featurizer is None:
        from mm_sbert.errors import IncompatibleModelError

        raise IncompatibleModelError(f"{what} has no image featurizer; give --features a store with its regions")
    from mm_sbert.image_features import load_image

    return featurizer.featurize([load_image(path) for path in images])


# Above this share of queries with all but equal CE probabilities, `score="combination"` ranks like the BE.
SATURATED_WARNING = 0.5
METRICS_KIND = "metrics"


def saturation_warning(metrics: dict[str, float], top_k: int) -> str | None:
    """A warning when Coop's ``coop_ce_saturated`` share of queries (cross-encoder probabilities of all candidates
    equal to 3 decimals) is above :data:`SATURATED_WARNING`, where a combination score ranks like the bi-encoder."""
    saturated = metrics.get("coop_ce_saturated", 0.0)
    if saturated <= SATURATED_WARNING:
        return None
    return (
        f"Warning: for {saturated:.0%} of the queries the cross-encoder's probabilities sigmoid(logit) of all "
        f"{top_k} candidates are equal to 3 decimals (its logits sit far from 0), so `--score combination` "
        "ranks like the bi-encoder there; use --score ce (the logit) or combination_normalized"
    )


def check_metrics_path(path: str | os.PathLike, inputs: Iterable[Any] = (), what: str = "the metrics file") -> None:
    """Refuse (:class:`~mm_sbert.errors.UnsafeOutputError`) a metrics path that is one of ``inputs`` (or inside
    one) or a file mm_sbert did not write; call it before the evaluation runs."""
    from mm_sbert.storage import check_output_path

    check_output_path(path, METRICS_KIND, folder=False, inputs=inputs, what=what)


def write_metrics(path: str | os.PathLike, metrics: dict[str, float]) -> None:
    """Write ``metrics`` as JSON to ``path`` (atomically; the folder is created), marked as mm_sbert's so a later
    run may replace it (:func:`check_metrics_path`).

    Raises:
        UnsafeOutputError: ``path`` is a file mm_sbert did not write (checked here too, not only before the
            evaluation: a direct call never replaces a file of the user's).
    """
    from mm_sbert.storage import atomic_write_json, output_marker

    check_metrics_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # The mark first, within the first bytes: a later run may replace this file, nothing else.
    atomic_write_json(path, {"written_by": output_marker(METRICS_KIND), **metrics}, indent=2)
