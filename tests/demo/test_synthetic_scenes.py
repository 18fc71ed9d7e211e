from __future__ import annotations

import re
from itertools import permutations

import numpy as np
import pytest

from mm_sbert.demo.synthetic_scenes import COLORS, SLOTS, SceneObject, SyntheticScenes

_OBJECT = re.compile(r"(small|large) (red|green|blue|yellow|purple|orange) (circle|square|triangle|star)")


def test_same_seed_same_set_different_seed_different_set():
    first, second = (
        SyntheticScenes(24, captions_per_image=3, seed=7),
        SyntheticScenes(24, captions_per_image=3, seed=7),
    )
    assert first.captions == second.captions
    assert first.caption_image_ids == second.caption_image_ids
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first.images, second.images))
    assert SyntheticScenes(24, captions_per_image=3, seed=8).captions != first.captions


def test_sizes_and_ids():
    scenes = SyntheticScenes(10, captions_per_image=4, seed=0, image_size=48)
    assert len(scenes.images) == 10 and all(image.size == (48, 48) for image in scenes.images)
    assert len(scenes.captions) == 40
    assert scenes.caption_image_ids == [i for i in range(10) for _ in range(4)]
    assert len({scene.signature for scene in scenes.scenes}) == 10, "scenes must be distinct"


def test_pixels_show_what_the_captions_say():
    scenes = SyntheticScenes(40, captions_per_image=5, seed=3)
    for scene, image in zip(scenes.scenes, scenes.images):
        pixels = np.asarray(image)
        occupied = {obj.slot for obj in scene.objects}
        for obj in scene.objects:
            x, y = scenes.slot_center(obj.slot)
            assert tuple(pixels[y, x]) == COLORS[obj.color]
        for slot in set(SLOTS) - occupied:
            x, y = scenes.slot_center(slot)
            assert tuple(pixels[y, x]) == (245, 245, 240), f"slot {slot} should be empty"
        # Every caption names every object with its colour, shape and size, and the number of objects is right.
        for caption in scene.captions:
            mentioned = {(m.group(1), m.group(2), m.group(3)) for m in _OBJECT.finditer(caption)}
            mentioned |= {
                (size, color, shape)
                for size, shape, color in re.findall(
                    r"(small|large) (circle|square|triangle|star) in (red|green|blue|yellow|purple|orange)", caption
                )
            }
            assert mentioned == {(obj.size, obj.color, obj.shape) for obj in scene.objects}, caption


def test_large_objects_cover_more_pixels_than_small_ones():
    scenes = SyntheticScenes(60, seed=1)
    areas = {"small": [], "large": []}
    for scene, image in zip(scenes.scenes, scenes.images):
        pixels = np.asarray(image)
        for obj in scene.objects:
            x, y = scenes.slot_center(obj.slot)
            window = pixels[max(0, y - 12) : y + 13, max(0, x - 12) : x + 13]
            areas[obj.size].append(int((window == COLORS[obj.color]).all(-1).sum()))
    assert max(areas["small"]) < min(areas["large"])


def test_families_share_gist_and_differ_in_one_detail():
    scenes = SyntheticScenes(80, captions_per_image=1, seed=0, family_size=4)
    families: dict[int, list] = {}
    for scene in scenes.scenes:
        families.setdefault(scene.family, []).append(scene)
    assert len(families) == 20
    for members in families.values():
        assert len({scene.gist for scene in members}) == 1
        base = set(members[0].objects)
        for variant in members[1:]:
            changed = base ^ set(variant.objects)
            # one object recoloured / resized / moved / added / removed, or two objects swapping slots
            assert 1 <= len(changed) <= 4 and variant.signature != members[0].signature


def test_dataset_has_agreed_columns(tmp_path):
    scenes = SyntheticScenes(6, captions_per_image=2, seed=0)
    dataset = scenes.to_dataset()
    assert dataset.column_names == ["caption", "image", "label"]
    assert dataset["label"] == scenes.caption_image_ids
    assert np.array_equal(np.asarray(dataset[3]["image"].convert("RGB")), np.asarray(scenes.images[1]))
    paths = scenes.save_images(str(tmp_path))
    by_path = scenes.to_dataset(paths)
    assert by_path[5]["image"] == paths[2] and by_path[5]["caption"] == scenes.captions[5]


