"""mm_sbert: cross-modal (image <-> text) retrieval for sentence-transformers, after "Retrieve Fast, Rerank Smart".

The public names are imported on first use (PEP 562), so that ``import mm_sbert`` and ``mm-sbert --help`` do not pull
in torch and transformers; ``from mm_sbert import X`` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mm_sbert.version import __version__

# public name -> the subpackage that defines it
_EXPORTS = {
    "ImageCaptionCorpus": "mm_sbert.data",
    "SyntheticScenes": "mm_sbert.demo",
    "ImageTextRetrievalEvaluator": "mm_sbert.evaluation",
    "CachedFeaturizer": "mm_sbert.image_features",
    "ColorBlobFeaturizer": "mm_sbert.image_features",
    "ColorGridFeaturizer": "mm_sbert.image_features",
    "DetectorFeaturizer": "mm_sbert.image_features",
    "EfficientNetLiteGridFeaturizer": "mm_sbert.image_features",
    "FeatureStore": "mm_sbert.image_features",
    "ImageFeaturizer": "mm_sbert.image_features",
    "ImageLoadError": "mm_sbert.image_features",
    "ImageNetTagger": "mm_sbert.image_features",
    "MobileNetV2GridFeaturizer": "mm_sbert.image_features",
    "RegionFeatures": "mm_sbert.image_features",
    "CrossEncoderBCELoss": "mm_sbert.losses",
    "HardNegativeTripletLoss": "mm_sbert.losses",
    "MMCrossEncoder": "mm_sbert.models",
    "MMSentenceTransformer": "mm_sbert.models",
    "MultimodalTransformer": "mm_sbert.modules",
    "CooperativeRetriever": "mm_sbert.retrieval",
    "CrossEncoderEnsemble": "mm_sbert.retrieval",
    "EmbeddingIndex": "mm_sbert.retrieval",
    "MilvusIndex": "mm_sbert.retrieval",
    "VectorSearch": "mm_sbert.retrieval",
    "ThreadPolicy": "mm_sbert.thread_policy",
    "JointTrainer": "mm_sbert.training",
}

__all__ = [
    "CachedFeaturizer",
    "ColorBlobFeaturizer",
    "ColorGridFeaturizer",
    "CooperativeRetriever",
    "CrossEncoderBCELoss",
    "CrossEncoderEnsemble",
    "DetectorFeaturizer",
    "EfficientNetLiteGridFeaturizer",
    "EmbeddingIndex",
    "FeatureStore",
    "HardNegativeTripletLoss",
    "ImageCaptionCorpus",
    "ImageFeaturizer",
    "ImageLoadError",
    "ImageNetTagger",
    "ImageTextRetrievalEvaluator",
    "JointTrainer",
    "MMCrossEncoder",
    "MMSentenceTransformer",
    "MilvusIndex",
    "MobileNetV2GridFeaturizer",
    "MultimodalTransformer",
    "RegionFeatures",
    "SyntheticScenes",
    "ThreadPolicy",
    "VectorSearch",
    "__version__",
]

if TYPE_CHECKING:
    from mm_sbert.data import ImageCaptionCorpus
    from mm_sbert.demo import SyntheticScenes
    from mm_sbert.evaluation import ImageTextRetrievalEvaluator
    from mm_sbert.image_features import (
        CachedFeaturizer,
        ColorBlobFeaturizer,
        ColorGridFeaturizer,
        DetectorFeaturizer,
        EfficientNetLiteGridFeaturizer,
        FeatureStore,
        ImageFeaturizer,
        ImageLoadError,
        ImageNetTagger,
        MobileNetV2GridFeaturizer,
        RegionFeatures,
    )
    from mm_sbert.losses import CrossEncoderBCELoss, HardNegativeTripletLoss
    from mm_sbert.models import MMCrossEncoder, MMSentenceTransformer
    from mm_sbert.modules import MultimodalTransformer
    from mm_sbert.retrieval import (
        CooperativeRetriever,
        CrossEncoderEnsemble,
        EmbeddingIndex,
        MilvusIndex,
        VectorSearch,
    )
    from mm_sbert.thread_policy import ThreadPolicy
    from mm_sbert.training import JointTrainer


def __getattr__(name: str) -> Any:
    if name == "OnnxCrossEncoder":
        import warnings

        warnings.warn(
            "mm_sbert.OnnxCrossEncoder is deprecated: load the cross-encoder with MMCrossEncoder(folder, "
            "backend='onnx') (model_kwargs={'file_name': 'onnx/model_qint8.onnx'} for int8 weights)",
            DeprecationWarning,
            stacklevel=2,
        )
        return _onnx_cross_encoder
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mm_sbert' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


def _onnx_cross_encoder(cross_encoder, onnx_path: str | None = None, threads: int | None = None):
    """What ``OnnxCrossEncoder(cross_encoder, onnx_path)`` made: a cross-encoder scoring pairs in ONNX Runtime (a
    copy of a given model with the ``backend="onnx"`` scorer, or the model folder loaded with that backend)."""
    import os

    from mm_sbert.export import with_onnx_scorer
    from mm_sbert.models import MMCrossEncoder

    if isinstance(cross_encoder, (str, os.PathLike)):
        folder = str(cross_encoder)
        file_name = "onnx/model.onnx" if onnx_path is None else os.path.relpath(onnx_path, folder)
        return MMCrossEncoder(folder, device="cpu", backend="onnx", model_kwargs={"file_name": file_name})
    if onnx_path is None:
        raise ValueError("onnx_path is required when cross_encoder is a model object, not a folder")
    return with_onnx_scorer(cross_encoder, onnx_path, threads=threads)
