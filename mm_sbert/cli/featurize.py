"""``mm-sbert featurize``: featurize an image collection once into an on-disk feature store."""

from __future__ import annotations

import argparse

from mm_sbert.cli.common import CLIError, list_images, load_model, require_component


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "featurize",
        help="featurize images once into a feature store (region features on disk)",
        description="Run an image featurizer over image files / folders and store the region features "
        "(memory-mapped shards; an interrupted run resumes). Image ids are the file names without extension.",
    )
    parser.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--output", "-o", required=True, help="feature store folder to write")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="use this saved model's own featurizer (so the features fit the model)")
    source.add_argument(
        "--featurizer",
        choices=["color-grid", "color-blob", "mobilenet-grid"],
        default=None,
        help="a built-in featurizer (default: color-grid; color-blob: one region per coloured object on a plain "
        "background)",
    )
    parser.add_argument(
        "--grid-size",
        type=int,
        default=None,
        help="cells per side: color-grid (default: 3), or mobilenet-grid's 7 x 7 map average-pooled to this many "
        "(default: 7, no pooling; fewer regions make training and reranking faster)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per featurizer call")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="storage precision")
    parser.set_defaults(run=run)


def build_featurizer(args: argparse.Namespace):
    if args.grid_size is not None and (args.model or args.featurizer not in (None, "color-grid", "mobilenet-grid")):
        # The other featurizers have no grid to size: say so rather than ignore the flag.
        source = f"--model {args.model}" if args.model else f"--featurizer {args.featurizer}"
        raise CLIError(f"--grid-size applies to the color-grid and mobilenet-grid featurizers only, not to {source}")
    if args.grid_size is not None and args.grid_size < 1:
        raise CLIError(f"--grid-size must be >= 1, got {args.grid_size}")
    if args.model:
        featurizer = load_model(args.model)[0].featurizer
        if featurizer is None:
            raise CLIError(f"The model '{args.model}' has no image featurizer; choose one with --featurizer")
        return featurizer
    if args.featurizer == "mobilenet-grid":
        (featurizer_class,) = require_component(
            "mm_sbert.image_features", ["MobileNetV2GridFeaturizer"], "--featurizer mobilenet-grid"
        )
        try:
            return featurizer_class(grid_size=args.grid_size)
        except ValueError as error:
            raise CLIError(f"--grid-size: {error}") from error
    from mm_sbert.image_features import ColorBlobFeaturizer, ColorGridFeaturizer

    if args.featurizer == "color-blob":
        return ColorBlobFeaturizer()

    return ColorGridFeaturizer(grid_size=3 if args.grid_size is None else args.grid_size)


def run(args: argparse.Namespace) -> int:
    (feature_store,) = require_component("mm_sbert.image_features", ["FeatureStore"], "mm-sbert featurize")
    images = list_images(args.images)
    stems = [path.stem for path in images]
    if len(set(stems)) != len(stems):
        duplicate = next(stem for stem in stems if stems.count(stem) > 1)
        raise CLIError(f"Two images share the file name '{duplicate}' (ids are file names without extension)")
    featurizer = build_featurizer(args)
    store = feature_store.build(
        args.output, [str(path) for path in images], featurizer, batch_size=args.batch_size, dtype=args.dtype
    )
    failed = getattr(store, "failed", {}) or {}
    print(f"Stored region features of {len(store)} images in {args.output} ({featurizer!r})")
    if failed:
        print(f"{len(failed)} image(s) could not be read and were skipped")
        return 1
    return 0
