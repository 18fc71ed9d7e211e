"""Fine-tune on (caption, image) pairs with the paper's losses: bi-encoder (be), cross-encoder (ce), or both on one
shared model (joint). The saved folder loads as MMSentenceTransformer and MMCrossEncoder (docs/training.md)."""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import get_args

from mm_sbert.backbones.offline_backbones import DEFAULT_BACKBONE
from mm_sbert.cli import common
from mm_sbert.modules.multimodal_transformer_config import HeadInput

REGIMES = ("be", "ce", "joint")
# The options train_model() takes under their own names.
MODEL_OPTIONS = ("store", "image_part", "featurizer", "grid_size", "head_input", "fusion_layer", "img_layernorm")
MODEL_OPTIONS += ("layers", "similarity_start", "cross_modal_bias", "bf16", "device", "resume")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mm_sbert.training.published_recipes import PUBLISHED_RECIPES

    # fmt: off
    add = parser.add_argument
    add("regime", choices=REGIMES, help="what to train")
    common.add_data_arguments(parser, "train on N generated synthetic scenes instead")
    add("--output-dir", "-o", required=True, help="where checkpoints and the final model go")
    add("--recipe", choices=sorted(PUBLISHED_RECIPES),
        help="the settings of a published result (benchmarks/results/); options given on the command line win")
    add("--model", default=DEFAULT_BACKBONE,
        help=f"a saved mm_sbert model to continue, or a text backbone to start from (default: {DEFAULT_BACKBONE})")
    add("--image-part", metavar="I/K", type=image_part,
        help="train on part I of K of the images only (by file name; parts share no image), to cross-fit")
    add("--features", metavar="STORE", dest="store",
        help="read the images' regions from this `mm-sbert featurize` store; a new model takes its featurizer")
    add("--featurizer", choices=("color-grid", "mobilenet-grid", "color-blob"),
        help="image featurizer of a NEW model (default: the --features store's, else color-grid)")
    add("--grid-size", type=common.positive_int, help="cells per side of a new model's color-grid / mobilenet-grid")
    add("--img-layernorm", action=argparse.BooleanOptionalAction,
        help="for a NEW model: LayerNorm after the image projection (VinVL-style; for CNN features)")
    add("--layers", type=common.positive_int, help="for a NEW model: keep only the first N layers")
    add("--tags", choices=("on", "off"),
        help="read each image's tags (`mm-sbert featurize --tags K`) beside the caption (default: a saved model's "
        "setting, else off)")
    add("--steps", type=common.positive_int, help="optimizer steps (joint: both objectives count; default: 500)")
    add("--batch-size", type=common.int_at_least(2),
        help="pairs per batch, >= 2: the losses' negatives come from the batch (default: 32)")
    add("--lr", type=common.positive_float, help="learning rate (default: the paper's for the regime)")
    add("--new-lr", type=common.positive_float,
        help="learning rate of the untrained layers (image projection, score head) (default: --lr)")
    add("--be-loss", choices=("triplet", "infonce"),
        help="bi-encoder loss (be, joint): the paper's hardest-negative triplet loss (default), or in-batch InfoNCE")
    add("--margin", type=common.non_negative_float, default=0.1, help="triplet-loss margin (be, joint)")
    add("--ce-loss", choices=("bce", "listwise"),
        help="cross-encoder loss (ce, joint): the paper's BCE (default), or listwise softmax over in-batch negatives")
    add("--ce-negatives", type=common.positive_int, help="cross-encoder negatives per positive (bce: 1, listwise: 3)")
    add("--head-input", choices=get_args(HeadInput),
        help="what the score head reads (default: [CLS]); on a saved model, a new head of this kind replaces its own")
    add("--fusion-layer", type=common.non_negative_int,
        help="for a NEW model: first layers that read text and regions apart (default: 0, single-stream)")
    add("--similarity-start", action="store_true",
        help="ce, joint from a SAVED bi-encoder: a score head that starts as its cosine, fusion nearly closed")
    add("--cross-modal-bias", type=common.finite_float, default=-4.0,
        help="with --similarity-start: the cross-modal attention bias's start (default: -4.0)")
    add("--hard-negatives", action=argparse.BooleanOptionalAction,
        help="mine the cross-encoder's negatives with the bi-encoder view in the batch (ce, joint)")
    add("--neighbour-groups", type=common.int_at_least(2), metavar="SIZE",
        help="ce, joint: cross-encoder batches of groups of SIZE look-alike images (by --model's bi-encoder)")
    add("--steps-ratio", type=steps_ratio, default="1:1",
        help="joint training: bi-encoder:cross-encoder steps per round (default: 1:1)")
    add("--save-steps", type=common.positive_int, help="checkpoint every N steps (default: at the end)")
    add("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir (same arguments)")
    add("--bf16", action="store_true",
        help="bfloat16 autocast: faster on CPUs with native bfloat16 (AMX / AVX512-BF16) and GPUs since Ampere")
    add("--device", type=common.torch_device, default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    add("--seed", type=common.non_negative_int, default=0, help="random seed")
    # fmt: on


def _two_ints(text: str, separator: str, looks_like: str) -> tuple[int, int]:
    try:
        first, second = (int(number) for number in text.split(separator))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must look like {looks_like}, got {text!r}") from None
    return first, second


def image_part(text: str) -> tuple[int, int]:
    """argparse type of ``--image-part``: ``(part, parts)`` from ``I/K``."""
    part, parts = _two_ints(text, "/", "1/2 (part/parts)")
    if parts < 2 or not 1 <= part <= parts:
        raise argparse.ArgumentTypeError(f"needs 2 or more parts and a part between 1 and that, got {text!r}")
    return part, parts


def steps_ratio(text: str) -> tuple[int, int]:
    """argparse type of ``--steps-ratio``: ``(bi-encoder, cross-encoder)`` steps per round from ``B:C``."""
    ratio = _two_ints(text, ":", "1:2 (bi-encoder:cross-encoder steps)")
    if min(ratio) < 1:
        raise argparse.ArgumentTypeError(f"needs positive steps on both sides, got {text!r}")
    return ratio


def run(args: argparse.Namespace) -> int:
    from mm_sbert.training import TrainingRecipe
    from mm_sbert.training.published_recipes import resolve_options
    from mm_sbert.training.training_run import train_model

    options, applied = resolve_options(vars(args), args.recipe, args.regime)
    vars(args).update(options)
    if args.model != DEFAULT_BACKBONE and not os.path.isdir(args.model):
        raise common.CLIError(
            f"--model '{args.model}' is neither a folder nor the offline backbone {DEFAULT_BACKBONE!r}"
        )
    if applied:
        settings = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in applied.items())
        print(f"Recipe {args.recipe} ({args.regime}): {settings}")
    with tempfile.TemporaryDirectory() as scratch:
        # The data is read and checked before any model loads: bad --data fails at once.
        corpus = common.read_caption_data(args, scratch, captions_per_image=3)
        recipe = TrainingRecipe.from_options(args.regime, vars(args))
        options = {name: getattr(args, name) for name in MODEL_OPTIONS}
        tags = None if args.tags is None else args.tags == "on"
        result = train_model(corpus, args.output_dir, recipe, args.model, **options, tags=tags, inputs=[args.data])
    trained = ", ".join(result.model[0].trained_views or []) or "none"
    # The steps the trainer took (a resumed run counts its checkpoint's), not the ones asked for.
    print(
        f"Trained a {args.regime} model on {result.pairs} pairs for {result.steps} steps (trained views: {trained}); "
        f"saved to {result.path}"
    )
    return 0
