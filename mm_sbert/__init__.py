"""mm_sbert: cross-modal (image <-> text) retrieval for sentence-transformers, after "Retrieve Fast, Rerank Smart"."""

from __future__ import annotations

from mm_sbert.data import ImageCaptionCorpus
from mm_sbert.image_features import ColorGridFeaturizer, ImageFeaturizer, ImageLoadError, RegionFeatures
from mm_sbert.losses import CrossEncoderBCELoss, HardNegativeTripletLoss
from mm_sbert.models import MMCrossEncoder, MMSentenceTransformer
from mm_sbert.modules import MultimodalTransformer
from mm_sbert.training import JointTrainer
from mm_sbert.version import __version__

__all__ = [
    "ColorGridFeaturizer",
    "CrossEncoderBCELoss",
    "HardNegativeTripletLoss",
    "ImageCaptionCorpus",
    "ImageFeaturizer",
    "ImageLoadError",
    "JointTrainer",
    "MMCrossEncoder",
    "MMSentenceTransformer",
    "MultimodalTransformer",
    "RegionFeatures",
    "__version__",
]
