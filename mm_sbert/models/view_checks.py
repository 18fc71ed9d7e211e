"""Whether a model can do what it is asked: a view that training has trained, a reranker that reads the data.

Two questions every caller (``mm-sbert evaluate``, ``mm-sbert search``, the retriever, the evaluator) asks the same
way, so they live here once:

- :func:`check_view_trained`: has a training objective trained this view? A bi-encoder trained with the
  bi-encoder objective alone carries a score head that never learned anything; reranking with it gives scores
  that look like scores (0.51-0.52 probabilities) and mean nothing. The record is the module's ``trained_views``
  (written by :class:`~mm_sbert.training.JointTrainer`, saved with the model).
- :func:`check_reranker`: can this cross-encoder rerank these images? What matters is the cross-encoder's own
  featurizer (it turns the images or the stored regions into its inputs) and its own tokenizer (captions reach it
  as text, which every tokenizer reads), not the bi-encoder's embedding fingerprint: reranking the candidates of
  one model with another, separately trained one is the paper's main setting.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from mm_sbert.errors import IncompatibleModelError
from mm_sbert.models.views import multimodal_module

logger = logging.getLogger(__name__)

View = Literal["bi_encoder", "cross_encoder"]
VIEW_NAMES = {"bi_encoder": "bi-encoder (embeddings)", "cross_encoder": "cross-encoder (score head)"}


def trained_views(model: Any) -> list[str] | None:
    """The views a training objective has trained in ``model`` (either view), or ``None`` when not recorded (a
    model saved before mm_sbert recorded it, or a module built directly)."""
    module = multimodal_module(model)
    return None if module is None else module.trained_views


def check_view_trained(model: Any, view: View, what: str = "the model", allow_untrained: bool = False) -> bool:
    """Refuse to use a view of ``model`` that no training objective has trained.

    Args:
        model: either view of an mm_sbert model.
        view: ``"bi_encoder"`` or ``"cross_encoder"``.
        what: how the message names the model (e.g. ``"--model runs/be/final"``).
        allow_untrained: only warn (the user asked for it, e.g. to measure an untrained head).

    Returns:
        ``True`` when the record says the view was trained, ``False`` when the model records nothing (older
        models: allowed, with a logged warning).

    Raises:
        IncompatibleModelError: the record lacks ``view`` (and ``allow_untrained`` is off), or ``view`` is the
            cross-encoder and the model has no score head at all.
    """
    if view == "cross_encoder":
        module = multimodal_module(model)
        if module is None or module.classifier is None:
            raise IncompatibleModelError(f"{what} has no cross-encoder score head, so it cannot rerank")
    record = trained_views(model)
    if record is None:
        logger.warning(
            f"{what} does not record which of its views were trained (saved before mm_sbert recorded it); using its "
            f"{VIEW_NAMES[view]} as it is"
        )
        return False
    if view in record:
        return True
    trained = ", ".join(VIEW_NAMES[name] for name in record) or "nothing"
    message = f"{what}: its {VIEW_NAMES[view]} was never trained (trained: {trained}), so its scores mean nothing" + (
        "; rerank with a trained cross-encoder (e.g. `--cross-encoder CE`, trained with `mm-sbert train ce`)"
        if view == "cross_encoder"
        else ""
    )
    if allow_untrained:
        logger.warning(message + " (used anyway, as asked)")
        return False
    raise IncompatibleModelError(message)


def check_reranker(
    cross_encoder: Any,
    store: Any | None = None,
    reads_image_files: bool = True,
    what: str = "the cross-encoder",
    allow_untrained: bool = False,
) -> None:
    """Refuse a cross-encoder that cannot rerank the given images: an untrained or missing score head, no featurizer
    for image files, or a feature store built by another featurizer than its own (other regions than it was
    trained on) or holding regions of another width.

    Args:
        cross_encoder: either view of an mm_sbert model (its score head reranks).
        store: the :class:`~mm_sbert.image_features.FeatureStore` the candidates' regions are read from, if any.
        reads_image_files: the images reach the cross-encoder as files / PIL images (it featurizes them itself).
        what: how the message names it (e.g. ``"--cross-encoder runs/ce/final"``).
        allow_untrained: only warn about an untrained score head.

    Raises:
        IncompatibleModelError: naming ``what`` and the mismatch.
    """
    check_view_trained(cross_encoder, "cross_encoder", what, allow_untrained=allow_untrained)
    module = multimodal_module(cross_encoder)
    if store is not None:
        from mm_sbert.errors import StorageError

        if store.feature_dim is not None and store.feature_dim != module.region_feature_dim:
            raise IncompatibleModelError(
                f"{what} reads {module.region_feature_dim}-d regions, but the feature store '{store.path}' holds "
                f"{store.feature_dim}-d ones; rerank from the images or from a store built with its featurizer"
            )
        try:
            store.check_featurizer(module.featurizer)
        except StorageError as error:
            raise IncompatibleModelError(f"{what}: {error}") from error
    elif reads_image_files and module.featurizer is None:
        raise IncompatibleModelError(
            f"{what} has no image featurizer, so it cannot read image files; give it region features (a feature "
            "store with the regions it was trained on)"
        )


def same_featurizer(first: Any, second: Any) -> bool:
    """Whether two models turn an image into the same regions (same featurizer type and settings, speed settings
    aside), so regions computed for one serve the other."""
    from mm_sbert.image_features.feature_store import same_featurizer as same_featurizers

    first, second = multimodal_module(first).featurizer, multimodal_module(second).featurizer
    if first is None or second is None:
        return first is second
    return same_featurizers(first, second)