@pytest.mark.parametrize(
    "kwargs", [{"num_images": 0}, {"num_images": 3, "captions_per_image": 0}, {"num_images": 3, "image_size": 8}]
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="SyntheticScenes needs"):
        SyntheticScenes(**kwargs)


def test_exclude_keeps_a_held_out_set_disjoint():
    train = SyntheticScenes(200, captions_per_image=1, seed=0)
    held_out = SyntheticScenes(200, captions_per_image=1, seed=0, exclude=train.signatures)
    assert not set(train.signatures) & set(held_out.signatures)
    # The same seed without exclude reproduces the training scenes, so the exclusion is what made them disjoint.
    assert SyntheticScenes(200, captions_per_image=1, seed=0).signatures == train.signatures


def test_describe_names_the_objects_as_the_generator_does_and_binds_each_detail_to_its_object():
    scenes = SyntheticScenes(12, captions_per_image=5, seed=4)
    wordings = {
        SyntheticScenes.describe(order, t)
        for scene in scenes.scenes
        for order in permutations(scene.objects)
        for t in range(5)
    }
    # Every generated caption is one of describe's wordings of its scene.
    assert set(scenes.captions) <= wordings
    red = SceneObject("circle", "red", "large", "left")
    blue = SceneObject("star", "blue", "small", "top")
    assert SyntheticScenes.describe([red, blue]) == "a large red circle on the left and a small blue star at the top"
    swapped = [SceneObject("circle", "red", "large", "top"), SceneObject("star", "blue", "small", "left")]
    assert SyntheticScenes.describe(swapped) == "a large red circle at the top and a small blue star on the left"
    with pytest.raises(ValueError, match="template must be between 0 and 4"):
        SyntheticScenes.describe([red], template=5)
    with pytest.raises(ValueError, match="1-4 objects"):
        SyntheticScenes.describe([])


def test_binding_families_share_every_word_and_differ_in_which_attribute_belongs_to_which_object():
    scenes = SyntheticScenes(80, captions_per_image=1, seed=0, family_size=4, families="binding")
    families: dict[int, list] = {}
    for scene in scenes.scenes:
        families.setdefault(scene.family, []).append(scene)
    assert len(families) == 20 and len({scene.signature for scene in scenes.scenes}) == 80
    kinds = set()
    for members in families.values():
        base = members[0]
        assert len({o.shape for o in base.objects}) == len({o.color for o in base.objects}) == len(base.objects)
        for variant in members[1:]:
            # The same colours, shapes, sizes and slots: one caption's words describe every member ...
            for attribute in ("color", "shape", "size", "slot"):
                assert sorted(getattr(o, attribute) for o in variant.objects) == sorted(
                    getattr(o, attribute) for o in base.objects
                )
            # ... and two objects exchanged one attribute (a whole object when they exchanged slots).
            changed = [(a, b) for a, b in zip(base.objects, variant.objects) if a != b]
            assert len(changed) == 2
            (a, b), (c, d) = changed
            if (a.color, c.color) == (d.color, b.color) and a.shape == b.shape:
                kinds.add("colour")
            elif (a.shape, c.shape) == (d.shape, b.shape) and a.color == b.color:
                kinds.add("shape")
            else:
                assert (a.slot, c.slot) == (d.slot, b.slot) and (a.shape, a.color) == (b.shape, b.color)
                kinds.add("slot")
    assert kinds == {"colour", "shape", "slot"}
    held_out = SyntheticScenes(40, seed=1, exclude=scenes.signatures, families="binding")
    assert not set(held_out.signatures) & set(scenes.signatures)


def test_unknown_family_kind_is_refused():
    with pytest.raises(ValueError, match="families in \\('details', 'binding'\\), got 'colours'"):
        SyntheticScenes(4, families="colours")


def test_a_seed_draws_the_same_details_set_as_before_binding_families_existed():
    # Values drawn by the release before `families=` existed: published demo numbers and the CLI tests' tiny sets
    # rest on them, so drawing the random stream in another order is a regression, not a refactor.
    scenes = SyntheticScenes(200, captions_per_image=3, seed=0)
    assert scenes.captions[0] == "a large purple triangle at the bottom and a large blue star on the left"
    assert scenes.captions[-1] == "a small orange square on the left and a small orange square at the bottom"
