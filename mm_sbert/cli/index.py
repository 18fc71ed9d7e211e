"""Encode the images once with the model's bi-encoder into an index folder for `mm-sbert search`, which records the
model (search refuses another), the image folder and the --features store. A rebuild replaces the folder only once
complete. Exit code 2: a missing or unreadable image (named), or an output that is not an index of mm-sbert."""

from __future__ import annotations

import argparse
import sys

from mm_sbert.cli.common import CLIError, input_errors, load_model, positive_int, require_package

# mm_sbert.retrieval.PRECISIONS, spelled out so `mm-sbert --help` imports no torch.
PRECISION_CHOICES = ["float32", "int8", "binary", "hnsw", "ivf"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # fmt: off
    add = parser.add_argument
    add("images", nargs="+", help="image files or folders (searched recursively)")
    add("--model", "-m", required=True, help="saved mm_sbert model folder")
    add("--output", "-o", required=True, help="index folder to write")
    add("--batch-size", type=positive_int, default=32, help="images per bi-encoder batch")
    add("--features", metavar="STORE",
        help="read the images' regions from this `mm-sbert featurize` store; search then reranks from it too")
    add("--precision", choices=PRECISION_CHOICES, default="float32",
        help="local search: exact float32 (default), or int8 / binary codes or FAISS hnsw / ivf, rescored in float32")
    add("--backend", choices=["local", "milvus"], default="local",
        help="where the embeddings live: an index folder (default) or a Milvus collection")
    add("--uri",
        help="--backend milvus: a milvus-lite .db file or a server URI (default: milvus.db in the output folder)")
    add("--collection", default="mm_sbert", help="Milvus collection name (default: mm_sbert)")
    add("--processes", type=positive_int, default=None,
        help="encode in this many CPU processes, each a shard of every chunk (same index as one process)")
    # fmt: on


def run(args: argparse.Namespace) -> int:
    from mm_sbert.data.image_files import list_image_files
    from mm_sbert.retrieval import CooperativeRetriever

    if args.backend != "milvus" and args.uri is not None:
        raise CLIError("--uri is for --backend milvus")
    if args.backend == "milvus" and args.precision != "float32":
        raise CLIError("--precision chooses the local index's search; with --backend milvus, Milvus does")
    if args.backend == "milvus":
        require_package("pymilvus", "milvus", "mm-sbert index --backend milvus")
    images = [str(path.resolve()) for path in list_image_files(args.images)]
    retriever = CooperativeRetriever(load_model(args.model), batch_size=args.batch_size, show_progress_bar=True)
    try:
        with input_errors(ValueError):
            options = {
                name: getattr(args, name) for name in ("precision", "backend", "uri", "collection", "processes")
            }
            retriever.index(
                images, ids=images, path=args.output, store=args.features, model_path=args.model, **options
            )
    except KeyboardInterrupt:
        print(f"mm-sbert index: {args.output} was not changed; run the same command to build it", file=sys.stderr)
        raise
    finally:
        retriever.close()
    print(f'Indexed {len(images)} images into {args.output}; search with: mm-sbert search {args.output} "a caption"')
    return 0
