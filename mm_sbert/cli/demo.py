"""Fine-tune a bi-encoder and a cross-encoder started from it (all-MiniLM-L6-v2, shipped offline) on generated scenes
of look-alike coloured shapes and print recall@1/5/10 and time of BE, CE and Coop on held-out scenes, with a plot
(about 9 minutes on 2 cores)."""

from __future__ import annotations

import argparse

from mm_sbert.cli.common import CLIError, positive_int
from mm_sbert.demo.recipe import DEFAULT_REGIONS, DEFAULTS, FAMILIES, REGIONS
from mm_sbert.demo.synthetic_scenes import FAMILY_KINDS

# The demo's sizes and their least values (in-batch negatives need two images; MiniLM has 6 layers).
MINIMUMS = {
    "train_images": 2,
    "eval_images": 2,
    "bi_encoder_steps": 1,
    "cross_encoder_steps": 1,
    "batch_size": 2,
    "layers": 1,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # fmt: off
    add = parser.add_argument
    add("--output-dir", "-o", default="mm_sbert_demo", help="where model, plot and results go")
    add("--seed", type=int, default=0, help="seed of data generation and training (default: 0)")
    add("--train-images", type=int, help=f"training scenes ({DEFAULTS['train_images']})")
    add("--eval-images", type=int, help=f"held-out scenes ({DEFAULTS['eval_images']})")
    add("--bi-encoder-steps", type=int, help=f"bi-encoder training steps ({DEFAULTS['bi_encoder_steps']})")
    add("--cross-encoder-steps", type=int,
        help=f"cross-encoder training steps, from the trained bi-encoder ({DEFAULTS['cross_encoder_steps']})")
    add("--batch-size", type=int, help=f"(caption, image) pairs per batch ({DEFAULTS['batch_size']})")
    add("--layers", type=int, help=f"transformer layers of MiniLM kept ({DEFAULTS['layers']} of 6)")
    add("--regions", choices=sorted(REGIONS), default=DEFAULT_REGIONS,
        help="image regions: " + "; ".join(f"'{name}': {what}" for name, what in REGIONS.items())
        + f" (default: {DEFAULT_REGIONS})")
    add("--families", choices=FAMILY_KINDS, default=FAMILIES,
        help=f"what tells a family's scenes apart: 'details' (one detail each) or 'binding' (the same words, another "
        f"binding of colours, shapes and slots to objects) (default: {FAMILIES})")
    add("--top-k", type=positive_int, default=20, help="BE candidates the CE reranks in Coop (paper: 20)")
    add("--no-save-model", action="store_true", help="do not save the fine-tuned models")
    add("--quick", action="store_true", help="a seconds-long smoke run on tiny data (numbers are meaningless)")
    # fmt: on


def run(args: argparse.Namespace) -> int:
    from mm_sbert.demo import demo_settings, run_demo

    settings = demo_settings(args.quick, **{name: getattr(args, name) for name in MINIMUMS})
    for name, minimum in MINIMUMS.items():
        if settings[name] < minimum:
            raise CLIError(f"--{name.replace('_', '-')} must be >= {minimum}, got {settings[name]}")
    if settings["layers"] > 6:
        raise CLIError(f"--layers must be between 1 and 6, got {settings['layers']}")
    save_model = not args.no_save_model
    run_demo(args.output_dir, settings, args.seed, args.regions, args.top_k, save_model, families=args.families)
    return 0
