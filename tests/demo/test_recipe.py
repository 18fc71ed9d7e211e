"""The demo's recipe: how its model is built and trained (through the package's TrainingRecipe)."""

from __future__ import annotations

import os
import re

import pytest

from mm_sbert.demo import SyntheticScenes
from mm_sbert.demo.recipe import MODULE_KWARGS, build_demo_model, fine_tune
from mm_sbert.training import JointTrainer, TrainingRecipe


def test_demo_model_fuses_late_when_it_has_a_layer_to_fuse_in():
    two_layers = build_demo_model(96, 2, **MODULE_KWARGS)[0]
    assert len(two_layers.backbone.encoder.layer) == 2 and two_layers.fusion_layer == MODULE_KWARGS["fusion_layer"]
    # --layers 1 (and --quick) keeps one layer, which must attend across text and regions.
    assert build_demo_model(96, 1, **MODULE_KWARGS)[0].fusion_layer == 0
    with pytest.raises(ValueError, match="layers must be between 1 and 6, got 0"):
        build_demo_model(96, 0)


def test_the_recipe_gives_the_new_layers_their_learning_rate_through_the_host_mapping(tmp_path, monkeypatch):
    model = build_demo_model(32, 1, **MODULE_KWARGS)
    created = []

    def train_captures_optimizer(trainer, *args, **kwargs):
        created.append(trainer)
        trainer.create_optimizer()

    monkeypatch.setattr(JointTrainer, "train", train_captures_optimizer)
    scenes = SyntheticScenes(4, captions_per_image=2, seed=0, image_size=32)
    fine_tune(model, scenes, steps=1, batch_size=4, seed=0, learning_rate=1e-4, new_layer_learning_rate=1e-2,
              show_progress_bar=False)  # fmt: skip
    assert len(created) == 1
    learning_rates = {
        id(parameter): group["lr"] for group in created[0].optimizer.param_groups for parameter in group["params"]
    }
    module = model[0]
    new = {
        id(p) for layer in (module.img_embedding, module.img_layer_norm, module.classifier) for p in layer.parameters()
    }
    assert len(learning_rates) == len(list(model.parameters()))
    assert {learning_rates[i] for i in new} == {1e-2}
    assert {rate for i, rate in learning_rates.items() if i not in new} == {1e-4}


