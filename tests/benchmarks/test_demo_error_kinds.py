"""The error-kind classifier of benchmarks/demo_error_kinds.py on hand-made scenes."""

from __future__ import annotations

import pytest
from benchmark_helpers import load_benchmark

from mm_sbert.data.synthetic_scenes import Scene, SceneObject


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
    from mm_sbert.data import SyntheticScenes

    scenes = SyntheticScenes(80, captions_per_image=1, seed=3)
    kinds = []
    for family in set(scenes.families):
        members = [s for s in scenes.scenes if s.family == family]
        kinds += [bench.variant_kind(members[0], variant) for variant in members[1:]]
    # Each variant changes one detail of its family's base scene: no "other".
    assert kinds and "other" not in kinds
    assert {"colour", "size", "swap"} <= set(kinds)
