from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from sentence_transformers import CrossEncoder

from mm_sbert.errors import InvalidInputError
from mm_sbert.models.loading import MultimodalLoadingMixin, new_multimodal_transformer
from mm_sbert.models.model_card import MMCrossEncoderModelCardData
from mm_sbert.models.views import VIEW_CLASSES, to_bi_encoder
from mm_sbert.modules.multimodal_transformer import MultimodalTransformer

if TYPE_CHECKING:
    from mm_sbert.models.mm_sentence_transformer import MMSentenceTransformer


class MMCrossEncoder(MultimodalLoadingMixin, CrossEncoder):
    """The cross-encoder view: ``MultimodalTransformer`` alone; its head writes ``features["scores"]``.

    ``predict([(caption, image), ...])`` returns one relevance probability per pair (sigmoid of the logit);
    ``rank(caption, images)`` sorts images for a caption. Besides the host's behaviour it

    - loads this package's modules without ``trust_remote_code``,
    - writes the ``requirements`` key into the saved config,
    - loads a bi-encoder / joint folder saved by :class:`MMSentenceTransformer` as a cross-encoder (same weights,
      the pooling module dropped); the host's ``CrossEncoder`` cannot (see docs/concepts.md),
    - refuses a text-only sentence-transformers folder, and starts a new multimodal model (new head) on a plain
      BERT / XLM-R checkpoint instead of the host's text-only sequence classifier.

    Example:
        >>> cross_encoder = MMCrossEncoder("path/to/joint-model")
        >>> cross_encoder.predict([("A dog on a beach.", "dog.jpg"), ("A dog on a beach.", "cat.jpg")])
    """

    model_card_data_class = MMCrossEncoderModelCardData
    # The id our card snippets use until a model has a Hub id; the host swaps it when a reloaded model is pushed.
    _model_card_model_id_placeholder = "mm_sbert_model_id"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        module = self[0]
        if isinstance(module, MultimodalTransformer) and module.classifier is None:
            raise InvalidInputError(
                "This MultimodalTransformer was built with score_head=False, so it cannot act as a cross-encoder"
            )

    def to_bi_encoder(self) -> MMSentenceTransformer:
        """The bi-encoder view of this model, sharing the ``MultimodalTransformer`` object."""
        return to_bi_encoder(self)

    def export_onnx(self, output_folder: str, quantize: bool = False) -> list[str]:
        """Export the scoring forward to ``output_folder/onnx/model.onnx`` (and ``model_qint8.onnx`` with
        ``quantize``), for ``MMCrossEncoder(folder, backend="onnx")``; see
        :func:`mm_sbert.export.export_cross_encoder_onnx`.
        """
        from mm_sbert.export import export_cross_encoder_onnx

        return export_cross_encoder_onnx(self, output_folder, quantize=quantize)

    def predict(self, inputs: Any = None, *args: Any, **kwargs: Any) -> Any:
        if inputs is None:
            inputs = kwargs.pop("sentences", None)
        if isinstance(inputs, (list, tuple)) and len(inputs) == 0:
            raise InvalidInputError("predict() got an empty list of pairs; pass at least one (caption, image) pair")
        module = self[0]
        if isinstance(module, MultimodalTransformer):
            # Checked on the whole list: the host sorts and batches, so preprocess sees indices within a batch.
            module.check_inputs([inputs] if self.is_singular_input(inputs) else inputs)
        return super().predict(inputs, *args, **kwargs)

    def _load_config_modules(self, model_name_or_path: str, **kwargs: Any):
        modules, module_kwargs = super()._load_config_modules(model_name_or_path, **kwargs)
        first_name, first = next(iter(modules.items()))
        if isinstance(first, MultimodalTransformer) and len(modules) > 1:
            # A bi-encoder / joint folder: the head lives in the MultimodalTransformer; pooling is not needed.
            return OrderedDict([(first_name, first)]), OrderedDict([(first_name, module_kwargs.get(first_name, []))])
        return modules, module_kwargs

    def _load_default_modules(self, model_name_or_path: str, **kwargs: Any):
        """A plain BERT / XLM-R checkpoint: an OSCAR-shaped MultimodalTransformer with a new score head.

        The host would build a text-only sequence classifier, which reads image paths as text.
        """
        return [new_multimodal_transformer(model_name_or_path, **kwargs)], {}


VIEW_CLASSES["cross_encoder"] = MMCrossEncoder
