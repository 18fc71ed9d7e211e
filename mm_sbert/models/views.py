"""The two views of one joint model, and every conversion between them.

A joint model is one :class:`~mm_sbert.MultimodalTransformer` with a score head: the bi-encoder view adds mean
pooling (:class:`~mm_sbert.MMSentenceTransformer`), the cross-encoder view is the module alone
(:class:`~mm_sbert.MMCrossEncoder`). Both views share the module object, so switching costs nothing and training
one trains the other. This is the only place that builds one view from the other; ``to_cross_encoder`` /
``to_bi_encoder``, the retriever and the evaluator call it.

The two view classes register themselves in :data:`VIEW_CLASSES` when they are defined (importing
``mm_sbert.models`` defines both), so this module builds either view without importing their modules and the two
classes, which convert into each other, import only this one: no import circle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mm_sbert.errors import InvalidInputError
from mm_sbert.modules.multimodal_transformer import MultimodalTransformer

if TYPE_CHECKING:
    from mm_sbert.models.mm_cross_encoder import MMCrossEncoder
    from mm_sbert.models.mm_sentence_transformer import MMSentenceTransformer


# "bi_encoder" -> MMSentenceTransformer, "cross_encoder" -> MMCrossEncoder; filled by the classes' modules.
VIEW_CLASSES: dict[str, type] = {}


def _view_class(view: str) -> type:
    if view not in VIEW_CLASSES:
        import mm_sbert.models  # noqa: F401 - defines (and so registers) both view classes

    return VIEW_CLASSES[view]


def multimodal_module(model: Any) -> MultimodalTransformer | None:
    """The model's first module when it is a :class:`MultimodalTransformer`, else ``None``."""
    try:
        module = model[0]
    except (TypeError, IndexError, KeyError):
        return None
    return module if isinstance(module, MultimodalTransformer) else None


def has_score_head(model: Any) -> bool:
    """Whether ``model`` (either view) can act as a cross-encoder: its MultimodalTransformer has a score head."""
    module = multimodal_module(model)
    return module is not None and module.classifier is not None


def to_cross_encoder(model: Any) -> MMCrossEncoder:
    """The cross-encoder view of ``model`` (a bi-encoder, or any SentenceTransformer over a MultimodalTransformer),
    sharing its module: ``to_cross_encoder(model)[0] is model[0]``.

    Raises:
        ValueError: when ``model``'s first module is not a MultimodalTransformer or has no score head.
    """
    module = multimodal_module(model)
    if module is None:
        raise InvalidInputError(
            f"{type(model).__name__} has no MultimodalTransformer as its first module, so it has no cross-encoder view"
        )
    return _view_class("cross_encoder")(modules=[module], device=str(model.device))


def to_bi_encoder(model: Any) -> MMSentenceTransformer:
    """The bi-encoder view of ``model`` (a cross-encoder over a MultimodalTransformer): the shared module + mean
    pooling, as the paper's BE.

    Raises:
        ValueError: when ``model``'s first module is not a MultimodalTransformer.
    """
    from sentence_transformers.sentence_transformer.modules import Pooling

    module = multimodal_module(model)
    if module is None:
        raise InvalidInputError(
            f"{type(model).__name__} has no MultimodalTransformer as its first module, so it has no bi-encoder view"
        )
    return _view_class("bi_encoder")(
        modules=[module, Pooling(module.get_embedding_dimension(), "mean")], device=str(model.device)
    )


def resolve_views(model: Any, cross_encoder: Any | None = None) -> tuple[Any, Any | None]:
    """``(bi_encoder, cross_encoder)`` for retrieving with ``model`` and reranking.

    - ``model`` may be a bi-encoder (anything with ``encode``) or a joint model's cross-encoder view (then its
      bi-encoder view retrieves and ``model`` itself reranks);
    - an explicit ``cross_encoder`` always reranks;
    - otherwise a joint bi-encoder (a MultimodalTransformer with a score head) reranks with its own head;
    - else the cross-encoder is ``None`` (bi-encoder retrieval only).
    """
    bi_encoder = model
    if not hasattr(model, "encode") and multimodal_module(model) is not None:
        bi_encoder = to_bi_encoder(model)
        if cross_encoder is None:
            cross_encoder = model
    if cross_encoder is None and has_score_head(bi_encoder):
        cross_encoder = to_cross_encoder(bi_encoder)
    return bi_encoder, cross_encoder
