"""The demo ablation's rows run end to end on the demo's --quick sizes (the real rows take minutes each)."""

from __future__ import annotations

import pytest
import torch
from benchmark_helpers import load_benchmark

from mm_sbert import ColorBlobFeaturizer


@pytest.fixture()
def bench(monkeypatch):
    module = load_benchmark("demo_ablation")
    monkeypatch.setattr(module.demo_recipe, "DEFAULTS", dict(module.demo_recipe.QUICK))
    # The rows train the joint recipe: --quick's sizes for it too.
    monkeypatch.setattr(module.demo_recipe, "JOINT_SIZES", {"warmup_steps": 1, "steps": 2})
    monkeypatch.setattr(module, "ABLATION_HELD_OUT", module.demo_recipe.QUICK["eval_images"])
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield module
    torch.set_num_threads(previous)


@pytest.mark.parametrize("row", ["default", "match_head_listwise_mined_negatives_240", "separate_demo_recipe"])
def test_rows_train_and_report_recall_of_all_three_modes(bench, row):
    settings = {**bench.ROWS[row], "steps": 2}
    result = bench.run_row(row, settings, seed=0)
    for mode in ("be", "ce", "coop"):
        assert 0.0 <= result[mode] <= 100.0
    # 12 held-out scenes, k=20: Coop reranks every image, so it ranks exactly like the CE.
    assert result["coop"] == pytest.approx(result["ce"])
    assert result["train_seconds"] > 0


def test_skipping_full_cross_encoding_scores_be_and_coop_on_more_captions(bench):
    settings = {**bench.ROWS["default"], "steps": 1}
    result = bench.run_row("default", settings, seed=0, held_out_images=6, eval_captions=2, full_cross_encoder=False)
    assert set(result) == {"be", "coop", "be_t2i_r@1", "coop_t2i_r@1", "train_seconds"}
    # A smoke test of the options: no CE column, recall of both modes in range.
    assert 0.0 <= result["coop"] <= 100.0 and 0.0 <= result["be"] <= 100.0


def test_recipe_rows_keep_the_scene_count_they_were_measured_with(bench):
    assert bench.ROWS["match_head_bce"]["train_images"] == 200
    assert bench.ROWS["previous_default_200_scenes"]["module"]["fusion_layer"] == 0
    assert "train_images" not in bench.ROWS["default"]  # the demo's own count


@pytest.fixture()
def built(bench, monkeypatch):
    """The models run_row builds, in order (build_demo_model wrapped)."""
    models = []
    original = bench.demo_recipe.build_demo_model

    def build(*args, **kwargs):
        models.append(original(*args, **kwargs))
        return models[-1]

    monkeypatch.setattr(bench.demo_recipe, "build_demo_model", build)
    return models


def test_object_region_row_trains_on_the_blob_featurizer(bench, built):
    result = bench.run_row("default_object_regions", {**bench.ROWS["default_object_regions"], "steps": 1}, seed=0)
    assert isinstance(built[0][0].featurizer, ColorBlobFeaturizer)
    assert result["coop"] == pytest.approx(result["ce"])  # 12 held-out scenes, k=20, as above


def test_default_row_is_the_joint_recipe_the_rows_were_measured_with(bench):
    assert bench.ROWS["default"]["training"] is bench.demo_recipe.JOINT_TRAINING
    assert bench.ROWS["default"]["module"] is bench.demo_recipe.JOINT_MODULE_KWARGS


def test_random_weights_row_drops_the_minilm_weights_and_keeps_the_rest(bench, built, monkeypatch):
    monkeypatch.setattr(bench.demo_recipe, "fine_tune", lambda model, *args, **kwargs: model.eval())
    bench.run_row("default_random_weights", bench.ROWS["default_random_weights"], seed=0)
    (row_model,) = built
    pretrained = bench.demo_recipe.build_demo_model(64, row_model[0].backbone.config.num_hidden_layers)
    ours, theirs = row_model[0].backbone.state_dict(), pretrained[0].backbone.state_dict()
    assert ours.keys() == theirs.keys()
    word_embeddings = "embeddings.word_embeddings.weight"
    assert not torch.allclose(ours[word_embeddings], theirs[word_embeddings])
    assert not torch.allclose(
        ours["encoder.layer.0.attention.self.query.weight"], theirs["encoder.layer.0.attention.self.query.weight"]
    )
    # Still the same architecture, cut to the row's layers, and the same tokenizer.
    assert row_model[0].tokenizer.vocab_size == pretrained[0].tokenizer.vocab_size


def test_separate_rows_rerank_with_a_cross_encoder_started_from_the_rows_bi_encoder(bench, built, monkeypatch):
    """The separate rows train through the demo's own functions, and Coop reranks with the copy, not the bi-encoder's
    untrained head."""
    started = []
    original = bench.demo_recipe.cross_encoder_from

    def record(bi_encoder, head_input):
        started.append((bi_encoder, head_input, original(bi_encoder, head_input)))
        return started[-1][2]

    monkeypatch.setattr(bench.demo_recipe, "cross_encoder_from", record)
    row = bench.ROWS["separate_text_image_match_head"]
    result = bench.run_row("separate_text_image_match_head", row, seed=0)
    ((bi_encoder, head_input, cross_encoder),) = started
    assert built == [bi_encoder] and head_input == "text_image_match"
    assert cross_encoder[0].trained_views == ["bi_encoder", "cross_encoder"]
    assert bi_encoder[0].trained_views == ["bi_encoder"]
    assert result["coop"] == pytest.approx(result["ce"])
