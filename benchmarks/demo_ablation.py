"""What makes the demo's cross-encoder catch up with its bi-encoder: one training recipe per row, same data.

Every row fine-tunes all-MiniLM-L6-v2 (cut to ``layers`` layers) + the 3x3 colour grid (or the row's ``regions``)
on generated training scenes (the row's ``train_images``: 200 for the rows that found the recipe, the demo's 1,000
for the others) with :func:`mm_sbert.demo.recipe.fine_tune` (60 bi-encoder warm-up steps, then joint
rounds) and evaluates BE, CE and Coop (k=20) on 100 held-out scenes. The baseline is the first row, measured in
the same run. Mean recall = mean of R@1/5/10 over both directions, in %.

100 held-out captions move R@1 by a point per query, more than most rows differ. ``--held-out 300
--eval-captions 5 --skip-full-ce`` scores 1,500 captions and 300 images instead (BE and Coop only: full
cross-encoding of 450,000 pairs would take an hour).

    python benchmarks/demo_ablation.py                     # every row: about an hour and a half on 2 CPU cores
    python benchmarks/demo_ablation.py --only default default_single_stream --held-out 300 --eval-captions 5 \
        --skip-full-ce
    python benchmarks/demo_ablation.py --list
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mm_sbert.demo import SyntheticScenes  # noqa: E402
from mm_sbert.demo import recipe as demo_recipe  # noqa: E402
from mm_sbert.evaluation.results_table import evaluate_modes  # noqa: E402

# The recipe the demo had before this ablation: 1 layer, mean head, BCE with random negatives in random batches.
BASELINE = {
    "train_images": 200,
    "layers": 1,
    "steps": 360,
    "module": {"head_input": "mean"},
    "training": {"learning_rate": 1e-3, "new_layer_learning_rate": 1e-2},
}
TWO_LAYERS = {"train_images": 200, "layers": 2, "training": {"learning_rate": 3e-4, "new_layer_learning_rate": 3e-3}}
# The cross-encoder on batches of whole scene families, the step every later row builds on.
FAMILY_BATCHES = {**TWO_LAYERS["training"], "family_batches": ("cross_encoder",)}
_DEFAULT_ROW = {
    "layers": None,
    "steps": None,
    "module": demo_recipe.JOINT_MODULE_KWARGS,
    "training": demo_recipe.JOINT_TRAINING,
}
_BINDING_OUTLINES = {**_DEFAULT_ROW, "families": "binding", "regions": "outlines"}
_NO_DROPOUT = {"config_kwargs": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}
# The scenes' tags ("red circle" per object, --regions tagged), without dropout.
_TAGS_NO_DROPOUT = {"regions": "tagged", "module": {**demo_recipe.JOINT_MODULE_KWARGS, **_NO_DROPOUT}}
_BINDING_TAGS = {**_BINDING_OUTLINES, **_TAGS_NO_DROPOUT}
_DETAILS_TAGS = {**_DEFAULT_ROW, **_TAGS_NO_DROPOUT}
_SEPARATE = {
    "separate": True,
    "layers": None,
    "families": demo_recipe.FAMILIES,
    "regions": demo_recipe.DEFAULT_REGIONS,
    "module": demo_recipe.MODULE_KWARGS,
    "training": demo_recipe.TRAINING,
    "head": demo_recipe.CROSS_ENCODER_HEAD,
}
ROWS: dict[str, dict] = {
    "baseline_1_layer_mean_head_bce": BASELINE,
    "2_layers_mean_head_bce_120": {**TWO_LAYERS, "steps": 120, "module": {"head_input": "mean"}},
    "+_family_batches_120": {
        **TWO_LAYERS,
        "steps": 120,
        "module": {"head_input": "mean"},
        "training": FAMILY_BATCHES,
    },
    "mean_head_bce": {
        **TWO_LAYERS,
        "steps": 360,
        "module": {"head_input": "mean"},
        "training": FAMILY_BATCHES,
    },
    "match_head_bce": {
        **TWO_LAYERS,
        "steps": 360,
        "module": {"head_input": "text_image_match"},
        "training": FAMILY_BATCHES,
    },
    "match_head_bce_mined_negatives_240": {
        **TWO_LAYERS,
        "steps": 240,
        "module": {"head_input": "text_image_match"},
        "training": {**FAMILY_BATCHES, "hard_negatives": True},
    },
    "match_head_listwise_mined_negatives_240": {
        **TWO_LAYERS,
        "steps": 240,
        "module": {"head_input": "text_image_match"},
        "training": {**FAMILY_BATCHES, "listwise": True, "negatives_per_positive": 3, "hard_negatives": True},
    },
    "default_with_one_mined_negative_240": {
        "train_images": 200,
        "layers": None,
        "steps": 240,
        "module": {**demo_recipe.JOINT_MODULE_KWARGS, "fusion_layer": 0},
        "training": {**demo_recipe.JOINT_TRAINING, "hard_negatives": 1},
    },
    # The demo's recipe before late fusion and 1,000 training scenes.
    "previous_default_200_scenes": {
        "train_images": 200,
        "layers": None,
        "steps": None,
        "module": {**demo_recipe.JOINT_MODULE_KWARGS, "fusion_layer": 0},
        "training": demo_recipe.JOINT_TRAINING,
    },
    "default_single_stream": {
        "layers": None,
        "steps": None,
        "module": {**demo_recipe.JOINT_MODULE_KWARGS, "fusion_layer": 0},
        "training": demo_recipe.JOINT_TRAINING,
    },
    # The demo's defaults.
    "default": _DEFAULT_ROW,
    # Three times the training: does the cross-encoder overtake the bi-encoder given more steps?
    "default_1080_rounds": {
        "layers": None,
        "steps": 1080,
        "module": demo_recipe.JOINT_MODULE_KWARGS,
        "training": demo_recipe.JOINT_TRAINING,
    },
    # One region per object (ColorBlobFeaturizer, detector-style) instead of one per grid cell.
    "default_object_regions": {
        "layers": None,
        "steps": None,
        "regions": "objects",
        "module": demo_recipe.JOINT_MODULE_KWARGS,
        "training": demo_recipe.JOINT_TRAINING,
    },
    # The same architecture from random weights: is MiniLM's head start for the bi-encoder what keeps the CE level?
    "default_random_weights": {
        "layers": None,
        "steps": None,
        "random_weights": True,
        "module": demo_recipe.JOINT_MODULE_KWARGS,
        "training": demo_recipe.JOINT_TRAINING,
    },
    # Issue 28's binding world (families="binding": the variants of a scene exchange colours, shapes or slots between
    # its objects; every caption of a family uses the same words). benchmarks/results/demo_binding.md.
    "binding_default": {**_DEFAULT_ROW, "families": "binding"},
    "binding_single_stream": {
        **_DEFAULT_ROW,
        "families": "binding",
        "module": {**demo_recipe.JOINT_MODULE_KWARGS, "fusion_layer": 0},
    },
    "binding_object_regions": {**_DEFAULT_ROW, "families": "binding", "regions": "objects"},
    # ALBEF's layout: the bi-encoder is MiniLM's first 2 layers; pairs go on through a third that fuses.
    "binding_pair_layer": {
        **_DEFAULT_ROW,
        "families": "binding",
        "layers": 3,
        "module": {**demo_recipe.JOINT_MODULE_KWARGS, "fusion_layer": 2, "pair_layers": 1},
    },
    # This session's binding levers (benchmarks/results/demo_binding.md, second table): each cell's outline, then one
    # lever at a time on top of it.
    "binding_outlines": _BINDING_OUTLINES,
    "binding_outlines_cross_modal_bias_2": {
        **_BINDING_OUTLINES,
        "module": {**demo_recipe.JOINT_MODULE_KWARGS, "cross_modal_bias": 2.0},
    },
    "binding_outlines_cross_modal_bias_3.5": {
        **_BINDING_OUTLINES,
        "module": {**demo_recipe.JOINT_MODULE_KWARGS, "cross_modal_bias": 3.5},
    },
    "binding_outlines_3_mined_negatives": {
        **_BINDING_OUTLINES,
        "training": {**demo_recipe.JOINT_TRAINING, "hard_negatives": 3},
    },
    "binding_outlines_2_mined_negatives": {
        **_BINDING_OUTLINES,
        "training": {**demo_recipe.JOINT_TRAINING, "hard_negatives": 2},
    },
    "binding_outlines_similarity_start_2_mined": {
        **_BINDING_OUTLINES,
        "training": {**demo_recipe.JOINT_TRAINING, "hard_negatives": 2, "similarity_start": True},
    },
    "binding_outlines_3_layers_2_mined": {
        **_BINDING_OUTLINES,
        "layers": 3,
        "training": {**demo_recipe.JOINT_TRAINING, "hard_negatives": 2},
    },
    "binding_outlines_no_dropout": {**_BINDING_OUTLINES, "module": {**demo_recipe.JOINT_MODULE_KWARGS, **_NO_DROPOUT}},
    "binding_outlines_no_dropout_3_layers": {
        **_BINDING_OUTLINES,
        "layers": 3,
        "module": {**demo_recipe.JOINT_MODULE_KWARGS, **_NO_DROPOUT},
    },
    "binding_tags_no_dropout": _BINDING_TAGS,
    "binding_tags_no_dropout_random_batches": {
        **_BINDING_TAGS,
        "training": {**demo_recipe.JOINT_TRAINING, "family_batches": ()},
    },
    "details_tags_no_dropout": _DETAILS_TAGS,
    "binding_tags_no_dropout_1_mined": {
        **_BINDING_TAGS,
        "training": {**demo_recipe.JOINT_TRAINING, "hard_negatives": 1},
    },
    "binding_tags_no_dropout_2_mined": {
        **_BINDING_TAGS,
        "training": {**demo_recipe.JOINT_TRAINING, "hard_negatives": 2},
    },
    "details_tags_no_dropout_2_mined": {
        **_DETAILS_TAGS,
        "training": {**demo_recipe.JOINT_TRAINING, "hard_negatives": 2},
    },
    "binding_outlines_no_dropout_2_ce_steps_240": {
        **_BINDING_OUTLINES,
        "steps": 240,
        "module": {**demo_recipe.JOINT_MODULE_KWARGS, **_NO_DROPOUT},
        "training": {**demo_recipe.JOINT_TRAINING, "cross_encoder_steps_per_round": 2},
    },
    # The separate setting (today's demo): a bi-encoder trained alone, then a cross-encoder started from it
    # (mm_sbert.demo.recipe.train_separate); "head" is the cross-encoder's.
    "separate_demo_recipe": _SEPARATE,
    "separate_text_image_match_head": {**_SEPARATE, "head": "text_image_match"},
    "separate_tags_without_places": {**_SEPARATE, "regions": "tagged"},
    "separate_families_of_8": {**_SEPARATE, "family_size": 8},
}
# The rows were measured on 100 held-out scenes, the demo's count until it moved to 200 (a smaller Coop / CE time).
ABLATION_HELD_OUT = 100


def mean_recall(metrics: dict[str, float], mode: str) -> float:
    return sum(metrics[f"{mode}_{d}_r@{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10)) / 6


def run_row(
    name: str,
    row: dict,
    seed: int,
    held_out_images: int | None = None,
    eval_captions: int = 1,
    full_cross_encoder: bool = True,
) -> dict[str, float]:
    torch.manual_seed(seed)
    families = {"families": row.get("families", "details"), "family_size": row.get("family_size", 4)}
    train = SyntheticScenes(
        row.get("train_images") or demo_recipe.DEFAULTS["train_images"], captions_per_image=5, seed=seed, **families
    )
    held_out = SyntheticScenes(
        held_out_images or ABLATION_HELD_OUT,
        captions_per_image=eval_captions,
        seed=seed + 1,
        exclude=train.signatures,
        **families,
    )
    layers = row["layers"] or demo_recipe.DEFAULTS["layers"]
    featurizer = demo_recipe.regions_featurizer(row.get("regions", "grid"), train.image_size)
    model = demo_recipe.build_demo_model(
        train.image_size, layers, featurizer, **{"head_pooler": True, **row["module"]}
    )
    if row.get("random_weights"):
        backbone = model[0].backbone
        torch.manual_seed(seed)
        # A freshly built model of the same config: the transformers initialisation, MiniLM's weights dropped.
        backbone.load_state_dict(type(backbone)(backbone.config).state_dict())
    regions = model[0].featurizer.featurize(held_out.images)
    start = time.perf_counter()
    cross_encoder = None
    if row.get("separate"):
        cross_encoder = _train_separate(model, train, row, seed)
    else:
        demo_recipe.fine_tune(
            model,
            train,
            steps=row["steps"] or demo_recipe.JOINT_SIZES["steps"],
            batch_size=demo_recipe.DEFAULTS["batch_size"],
            seed=seed,
            warmup_steps=demo_recipe.JOINT_SIZES["warmup_steps"],
            show_progress_bar=False,
            **{"cross_encoder_steps_per_round": 1, **row["training"]},
        )
    train_seconds = time.perf_counter() - start
    modes = ("be", "ce", "coop") if full_cross_encoder else ("be", "coop")
    metrics = evaluate_modes(
        model,
        regions,
        held_out.captions,
        held_out.caption_image_ids,
        top_k=20,
        modes=modes,
        cross_encoder=cross_encoder,
    )
    result = {mode: mean_recall(metrics, mode) for mode in modes}
    result.update({f"{mode}_t2i_r@1": metrics[f"{mode}_t2i_r@1"] for mode in modes})
    result["train_seconds"] = train_seconds
    return result


def _train_separate(model, train, row: dict, seed: int):
    """The demo's separate recipe on ``model``: the bi-encoder alone, then a cross-encoder (returned, the host's
    class) started from it with the row's ``head``."""
    from mm_sbert.models.views import to_cross_encoder

    sizes = demo_recipe.DEFAULTS
    cross_encoder, _ = demo_recipe.train_separate(
        model,
        train,
        sizes["bi_encoder_steps"],
        sizes["cross_encoder_steps"],
        sizes["batch_size"],
        seed,
        head_input=row["head"],
        training=row["training"],
        show_progress_bar=False,
    )
    return to_cross_encoder(cross_encoder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(ROWS), help="run these rows (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--list", action="store_true", help="print the rows' settings and exit")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--held-out", type=int, default=None, help=f"held-out scenes (default: {ABLATION_HELD_OUT})")
    parser.add_argument("--eval-captions", type=int, default=1, help="captions per held-out scene (default: 1)")
    parser.add_argument(
        "--skip-full-ce", action="store_true", help="score BE and Coop only (CE columns then show Coop's numbers)"
    )
    args = parser.parse_args()
    if args.list:
        for name, row in ROWS.items():
            print(name, json.dumps(row, default=list))
        return
    torch.set_num_threads(args.threads)
    names = list(ROWS) if not args.only else [name for name in ROWS if name in args.only]
    print(f"# demo ablation: seed {args.seed}, {args.threads} threads, {platform.processor() or platform.machine()}")
    header = f"{'recipe':<42}{'BE':>7}{'CE':>7}{'Coop':>7}{'CE-BE':>7}{'BE R@1':>8}{'CE R@1':>8}{'train s':>9}"
    print(header)
    print("-" * len(header))
    results = {}
    for name in names:
        result = run_row(
            name, ROWS[name], args.seed, args.held_out, args.eval_captions, full_cross_encoder=not args.skip_full_ce
        )
        results[name] = result
        ce = "ce" if "ce" in result else "coop"
        print(
            f"{name:<42}{result['be']:>7.1f}{result[ce]:>7.1f}{result['coop']:>7.1f}"
            f"{result[ce] - result['be']:>+7.1f}{result['be_t2i_r@1']:>8.1f}{result[f'{ce}_t2i_r@1']:>8.1f}"
            f"{result['train_seconds']:>9.0f}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