def test_the_demo_trains_through_training_recipe(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    from types import SimpleNamespace

    import torch

    from mm_sbert.demo.recipe import fine_tune

    built = []

    def record(recipe, model, dataset, output_dir, **kwargs):
        built.append((recipe, kwargs["args"], kwargs["batch_samplers"]))
        return SimpleNamespace(train=lambda: None, objective_history=[(0, "bi_encoder", 1.0)])

    monkeypatch.setattr(TrainingRecipe, "trainer", record)
    train = SimpleNamespace(to_dataset=lambda: "dataset", families=[0, 0], caption_image_ids=[0, 1])
    model = torch.nn.Linear(1, 1)
    # What the previous phase's trainer left in the card: one dataset, where the joint trainer has two.
    model.model_card_data = SimpleNamespace(train_datasets=[{"name": "stale"}])
    history = fine_tune(
        model,
        train,
        steps=3,
        batch_size=4,
        seed=7,
        warmup_steps=2,
        learning_rate=1e-4,
        new_layer_learning_rate=1e-3,
        cross_encoder_steps_per_round=2,
        family_batches=("cross_encoder",),
        negatives_per_positive=3,
        listwise=True,
        show_progress_bar=False,
    )
    assert history == [(0, "bi_encoder", 1.0), (1, "bi_encoder", 1.0)]
    assert model.model_card_data.train_datasets == []
    (warm_up, warm_args, warm_samplers), (joint, joint_args, joint_samplers) = built
    # Nothing is kept on disk, and no pinned memory without an accelerator (torch warns about it on every epoch).
    assert not os.path.exists(joint_args.output_dir) and tmp_path.exists() and not any(tmp_path.iterdir())
    assert joint_args.dataloader_pin_memory is torch.cuda.is_available()
    assert (warm_up.regime, warm_up.steps, warm_args.max_steps, warm_samplers) == ("bi_encoder", 2, 2, None)
    assert (joint.regime, joint.steps, joint_args.max_steps, list(joint_samplers)) == (
        "joint",
        9,
        9,
        ["cross_encoder"],
    )
    assert (joint.bi_encoder_loss, joint.infonce_directions) == ("infonce", ("query_to_doc",))
    assert (joint.cross_encoder_loss, joint.negatives, joint.steps_ratio) == ("listwise", 3, (1, 2))
    assert joint_args.learning_rate == 1e-4 and joint_args.seed == 7 and joint_args.disable_tqdm
    ((pattern, new_rate),) = joint_args.learning_rate_mapping.items()
    assert new_rate == 1e-3
    new = ["0.img_embedding.weight", "0.img_layer_norm.bias", "0.classifier.weight", "0.cross_modal_attention_bias"]
    assert all(re.search(pattern, name) for name in new)
    pretrained = ["0.backbone.encoder.layer.0.attention.self.query.weight", "0.backbone.embeddings.LayerNorm.bias"]
    assert not any(re.search(pattern, name) for name in pretrained)


def test_the_demo_model_is_built_by_new_model(monkeypatch):
    import mm_sbert.training
    from mm_sbert.demo.recipe import build_demo_model

    calls = []
    monkeypatch.setattr(mm_sbert.training, "new_model", lambda *args, **kwargs: calls.append((args, kwargs)) or "m")
    assert build_demo_model(32, layers=1, fusion_layer=1) == "m"
    ((_, featurizer), kwargs) = calls[0]
    assert featurizer.feature_dim > 0
    assert kwargs == {"layers": 1, "device": "cpu", "max_seq_length": 48, "use_img_layernorm": True, "fusion_layer": 0}


def test_similarity_start_turns_the_warmed_up_bi_encoder_into_the_cross_encoders_start(monkeypatch):
    from types import SimpleNamespace

    events = []

    def record(recipe, model, dataset, output_dir, **kwargs):
        events.append(recipe.regime)
        return SimpleNamespace(train=lambda: None, objective_history=[])

    monkeypatch.setattr(TrainingRecipe, "trainer", record)
    module = SimpleNamespace(start_cross_encoder=lambda cross_modal_bias: events.append(("start", cross_modal_bias)))
    model = type("Model", (), {"__getitem__": lambda self, i: module, "eval": lambda self: None})()
    model.model_card_data = SimpleNamespace(train_datasets=[])
    train = SimpleNamespace(to_dataset=lambda: "dataset", families=[0, 0], caption_image_ids=[0, 1])
    fine_tune(model, train, steps=1, batch_size=2, seed=0, warmup_steps=1, similarity_start=True,
              cross_modal_bias=-3.0, show_progress_bar=False)  # fmt: skip
    assert events == ["bi_encoder", ("start", -3.0), "joint"]


def test_every_regions_choice_builds_a_model_that_reads_its_scenes():
    from mm_sbert.demo.recipe import REGIONS, regions_featurizer

    scenes = SyntheticScenes(2, captions_per_image=1, seed=0, image_size=32)
    dims, reads_tags = {}, {}
    for regions in REGIONS:
        featurizer = regions_featurizer(regions, scenes.image_size)
        model = build_demo_model(scenes.image_size, 1, featurizer, **MODULE_KWARGS)
        dims[regions] = model[0].featurizer.feature_dim
        reads_tags[regions] = model[0].add_od_labels
        assert model.encode(scenes.images, convert_to_tensor=True).shape == (2, 384)
    assert dims["outlines"] == dims["grid"] + 7 * 7  # the grid's colours plus each cell's 7x7 outline
    # Tagged scenes: the outlines' regions, and a model that reads the tags beside the caption.
    assert dims["tagged"] == dims["placed"] == dims["outlines"]
    assert reads_tags == {name: name in ("tagged", "placed") for name in REGIONS}
    tagged = regions_featurizer("tagged", scenes.image_size).featurize(scenes.images)
    assert [len(r.tags) for r in tagged] == [len(scene.objects) for scene in scenes.scenes]
    # "placed": the same tags, each followed by its object's place, in the captions' words.
    placed = regions_featurizer("placed", scenes.image_size).featurize(scenes.images)
    for plain, with_place, scene in zip(tagged, placed, scenes.scenes):
        assert [tag.rsplit(" ", 1)[0] for tag in with_place.tags] == plain.tags
        assert sorted(tag.rsplit(" ", 1)[1] for tag in with_place.tags) == sorted(obj.slot for obj in scene.objects)


def test_the_separate_recipe_trains_a_bi_encoder_then_a_cross_encoder_started_from_it(monkeypatch, tmp_path):
    """train_bi_encoder and train_cross_encoder go through TrainingRecipe with the demo's settings;
    cross_encoder_from copies the bi-encoder and gives the copy a new head, leaving the bi-encoder as it was."""
    monkeypatch.chdir(tmp_path)
    from types import SimpleNamespace

    import torch

    from mm_sbert.demo.recipe import cross_encoder_from, train_bi_encoder, train_cross_encoder

    built = []

    def record(recipe, model, dataset, output_dir, **kwargs):
        built.append((recipe, kwargs["args"], kwargs["batch_samplers"], model))
        return SimpleNamespace(train=lambda: None, objective_history=[(0, recipe.regime, 1.0)])

    monkeypatch.setattr(TrainingRecipe, "trainer", record)
    scenes = SyntheticScenes(4, captions_per_image=2, seed=0, image_size=32)
    bi_encoder = build_demo_model(32, 1, **MODULE_KWARGS)
    assert train_bi_encoder(bi_encoder, scenes, 5, 4, 7, learning_rate=1e-4, new_layer_learning_rate=1e-2,
                            show_progress_bar=False) == [(0, "bi_encoder", 1.0)]  # fmt: skip
    before = {name: value.clone() for name, value in bi_encoder.state_dict().items()}
    cross_encoder = cross_encoder_from(bi_encoder)
    assert cross_encoder is not bi_encoder and cross_encoder[0].head_input == "token_match"
    assert (bi_encoder[0].head_input, cross_encoder[0].head_pooler) == ("first_token", False)
    history = train_cross_encoder(
        cross_encoder, scenes, 3, 4, 7, learning_rate=2e-5, head_learning_rate=2e-3, negatives_per_positive=2,
        show_progress_bar=False,
    )  # fmt: skip
    assert history == [(0, "cross_encoder", 1.0)]
    (be, be_args, be_samplers, be_model), (ce, ce_args, ce_samplers, ce_model) = built
    assert (be.regime, be_args.max_steps, be.bi_encoder_loss, be.infonce_directions, be_samplers) == (
        "bi_encoder", 5, "infonce", ("query_to_doc",), None
    )  # fmt: skip
    assert (be_args.learning_rate, list(be_args.learning_rate_mapping.values()), be_model) == (
        1e-4,
        [1e-2],
        bi_encoder,
    )
    assert (ce.regime, ce_args.max_steps, ce.cross_encoder_loss, ce.negatives, ce.new_layers) == (
        "cross_encoder", 3, "listwise", 2, ("classifier",)
    )  # fmt: skip
    assert (ce_args.learning_rate, list(ce_args.learning_rate_mapping.values()), ce_model) == (
        2e-5, [2e-3], cross_encoder
    )  # fmt: skip
    # The cross-encoder's lists come from batches of whole scene families.
    assert list(ce_samplers) == ["cross_encoder"] and ce_samplers["cross_encoder"].keywords["groups"] == [
        scenes.families[i] for i in scenes.caption_image_ids
    ]
    # The bi-encoder is unchanged by the copy (its own head and weights), and the copy starts from its weights.
    after = bi_encoder.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    copied = cross_encoder.state_dict()
    assert all(torch.equal(copied[name], after[name]) for name in after if "classifier" not in name)


def test_train_separate_runs_both_stages_with_the_recipes_rates_and_announces_each(monkeypatch, tmp_path):
    """train_separate: the bi-encoder stage on ``model``, then the cross-encoder stage on a copy with the asked head,
    each at its own learning rates from ``training``; ``on_stage`` hears each stage before it runs."""
    monkeypatch.chdir(tmp_path)
    from types import SimpleNamespace

    from mm_sbert.demo.recipe import TRAINING, train_separate

    events = []

    def record(recipe, model, dataset, output_dir, **kwargs):
        events.append((recipe.regime, kwargs["args"].max_steps, kwargs["args"].learning_rate, model))
        return SimpleNamespace(train=lambda: None, objective_history=[(0, recipe.regime, 1.0)])

    monkeypatch.setattr(TrainingRecipe, "trainer", record)
    scenes = SyntheticScenes(4, captions_per_image=2, seed=0, image_size=32)
    bi_encoder = build_demo_model(32, 1, **MODULE_KWARGS)
    training = {**TRAINING, "learning_rate": 1e-4, "cross_encoder_learning_rate": 2e-5}
    cross_encoder, history = train_separate(
        bi_encoder, scenes, 5, 3, 4, 7, head_input="text_image_match", training=training, show_progress_bar=False,
        on_stage=lambda stage: events.append(stage),
    )  # fmt: skip
    assert history == [(0, "bi_encoder", 1.0), (0, "cross_encoder", 1.0)]
    assert events == [
        "bi_encoder", ("bi_encoder", 5, 1e-4, bi_encoder), "cross_encoder", ("cross_encoder", 3, 2e-5, cross_encoder)
    ]  # fmt: skip
    assert cross_encoder is not bi_encoder and cross_encoder[0].head_input == "text_image_match"
    assert bi_encoder[0].head_input == "first_token"
