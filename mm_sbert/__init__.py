"""mm_sbert: cross-modal (image <-> text) retrieval for sentence-transformers, after "Retrieve Fast, Rerank Smart"."""

from __future__ import annotations

from mm_sbert.data import ImageCaptionCorpus, SyntheticScenes
from mm_sbert.evaluation import ImageTextRetrievalEvaluator
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
    "RegionFeatures",
    "SyntheticScenes",
    "VectorSearch",
    "__version__",
]


def __getattr__(name: str):
    if name == "OnnxCrossEncoder":
        import warnings

        warnings.warn(
            "mm_sbert.OnnxCrossEncoder is deprecated: load the cross-encoder with MMCrossEncoder(folder, "
            "backend='onnx') (model_kwargs={'file_name': 'onnx/model_qint8.onnx'} for int8 weights)",
            DeprecationWarning,
            stacklevel=2,
        )
        return _onnx_cross_encoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _onnx_cross_encoder(cross_encoder, onnx_path: str | None = None, threads: int | None = None):
    """What ``OnnxCrossEncoder(cross_encoder, onnx_path)`` made: a cross-encoder scoring pairs in ONNX Runtime (a
    copy of a given model with the ``backend="onnx"`` scorer, or the model folder loaded with that backend)."""
    import os

    from mm_sbert.export import with_onnx_scorer

    if isinstance(cross_encoder, (str, os.PathLike)):
        folder = str(cross_encoder)
        file_name = "onnx/model.onnx" if onnx_path is None else os.path.relpath(onnx_path, folder)
        return MMCrossEncoder(folder, device="cpu", backend="onnx", model_kwargs={"file_name": file_name})
    if onnx_path is None:
        raise ValueError("onnx_path is required when cross_encoder is a model object, not a folder")
    return with_onnx_scorer(cross_encoder, onnx_path, threads=threads)
