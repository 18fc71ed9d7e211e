"""evaluate_models and the metrics file, called as a Python user calls them."""

from __future__ import annotations

import json

import pytest
from cli_helpers import scene_folder
from conftest import build_views

from mm_sbert.data import ImageCaptionCorpus
from mm_sbert.errors import IncompatibleModelError, UnsafeOutputError
from mm_sbert.evaluation.results_table import (
    check_metrics_path,
    evaluate_models,
    saturation_warning,
    write_metrics,
)


def _corpus():
    return ImageCaptionCorpus.from_file(f"{scene_folder()}/captions.csv")


def test_default_modes_leave_an_untrained_head_out_and_explicit_ones_refuse_it():
    model, _ = build_views("bert")
    model[0].trained_views = ["bi_encoder"]
    metrics = evaluate_models(model, _corpus(), top_k=3)
    assert "be_t2i_r@1" in metrics and "coop_seconds" not in metrics
    with pytest.raises(IncompatibleModelError, match="never trained"):
        evaluate_models(model, _corpus(), modes=("be", "coop"), model_name="--model m")
    model[0].trained_views = ["bi_encoder", "cross_encoder"]
    metrics = evaluate_models(model, _corpus(), top_k=3)
    assert metrics["coop_pairs"] == 16 * 3 + 8 * 3  # both directions rerank their top 3
    assert 0.0 <= metrics["coop_t2i_r@1"] <= 100.0


def test_saturation_warning_only_above_half_of_the_queries():
    assert saturation_warning({"coop_ce_saturated": 0.5}, 20) is None
    assert saturation_warning({}, 20) is None
    warning = saturation_warning({"coop_ce_saturated": 0.75}, 20)
    assert "for 75% of the queries" in warning and "all 20 candidates" in warning


def test_metrics_file_is_marked_and_only_such_a_file_is_replaced(tmp_path):
    path = tmp_path / "out" / "metrics.json"
    check_metrics_path(path)
    write_metrics(path, {"be_t2i_r@1": 50.0})
    written = json.loads(path.read_text())
    assert written["be_t2i_r@1"] == 50.0 and "metrics" in written["written_by"]
    check_metrics_path(path)  # ours: may be replaced
    notes = tmp_path / "notes.json"
    notes.write_text("{}")
    with pytest.raises(UnsafeOutputError, match="a file mm_sbert did not write"):
        check_metrics_path(notes)
    with pytest.raises(UnsafeOutputError, match="an input of the same command"):
        check_metrics_path(path, inputs=[path])
    with pytest.raises(UnsafeOutputError, match="a file mm_sbert did not write"):
        write_metrics(notes, {"be_t2i_r@1": 1.0})  # called directly, without the check first
    assert notes.read_text() == "{}"
    write_metrics(path, {"be_t2i_r@1": 51.0})  # its own file is replaced
    assert json.loads(path.read_text())["be_t2i_r@1"] == 51.0
