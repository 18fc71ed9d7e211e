from __future__ import annotations

import pytest
import torch
from conftest import build_views
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from mm_sbert.demo import color_swatches
from mm_sbert.losses import CrossEncoderBCELoss, CrossEncoderListwiseLoss, HardNegativeTripletLoss
from mm_sbert.training import TrainingRecipe, new_model


def test_losses_follow_the_regime_and_the_named_settings():
    model, _ = build_views("bert")
    be, ce = TrainingRecipe("bi_encoder", margin=0.3).losses(model)
    assert isinstance(be, HardNegativeTripletLoss) and be.margin == 0.3 and ce is None
    be, ce = TrainingRecipe("cross_encoder").losses(model)
    assert be is None and isinstance(ce, CrossEncoderBCELoss) and ce.negatives_per_positive == 1
    be, ce = TrainingRecipe(
        "joint", bi_encoder_loss="infonce", cross_encoder_loss="listwise", hard_negatives=True
    ).losses(model)
    assert isinstance(be, MultipleNegativesRankingLoss) and be.partition_mode == "joint"
    assert isinstance(ce, CrossEncoderListwiseLoss) and ce.negatives_per_positive == 3 and ce.num_hard_negatives == 3
    # The training examples' options: VSE (all negatives) and one softmax per InfoNCE direction.
    be, _ = TrainingRecipe("bi_encoder", hardest_negative=False).losses(model)
    assert be.hardest is False
    per_direction = TrainingRecipe("bi_encoder", bi_encoder_loss="infonce", infonce_partition_mode="per_direction")
    be, _ = per_direction.losses(model)
    assert be.partition_mode == "per_direction"
    with pytest.raises(ValueError, match="infonce_partition_mode must be"):
        TrainingRecipe("bi_encoder", infonce_partition_mode="rows")


def test_new_layers_get_their_own_learning_rate_through_the_host_mapping(tmp_path):
    model, _ = build_views("bert")
    recipe = TrainingRecipe("joint", steps=2, batch_size=4, learning_rate=1e-5, new_layer_learning_rate=1e-3)
    trainer = recipe.trainer(model, color_swatches(num_images=4, captions_per_image=2).to_dataset(), str(tmp_path))
    trainer.create_optimizer()
    rates = {}
    for group in trainer.optimizer.param_groups:
        for parameter in group["params"]:
            rates[id(parameter)] = group["lr"]
    names = dict(model.named_parameters())
    assert {rates[id(names[n])] for n in names if ".img_embedding." in n or ".classifier." in n} == {1e-3}
    assert {rates[id(names[n])] for n in names if ".backbone.encoder." in n} == {1e-5}


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="bi_encoder_loss must be 'triplet' or 'infonce', got 'mse'"):
        TrainingRecipe(bi_encoder_loss="mse")
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        TrainingRecipe(batch_size=1)
    with pytest.raises(ValueError, match="regime must be one of"):
        TrainingRecipe(regime="both")


def _saved_backbone(tmp_path):
    """The test model's backbone saved as a transformers checkpoint, and its depth."""
    model, _ = build_views("bert")
    backbone = tmp_path / "backbone"
    model[0].backbone.save_pretrained(str(backbone))
    model[0].tokenizer.save_pretrained(str(backbone))
    return backbone, model[0].backbone.config.num_hidden_layers


def test_new_model_keeps_only_the_first_layers(tmp_path):
    from mm_sbert import ColorGridFeaturizer, MMSentenceTransformer

    backbone, depth = _saved_backbone(tmp_path)
    halved = new_model(str(backbone), ColorGridFeaturizer(grid_size=2), layers=depth - 1)
    assert len(halved[0].backbone.encoder.layer) == depth - 1
    halved.save(str(tmp_path / "saved"))
    assert len(MMSentenceTransformer(str(tmp_path / "saved"))[0].backbone.encoder.layer) == depth - 1
    with pytest.raises(ValueError, match=f"layers must be between 1 and {depth}, got {depth + 1}"):
        new_model(str(backbone), ColorGridFeaturizer(grid_size=2), layers=depth + 1)


