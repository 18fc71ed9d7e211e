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
    "SyntheticScenes": "mm_sbert.data",
    "ImageTextRetrievalEvaluator": "mm_sbert.evaluation",
    "OnnxCrossEncoder": "mm_sbert.export",
    "CachedFeaturizer": "mm_sbert.image_features",
    "ColorBlobFeaturizer": "mm_sbert.image_features",
    "ColorGridFeaturizer": "mm_sbert.image_features",
    "DetectorFeaturizer": "mm_sbert.image_features",
    "FeatureStore": "mm_sbert.image_features",
    "ImageFeaturizer": "mm_sbert.image_features",
    "ImageLoadError": "mm_sbert.image_features",
    "MobileNetV2GridFeaturizer": "mm_sbert.image_features",
    "RegionFeatures": "mm_sbert.image_features",
    "CrossEncoderBCELoss": "mm_sbert.losses",
    "HardNegativeTripletLoss": "mm_sbert.losses",
    "MMCrossEncoder": "mm_sbert.models",
    "MMSentenceTransformer": "mm_sbert.models",
    "MultimodalTransformer": "mm_sbert.modules",
    "CooperativeRetriever": "mm_sbert.retrieval",
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
    "DetectorFeaturizer",
    "EmbeddingIndex",
    "FeatureStore",
    "HardNegativeTripletLoss",
    "ImageCaptionCorpus",
    "ImageFeaturizer",
    "ImageLoadError",
    "ImageTextRetrievalEvaluator",
    "JointTrainer",
    "MMCrossEncoder",
    "MMSentenceTransformer",
    "MilvusIndex",
    "MobileNetV2GridFeaturizer",
    "MultimodalTransformer",
    "OnnxCrossEncoder",
    "RegionFeatures",
    "SyntheticScenes",
    "ThreadPolicy",
    "VectorSearch",
    "__version__",
]

if TYPE_CHECKING:
    from mm_sbert.data import ImageCaptionCorpus, SyntheticScenes
    from mm_sbert.evaluation import ImageTextRetrievalEvaluator
    from mm_sbert.export import OnnxCrossEncoder
    from mm_sbert.image_features import (
        CachedFeaturizer,
        ColorBlobFeaturizer,
        ColorGridFeaturizer,
        DetectorFeaturizer,
        FeatureStore,
        ImageFeaturizer,
        ImageLoadError,
        MobileNetV2GridFeaturizer,
        RegionFeatures,
    )
    from mm_sbert.losses import CrossEncoderBCELoss, HardNegativeTripletLoss
    from mm_sbert.models import MMCrossEncoder, MMSentenceTransformer
    from mm_sbert.modules import MultimodalTransformer
    from mm_sbert.retrieval import CooperativeRetriever, EmbeddingIndex, MilvusIndex, VectorSearch
    from mm_sbert.thread_policy import ThreadPolicy
    from mm_sbert.training import JointTrainer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mm_sbert' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
