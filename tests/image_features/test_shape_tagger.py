from __future__ import annotations

import pytest
from PIL import Image

from mm_sbert.demo import SyntheticScenes
from mm_sbert.demo.synthetic_scenes import COLORS, SLOTS
from mm_sbert.image_features import ColorGridFeaturizer, ImageFeaturizer, ShapeTagger
from mm_sbert.image_features.shape_tagger import place_word


@pytest.mark.parametrize("families", ["details", "binding"])
def test_tags_name_every_object_of_the_generated_scenes_in_reading_order(families):
    scenes = SyntheticScenes(120, captions_per_image=1, seed=3, families=families)
    tagger = ShapeTagger(COLORS)
    for scene, image in zip(scenes.scenes, scenes.images):
        reading_order = sorted(scene.objects, key=lambda obj: (SLOTS[obj.slot][1], SLOTS[obj.slot][0]))
        assert tagger.tag(image) == [f"{obj.color} {obj.shape}" for obj in reading_order]


@pytest.mark.parametrize("families", ["details", "binding"])
def test_place_words_say_where_each_object_is_in_the_words_the_captions_use(families):
    scenes = SyntheticScenes(120, captions_per_image=1, seed=4, families=families)
    tagger = ShapeTagger(COLORS, place_words=True)
    for scene, image in zip(scenes.scenes, scenes.images):
        reading_order = sorted(scene.objects, key=lambda obj: (SLOTS[obj.slot][1], SLOTS[obj.slot][0]))
        assert tagger.tag(image) == [f"{obj.color} {obj.shape} {obj.slot}" for obj in reading_order]


@pytest.mark.parametrize(
    "point, word",
    [
        ((0.1, 0.1), "top left"),
        ((0.5, 0.5), "centre"),
        ((0.9, 0.5), "bottom"),
        ((0.5, 0.99), "right"),
        ((1.0, 0.0), "bottom left"),
        ((0.2, 0.5), "top"),
    ],
)
def test_place_word_names_the_third_of_the_image_a_point_lies_in(point, word):
    assert place_word(*point) == word


def test_an_image_without_objects_has_no_tags_and_the_grid_stores_none():
    blank = Image.new("RGB", (64, 64), (245, 245, 240))
    assert ShapeTagger(COLORS).tag(blank) == []
    grid = ColorGridFeaturizer(grid_size=3, resize_to=64, tag_colors=COLORS)
    assert grid.featurize([blank])[0].tags is None


def test_the_tagging_grid_saves_its_colours_and_an_untagged_grid_keeps_its_old_settings(tmp_path):
    scenes = SyntheticScenes(4, captions_per_image=1, seed=0)
    grid = ColorGridFeaturizer(grid_size=3, resize_to=64, mask_size=7, tag_colors=COLORS)
    grid.save(str(tmp_path / "grid"))
    loaded = ImageFeaturizer.load(str(tmp_path / "grid"))
    assert [r.tags for r in loaded.featurize(scenes.images)] == [r.tags for r in grid.featurize(scenes.images)]
    assert all(r.tags for r in loaded.featurize(scenes.images))
    # A grid without tags has the settings it had before tags existed: its stores and models still match it.
    assert "tag_colors" not in ColorGridFeaturizer(grid_size=3).get_config_dict()
    assert "tag_places" not in grid.get_config_dict()
    placed = ColorGridFeaturizer(grid_size=3, resize_to=64, mask_size=7, tag_colors=COLORS, tag_places=True)
    placed.save(str(tmp_path / "placed"))
    loaded = ImageFeaturizer.load(str(tmp_path / "placed"))
    assert [r.tags for r in loaded.featurize(scenes.images)] == [r.tags for r in placed.featurize(scenes.images)]
    assert [r.tags for r in loaded.featurize(scenes.images)] != [r.tags for r in grid.featurize(scenes.images)]


def test_places_without_tags_are_refused():
    with pytest.raises(ValueError, match="tag_places=True\) needs tag_colors"):
        ColorGridFeaturizer(tag_places=True)


@pytest.mark.parametrize("colors", [{}, {"red": (300, 0, 0)}, {"red": (1, 2)}, {"": (1, 2, 3)}, [("red", (1, 2, 3))]])
def test_bad_colours_are_refused(colors):
    with pytest.raises(ValueError, match="ShapeTagger"):
        ShapeTagger(colors)
    with pytest.raises(ValueError, match="ShapeTagger"):
        ColorGridFeaturizer(tag_colors=colors)