def test_continuing_a_trained_model_speeds_up_only_the_head(tmp_path):
    model, _ = build_views("bert")
    recipe = TrainingRecipe(
        "joint", steps=2, batch_size=4, learning_rate=1e-5, new_layer_learning_rate=1e-3, new_layers=("classifier",)
    )
    trainer = recipe.trainer(model, color_swatches(num_images=4, captions_per_image=2).to_dataset(), str(tmp_path))
    trainer.create_optimizer()
    rates = {id(p): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
    names = dict(model.named_parameters())
    assert {rates[id(names[n])] for n in names if ".classifier." in n} == {1e-3}
    assert {rates[id(names[n])] for n in names if ".img_embedding." in n} == {1e-5}
    with pytest.raises(ValueError, match="new_layers must be a non-empty subset"):
        TrainingRecipe(new_layers=("pooler",))


def test_infonce_directions_reach_the_host_loss():
    model, _ = build_views("bert")
    both, _ = TrainingRecipe("bi_encoder", bi_encoder_loss="infonce").losses(model)
    one, _ = TrainingRecipe("bi_encoder", bi_encoder_loss="infonce", infonce_directions=["query_to_doc"]).losses(model)
    assert both.directions == ("query_to_doc", "doc_to_query")
    assert one.directions == ("query_to_doc",)


def test_neighbour_group_size_gives_the_cross_encoder_batches_of_look_alike_images(tmp_path):
    import functools

    from mm_sbert.training import GroupedBatchSampler, image_neighbour_groups

    model, _ = build_views("bert")
    dataset = color_swatches(num_images=8, captions_per_image=2).to_dataset()
    recipe = TrainingRecipe("joint", steps=2, batch_size=4, neighbour_group_size=2, seed=5)
    trainer = recipe.trainer(model, dataset, str(tmp_path))
    sampler = trainer.objective_batch_samplers["cross_encoder"]
    assert sampler.func is GroupedBatchSampler
    assert sampler.keywords["groups"] == image_neighbour_groups(model, dataset, group_size=2, seed=5)
    assert "bi_encoder" not in trainer.objective_batch_samplers, "the bi-encoder keeps random batches"
    # The bi-encoder regime has no cross-encoder batches to group.
    be_trainer = TrainingRecipe("bi_encoder", steps=2, batch_size=4, neighbour_group_size=2).trainer(
        model, dataset, str(tmp_path)
    )
    assert be_trainer.objective_batch_samplers == {}
    with pytest.raises(ValueError, match="either neighbour_group_size or a cross_encoder entry"):
        recipe.trainer(model, dataset, str(tmp_path), batch_samplers={"cross_encoder": functools.partial(list)})
    with pytest.raises(ValueError, match="neighbour_group_size must be >= 2, got 1"):
        TrainingRecipe(neighbour_group_size=1)


def test_new_model_starts_with_nothing_trained_and_refuses_a_saved_model(tmp_path):
    from mm_sbert import ColorGridFeaturizer
    from mm_sbert.training import load_or_new_model

    model, _ = build_views("bert")
    backbone = tmp_path / "backbone"
    model[0].backbone.save_pretrained(str(backbone))
    model[0].tokenizer.save_pretrained(str(backbone))
    new = new_model(str(backbone), ColorGridFeaturizer(grid_size=2))
    assert new[0].trained_views == []
    new.save(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="is a saved mm_sbert model"):
        new_model(str(tmp_path / "saved"))
    loaded, saved = load_or_new_model(str(tmp_path / "saved"))
    assert saved and loaded[0].trained_views == []
    _, saved = load_or_new_model(str(backbone), featurizer=ColorGridFeaturizer(grid_size=2))
    assert not saved


def test_offline_backbone_names_resolve_in_one_place(monkeypatch):
    from mm_sbert.backbones import DEFAULT_BACKBONE, OFFLINE_BACKBONES, all_minilm_l6_v2_path, resolve_backbone

    assert resolve_backbone(DEFAULT_BACKBONE) == all_minilm_l6_v2_path()
    assert set(OFFLINE_BACKBONES) == {"all-MiniLM-L6-v2", "multilingual-e5-small"}
    assert resolve_backbone("some/folder") == "some/folder"


def test_a_cut_model_with_a_cross_modal_bias_saves_and_reloads_with_the_same_scores(tmp_path):
    from conftest import random_regions

    from mm_sbert import ColorGridFeaturizer, MMCrossEncoder

    backbone, depth = _saved_backbone(tmp_path)
    featurizer = ColorGridFeaturizer(grid_size=2)
    cut = new_model(str(backbone), featurizer, layers=depth - 1, fusion_layer=depth - 2, cross_modal_bias=2.0)
    # One bias per fused layer of the cut model, not of the backbone it was cut from.
    assert cut[0].cross_modal_attention_bias.tolist() == [2.0]
    cut.save(str(tmp_path / "saved"))
    pairs = [("a red circle", random_regions(5, seed=1, dim=featurizer.feature_dim))]
    reloaded = MMCrossEncoder(str(tmp_path / "saved"))
    expected = MMCrossEncoder(str(tmp_path / "saved"))
    expected[0].load_state_dict(cut[0].state_dict())
    scores = [model.predict(pairs, convert_to_tensor=True) for model in (reloaded, expected)]
    assert torch.equal(*scores)
    with pytest.raises(ValueError, match=f"fusion_layer={depth - 1} needs more than {depth - 1} layers"):
        new_model(str(backbone), featurizer, layers=depth - 1, fusion_layer=depth - 1)
