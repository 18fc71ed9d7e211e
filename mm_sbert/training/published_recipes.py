"""The named training recipes behind the published result tables: one name, the same settings everywhere.

``mm-sbert train be --recipe flickr8k`` applies them, ``benchmarks/flickr8k_train.sh`` runs that command and
docs/training.md quotes it, so the numbers in ``benchmarks/results/flickr8k.md`` are reproduced by the command the
docs show. Each entry maps a regime (``be``, ``ce``, ``joint``) to ``mm-sbert train`` options (their argparse names);
options given on the command line win over the recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PUBLISHED_RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    # benchmarks/results/flickr8k.md: all-MiniLM-L6-v2 + a MobileNetV2 3x3 grid store (`mm-sbert featurize
    # --featurizer mobilenet-grid --grid-size 3`), trained on the 6,000 training photos.
    "flickr8k": {
        # The bi-encoder: in-batch InfoNCE both ways; image LayerNorm; a text-image-match head (trained later by
        # the cross-encoder) over late fusion from layer 3, so the first 3 layers read a caption as MiniLM does.
        "be": {
            "be_loss": "infonce",
            "img_layernorm": True,
            "head_input": "text_image_match",
            "fusion_layer": 3,
            "lr": 5e-5,
            "new_lr": 1e-3,
            "steps": 800,
            "batch_size": 128,
        },
        # The cross-encoder from the trained bi-encoder: lists of the positive + 3 negatives mined by the
        # bi-encoder in the batch (32 lists cost about what 128 bi-encoder pairs do).
        "ce": {
            "ce_loss": "listwise",
            "hard_negatives": True,
            "lr": 5e-5,
            "new_lr": 1e-3,
            "steps": 400,
            "batch_size": 32,
        },
        # The joint model from the trained bi-encoder: both objectives alternating on the shared weights.
        "joint": {
            "be_loss": "infonce",
            "ce_loss": "listwise",
            "hard_negatives": True,
            "lr": 3e-5,
            "new_lr": 1e-3,
            "steps": 600,
            "batch_size": 32,
        },
    },
}


def recipe_options(name: str, regime: str) -> dict[str, Any]:
    """The ``mm-sbert train`` options of recipe ``name`` for ``regime`` (``be``, ``ce``, ``joint``).

    Raises:
        ValueError: an unknown recipe name.
    """
    if name not in PUBLISHED_RECIPES:
        raise ValueError(f"Unknown recipe {name!r}; known: {sorted(PUBLISHED_RECIPES)}")
    return dict(PUBLISHED_RECIPES[name].get(regime, {}))


# The defaults of the options a recipe may set; a recipe overrides them, options given explicitly override both.
OPTION_DEFAULTS: dict[str, Any] = {
    "steps": 500,
    "batch_size": 32,
    "lr": None,
    "new_lr": None,
    "be_loss": "triplet",
    "ce_loss": "bce",
    "img_layernorm": False,
    "head_input": None,
    "fusion_layer": 0,
    "hard_negatives": False,
}


def resolve_options(
    given: Mapping[str, Any], recipe: str | None, regime: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(options, applied)``: every option of :data:`OPTION_DEFAULTS`, taken from ``given`` where it is set (not
    ``None``), else from recipe ``recipe`` for ``regime`` (if any), else the default; ``applied`` holds the options
    the recipe set.

    Raises:
        ValueError: an unknown recipe name.
    """
    from_recipe = recipe_options(recipe, regime) if recipe else {}
    options, applied = {}, {}
    for name, default in OPTION_DEFAULTS.items():
        if given.get(name) is not None:
            options[name] = given[name]
        elif name in from_recipe:
            options[name] = applied[name] = from_recipe[name]
        else:
            options[name] = default
    return options, applied
