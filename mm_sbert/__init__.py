"""mm_sbert: cross-modal (image <-> text) retrieval for sentence-transformers, after "Retrieve Fast, Rerank Smart"."""

from __future__ import annotations

from mm_sbert.data import ImageCaptionCorpus
from mm_sbert.demo import SyntheticScenes
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
from mm_sbert.training import JointTrainer
from mm_sbert.version import __version__

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
    "VectorSearch",
    "__version__",
]
