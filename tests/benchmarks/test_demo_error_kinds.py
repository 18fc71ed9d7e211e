"""The error-kind classifier of benchmarks/demo_error_kinds.py on hand-made scenes."""

from __future__ import annotations

import re

import pytest
from benchmark_helpers import load_benchmark

from mm_sbert.demo import SyntheticScenes
from mm_sbert.demo.synthetic_scenes import Scene, SceneObject


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("demo_error_kinds")


def scene(*objects):
    return Scene(tuple(SceneObject(*obj) for obj in objects), family=0)


BASE = scene(("circle", "red", "large", "left"), ("star", "blue", "small", "right"))


@pytest.mark.parametrize(
    ("other", "kind"),
    [
        (scene(("circle", "green", "large", "left"), ("star", "blue", "small", "right")), "colour"),
        (scene(("circle", "red", "small", "left"), ("star", "blue", "small", "right")), "size"),
        (scene(("circle", "red", "large", "right"), ("star", "blue", "small", "left")), "swap"),
        (scene(("circle", "red", "large", "top"), ("star", "blue", "small", "right")), "move"),
        (
            scene(
                *[(obj.shape, obj.color, obj.size, obj.slot) for obj in BASE.objects], ("star", "red", "large", "top")
            ),
            "count",
        ),
        (scene(("square", "green", "small", "left"), ("star", "blue", "small", "right")), "other"),
        (scene(("circle", "green", "large", "left"), ("star", "red", "small", "right")), "other"),
    ],
)
def test_variant_kind_names_the_one_detail_that_differs(bench, other, kind):
    assert bench.variant_kind(BASE, other) == kind


def test_generated_variants_are_classified_without_leftovers(bench):
    scenes = SyntheticScenes(80, captions_per_image=1, seed=3)
    kinds = []
    for family in set(scenes.families):
        members = [s for s in scenes.scenes if s.family == family]
        kinds += [bench.variant_kind(members[0], variant) for variant in members[1:]]
    # Each variant changes one detail of its family's base scene: no "other".
    assert kinds and "other" not in kinds
    assert {"colour", "size", "swap"} <= set(kinds)


@pytest.mark.parametrize(
    ("detail", "first", "second"),
    [
        ("side", ("circle", "red", "large", "right"), ("star", "blue", "small", "left")),
        ("colour", ("circle", "blue", "large", "left"), ("star", "red", "small", "right")),
        ("shape", ("star", "red", "large", "left"), ("circle", "blue", "small", "right")),
        ("size", ("circle", "red", "small", "left"), ("star", "blue", "large", "right")),
    ],
)
def test_exchange_swaps_one_detail_between_two_objects_and_keeps_the_words(bench, detail, first, second):
    third = SceneObject("square", "green", "small", "top")
    objects = (*BASE.objects, third)
    exchanged = bench.exchange(objects, detail, 0, 1)
    assert exchanged == (SceneObject(*first), SceneObject(*second), third)
    # The same words in another arrangement: only what binds to what tells the two captions apart.
    before, after = SyntheticScenes.describe(objects), SyntheticScenes.describe(exchanged)
    assert before != after and sorted(re.findall(r"\w+", before)) == sorted(re.findall(r"\w+", after))


def test_exchange_of_a_shared_detail_is_none(bench):
    objects = (SceneObject("circle", "red", "large", "left"), SceneObject("star", "red", "small", "right"))
    assert bench.exchange(objects, "colour", 0, 1) is None
    assert bench.exchange(objects, "shape", 0, 1) == (
        SceneObject("star", "red", "large", "left"),
        SceneObject("circle", "red", "small", "right"),
    )
