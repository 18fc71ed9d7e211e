from __future__ import annotations

from mm_sbert.export.onnx_cross_encoder import OnnxCrossEncoder, OnnxScorer, export_cross_encoder_onnx

__all__ = ["OnnxCrossEncoder", "OnnxScorer", "export_cross_encoder_onnx"]
