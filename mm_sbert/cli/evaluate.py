"""``mm-sbert evaluate``: recall@1/5/10 of BE, Coop and (optionally) full CE retrieval, with timings."""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from mm_sbert.cli.common import (
    CLIError,
    add_score_arguments,
    load_model,
    read_caption_data,
    stored_regions,
)

MODES = ("be", "ce", "coop")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="image-text retrieval recall of BE / CE / Coop, both directions, with timings",
        description="Evaluate a saved model on (caption, image) pairs as in the paper: image retrieval (t2i, hit = "
        "the caption's image in the top k) and text retrieval (i2t, hit = any of the image's captions), R@1/5/10, "
        "for the bi-encoder (be), full cross-encoding (ce; every pair: small sets only) and Coop (coop).",
    )
    parser.add_argument("--model", "-m", required=True, help="saved mm_sbert model folder")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="CSV / TSV / JSON-lines file with columns caption, image (paths relative to it)")
    data.add_argument("--synthetic", type=int, metavar="N", help="evaluate on N generated held-out scenes")
    parser.add_argument(
        "--features",
        metavar="STORE",
        help="read the images' regions from this feature store (`mm-sbert featurize`; matched by file name) instead "
        "of featurizing them",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of --synthetic (default: 1)")
    parser.add_argument("--modes", default="be,coop", help="comma-separated subset of be, ce, coop (default: be,coop)")
    parser.add_argument("--top-k", type=int, default=20, help="BE candidates the CE reranks in coop (paper: 20)")
    add_score_arguments(parser, "the top k")
    parser.add_argument("--batch-size", type=int, default=64, help="encoder batch size")
    parser.add_argument("--output", default=None, help="also write the metrics to this JSON file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mm_sbert.evaluation.results_table import evaluate_modes, format_table

    modes = tuple(mode.strip() for mode in args.modes.split(",") if mode.strip())
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise CLIError(f"--modes got {args.modes!r}; expected a comma-separated subset of {', '.join(MODES)}")
    if args.top_k < 1:
        raise CLIError(f"--top-k must be >= 1, got {args.top_k}")
    model = load_model(args.model)
    with tempfile.TemporaryDirectory() as scratch:
        images, captions, caption_image_ids = read_caption_data(
            args.data, args.synthetic, scratch, captions_per_image=1, seed=args.seed
        )
        featurizer = model[0].featurizer
        if args.features is not None:
            images = stored_regions(args.features, images, featurizer)
        elif featurizer is not None:
            # Featurize each image once; CE pairs would otherwise featurize it again for every caption.
            from mm_sbert.image_features import load_image

            images = featurizer.featurize([load_image(path) for path in images])
        metrics = evaluate_modes(
            model,
            images,
            captions,
            caption_image_ids,
            top_k=args.top_k,
            modes=modes,
            batch_size=args.batch_size,
            score=args.score,
            lam=args.lam,
        )
    print(f"{len(set(caption_image_ids))} images, {len(captions)} captions (recall in %)")
    print(format_table(metrics, args.top_k))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)
        print(f"Wrote {args.output}")
    return 0
