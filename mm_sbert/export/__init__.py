from __future__ import annotations

from mm_sbert.export.onnx_cross_encoder import OnnxScorer, export_cross_encoder_onnx, with_onnx_scorer

__all__ = ["OnnxScorer", "export_cross_encoder_onnx", "with_onnx_scorer"]


def __getattr__(name: str):
    if name == "OnnxCrossEncoder":
        # Retired: the wrapper's fast path lives behind the one backend switch, MMCrossEncoder(..., backend="onnx").
        raise AttributeError(
            "mm_sbert.export.OnnxCrossEncoder was removed: load the cross-encoder with "
            "MMCrossEncoder(folder, backend='onnx') (model_kwargs={'file_name': 'onnx/model_qint8.onnx'} for int8); "
            "mm_sbert.OnnxCrossEncoder remains as a deprecated alias"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
