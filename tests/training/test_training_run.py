"""train_model and the recipe options, called as a Python user calls them."""

from __future__ import annotations

import pytest
from cli_helpers import scene_folder, tiny_model_dir

from mm_sbert.data import ImageCaptionCorpus
from mm_sbert.errors import InvalidInputError
from mm_sbert.training import TrainingRecipe
from mm_sbert.training.published_recipes import OPTION_DEFAULTS, PUBLISHED_RECIPES, resolve_options
from mm_sbert.training.training_run import new_model_featurizer, train_model


def test_resolve_options_takes_given_then_recipe_then_defaults():
    options, applied = resolve_options({"steps": 7, "lr": None}, "flickr8k", "be")
    recipe = PUBLISHED_RECIPES["flickr8k"]["be"]
    assert options["steps"] == 7 and options["lr"] == recipe["lr"] and options["ce_loss"] == OPTION_DEFAULTS["ce_loss"]
    assert applied == {name: value for name, value in recipe.items() if name != "steps"}
    assert resolve_options({}, None, "be") == (OPTION_DEFAULTS, {})
    with pytest.raises(ValueError, match="Unknown recipe 'nope'"):
        resolve_options({}, "nope", "be")


def test_recipe_from_command_line_options():
    recipe = TrainingRecipe.from_options(
        "ce", {"lr": 2e-5, "ce_negatives": 3, "neighbour_groups": 4, "steps_ratio": (1, 2), "margin": None, "x": 1}
    )
    assert (recipe.regime, recipe.learning_rate, recipe.negatives) == ("cross_encoder", 2e-5, 3)
    assert (recipe.neighbour_group_size, recipe.steps_ratio, recipe.margin) == (4, (1, 2), 0.1)


def test_new_model_featurizer_by_name_and_refusals():
    assert new_model_featurizer().grid_size == 3
    assert new_model_featurizer("color-grid", 4).grid_size == 4
    with pytest.raises(InvalidInputError, match="--grid-size goes with --featurizer color-grid or mobilenet-grid"):
        new_model_featurizer("color-blob", 2)


def _corpus():
    return ImageCaptionCorpus.from_file(f"{scene_folder()}/captions.csv")


@pytest.mark.parametrize(
    ("regime", "kwargs", "message"),
    [
        ("bi_encoder", {"neighbour_group_size": 2}, "use it with `ce` or `joint`"),
        ("cross_encoder", {"neighbour_group_size": 8, "batch_size": 4}, "between 2 and --batch-size (4), got 8"),
    ],
)
def test_settings_that_do_not_go_together_are_refused_before_a_model_loads(tmp_path, regime, kwargs, message):
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train_model(_corpus(), tmp_path / "o", TrainingRecipe(regime, **kwargs), tiny_model_dir())
    assert not (tmp_path / "o" / "final").exists()


def test_similarity_start_needs_a_saved_model(tmp_path):
    with pytest.raises(InvalidInputError, match="--similarity-start needs"):
        train_model(
            _corpus(), tmp_path / "o", TrainingRecipe("cross_encoder"), "all-MiniLM-L6-v2", similarity_start=True
        )


def test_train_model_continues_a_saved_model_and_saves_the_final_one(tmp_path):
    recipe = TrainingRecipe("bi_encoder", steps=2, batch_size=4)
    result = train_model(_corpus(), tmp_path / "o", recipe, tiny_model_dir(), image_part=(1, 2))
    assert result.continued and result.steps == 2 and result.path == str(tmp_path / "o" / "final")
    assert result.pairs == len(_corpus().image_part(1, 2)) < len(_corpus())
    assert recipe.new_layers == ("classifier", "cross_modal_attention_bias")  # a saved projection is not new
    assert result.model[0].trained_views == ["bi_encoder"]
    assert (tmp_path / "o" / "final" / "modules.json").is_file()
