"""Featurize image files / folders once into a feature store (image ids: file names without extension). Ctrl-C keeps
the finished images (exit 130) and a rerun resumes; unreadable images are skipped and named (exit 1); an existing
store made with other settings, or damaged, exits 2."""

from __future__ import annotations

import argparse
import sys

from mm_sbert.cli.common import CLIError, load_model, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # fmt: off
    add = parser.add_argument
    add("images", nargs="+", help="image files or folders (searched recursively)")
    add("--output", "-o", required=True, help="feature store folder to write")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="use this saved model's own featurizer (so the features fit the model)")
    source.add_argument("--featurizer", choices=["color-grid", "color-blob", "mobilenet-grid", "efficientnet-grid"],
        help="a built-in featurizer (default: color-grid; the ImageNet CNN grids: mobilenet-grid 7 x 7, "
        "efficientnet-grid 9 x 9, stronger and slower; see docs/images.md)")
    add("--grid-size", type=positive_int,
        help="cells per side: color-grid's (default: 3), or a CNN grid's map pooled to this many (default: none)")
    add("--tags", type=positive_int, metavar="K",
        help="a CNN grid: also store each image's K most probable ImageNet classes as tags (`train --tags on`)")
    add("--batch-size", type=positive_int, default=32, help="images per featurizer call")
    add("--shard-size", type=positive_int, default=1024,
        help="images per shard file (default: 1024); finished shards survive even a kill -9")
    add("--dtype", choices=["float32", "float16"], default="float32", help="storage precision")
    add("--processes", type=positive_int, default=1,
        help="featurize in this many worker processes, sharing the threads (same store as one process)")
    # fmt: on


def build_featurizer(args: argparse.Namespace):
    """The featurizer of ``--model`` (its own) or of ``--featurizer`` / ``--grid-size`` / ``--tags``."""
    from mm_sbert.image_features.featurizer_names import GRID_FEATURIZERS, TAGGING_FEATURIZERS, featurizer_from_name

    source = f"--model {args.model}" if args.model else f"--featurizer {args.featurizer}"
    if args.tags is not None and (args.model or args.featurizer not in TAGGING_FEATURIZERS):
        source = f"{source} (its featurizer keeps its own settings)" if args.model else "this featurizer"
        raise CLIError(
            f"--tags needs --featurizer mobilenet-grid or efficientnet-grid (an ImageNet classifier), not {source}"
        )
    if args.grid_size is not None and (args.model or args.featurizer not in (None, *GRID_FEATURIZERS)):
        # The other featurizers have no grid to size: say so rather than ignore the flag.
        raise CLIError(
            "--grid-size applies to the color-grid and mobilenet-grid featurizers only (efficientnet-grid too), "
            f"not to {source}"
        )
    if not args.model:
        try:
            return featurizer_from_name(args.featurizer or "color-grid", args.grid_size, num_tags=args.tags or 0)
        except (ValueError, ImportError, FileNotFoundError) as error:
            raise CLIError(f"--featurizer {args.featurizer}: {error}") from error
    featurizer = load_model(args.model)[0].featurizer
    if featurizer is None:
        raise CLIError(f"The model '{args.model}' has no image featurizer; choose one with --featurizer")
    return featurizer


def run(args: argparse.Namespace) -> int:
    from mm_sbert.data.image_files import featurize_files

    featurizer = build_featurizer(args)
    options = {
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "dtype": args.dtype,
        "processes": args.processes,
    }
    try:
        # The failures are listed below, one line per image, instead of the library's summary warning.
        store = featurize_files(
            args.images, args.output, featurizer, **options, inputs=[args.model], warn_failures=False
        )
    except KeyboardInterrupt:
        rest = "run the same command again to featurize the rest"
        print(f"mm-sbert featurize: the images finished so far are stored in {args.output}; {rest}", file=sys.stderr)
        raise
    print(f"Stored region features of {len(store)} images in {args.output} ({featurizer!r})")
    if store.failed:
        print(f"{len(store.failed)} image(s) could not be read and were skipped:", file=sys.stderr)
        for reason in store.failed.values():
            print(f"  {reason}", file=sys.stderr)
        return 1
    return 0
