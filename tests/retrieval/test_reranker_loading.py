from __future__ import annotations

import pytest
from conftest import build_views

from mm_sbert.errors import IncompatibleModelError
from mm_sbert.retrieval.reranker_loading import check_can_rerank, load_cross_encoder, onnx_export_path


def test_onnx_export_path_names_the_file_to_write_until_it_exists(tmp_path):
    assert onnx_export_path(tmp_path, "torch") is None and onnx_export_path(tmp_path, "bf16") is None
    assert onnx_export_path(tmp_path, "onnx-int8") == str(tmp_path / "onnx" / "model_qint8.onnx")
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").write_bytes(b"")
    assert onnx_export_path(tmp_path, "onnx") is None


def test_an_unknown_backend_is_refused(tmp_path):
    with pytest.raises(ValueError, match="backend must be one of"):
        load_cross_encoder(tmp_path, "tensorrt")


def test_check_can_rerank():
    model, _ = build_views("bert")
    model[0].trained_views = ["bi_encoder", "cross_encoder"]
    assert check_can_rerank(model, "m") is True
    model[0].trained_views = ["bi_encoder"]
    with pytest.raises(IncompatibleModelError, match="never trained.*; search with --no-rerank"):
        check_can_rerank(model, "m")
    model[0].classifier = None  # a bi-encoder without a head only retrieves; a separate one must have a head
    assert check_can_rerank(model, "m") is False
    with pytest.raises(IncompatibleModelError, match="has no cross-encoder score head"):
        check_can_rerank(model, "m", separate=True)
