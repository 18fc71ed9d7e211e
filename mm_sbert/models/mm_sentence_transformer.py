from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling

from mm_sbert.errors import InvalidInputError
from mm_sbert.models.loading import MultimodalLoadingMixin, new_multimodal_transformer
from mm_sbert.models.model_card import MMSentenceTransformerModelCardData
from mm_sbert.models.views import VIEW_CLASSES, to_cross_encoder
from mm_sbert.modules.multimodal_transformer import MultimodalTransformer

if TYPE_CHECKING:
    from mm_sbert.models.mm_cross_encoder import MMCrossEncoder


class MMSentenceTransformer(MultimodalLoadingMixin, SentenceTransformer):
    """The bi-encoder view: ``MultimodalTransformer`` + mean pooling, one vector per caption or image.

    A :class:`~sentence_transformers.SentenceTransformer` in every respect (``encode``, ``similarity``,
    ``fit``/trainer, ``save``, ``push_to_hub``), that also

    - loads this package's modules without ``trust_remote_code`` (and nothing else without it),
    - writes ``requirements: {"mm_sbert": ...}`` into the saved config, so a user without the package gets an
      install hint instead of an import error,
    - loads a cross-encoder folder saved by :class:`MMCrossEncoder` as a bi-encoder (adding mean pooling),
    - refuses a text-only sentence-transformers folder (it would read image paths as text), and
    - builds an OSCAR-shaped model from a plain BERT / XLM-R checkpoint.

    Example:
        >>> bi_encoder = MMSentenceTransformer("path/to/joint-model")
        >>> image_embeddings = bi_encoder.encode(["dog.jpg", "cat.jpg"])
        >>> caption_embeddings = bi_encoder.encode(["A dog on a beach."])
        >>> cross_encoder = bi_encoder.to_cross_encoder()  # shares every weight
    """

    model_card_data_class = MMSentenceTransformerModelCardData
    # The id our card snippets use until a model has a Hub id; the host swaps it when a reloaded model is pushed.
    _model_card_model_id_placeholder = "mm_sbert_model_id"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("backend", "torch") != "torch":
            raise InvalidInputError(
                f"MMSentenceTransformer embeds in PyTorch only (got backend={kwargs['backend']!r}); backend='onnx' "
                "is for MMCrossEncoder's pair scores"
            )
        super().__init__(*args, **kwargs)

    @classmethod
    def from_backbone(
        cls, model_name_or_path: str, pooling_mode: str = "mean", device: str | None = None, **module_kwargs: Any
    ) -> MMSentenceTransformer:
        """Start a new model from a text checkpoint: ``MultimodalTransformer(model_name_or_path, ...)`` + pooling."""
        module = MultimodalTransformer(model_name_or_path, **module_kwargs)
        return cls(modules=[module, Pooling(module.get_embedding_dimension(), pooling_mode)], device=device)

    def to_cross_encoder(self) -> MMCrossEncoder:
        """The cross-encoder view of this model, sharing the ``MultimodalTransformer`` object (``ce[0] is st[0]``)."""
        return to_cross_encoder(self)

    def encode(self, inputs: Any = None, *args: Any, **kwargs: Any) -> Any:
        if inputs is None:
            inputs = kwargs.pop("sentences", None)
        if isinstance(inputs, (list, tuple)) and len(inputs) == 0:
            raise InvalidInputError("encode() got an empty list of inputs; pass at least one caption or image")
        module = self[0]
        if isinstance(module, MultimodalTransformer):
            # Checked on the whole list: the host sorts and batches, so preprocess sees indices within a batch.
            module.check_inputs([inputs] if self.is_singular_input(inputs) else inputs)
        return super().encode(inputs, *args, **kwargs)

    def _load_config_modules(self, model_name_or_path: str, **kwargs: Any):
        modules, module_kwargs = super()._load_config_modules(model_name_or_path, **kwargs)
        if len(modules) == 1 and isinstance(next(iter(modules.values())), MultimodalTransformer):
            # A cross-encoder folder: the same MultimodalTransformer, plus the mean pooling of the paper's BE.
            modules["1"] = Pooling(next(iter(modules.values())).get_embedding_dimension(), "mean")
            module_kwargs["1"] = []
        return modules, module_kwargs

    def _load_default_modules(self, model_name_or_path: str, **kwargs: Any):
        """A plain BERT / XLM-R checkpoint: an OSCAR-shaped MultimodalTransformer (2048-d regions) + mean pooling."""
        module = new_multimodal_transformer(model_name_or_path, **kwargs)
        return [module, Pooling(module.get_embedding_dimension(), "mean")], {}


VIEW_CLASSES["bi_encoder"] = MMSentenceTransformer
