"""``mm-sbert index``: encode an image folder once with the bi-encoder into an index folder (the library's)."""

from __future__ import annotations

import argparse
import sys

from mm_sbert.cli.common import (
    CLIError,
    input_errors,
    list_images,
    load_model,
    positive_int,
    require_package,
)

# mm_sbert.retrieval.PRECISIONS, spelled out so `mm-sbert --help` imports no torch.
PRECISION_CHOICES = ["float32", "int8", "binary", "hnsw", "ivf"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index",
        help="encode an image folder with the bi-encoder into a searchable index",
        description="Encode every image of the given files / folders once with the model's bi-encoder and store the "
        "embeddings (and the image paths) in an index folder, for `mm-sbert search`. The index records the model's "
        "fingerprint (search refuses another model), the image folder (search reads images only inside it) and the "
        "feature store of --features (search reranks from it). A rebuild replaces the folder only once complete; an "
        "interrupted or failed one leaves the old index as it was. Exit code 2: a missing, corrupt or unreadable "
        "image (named), or an output that is not an index mm-sbert wrote (or is one of the inputs).",
    )
    parser.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--model", "-m", required=True, help="saved mm_sbert model folder")
    parser.add_argument("--output", "-o", required=True, help="index folder to write")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per bi-encoder batch")
    parser.add_argument(
        "--features",
        metavar="STORE",
        help="read the images' regions from this feature store (`mm-sbert featurize`; matched by file name) instead "
        "of featurizing them; search then reranks from it too",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="float32",
        help="search of the local index: exact float32 (default), int8 / binary codes rescored in float32, or a "
        "FAISS hnsw / ivf index rescored in float32",
    )
    parser.add_argument(
        "--backend",
        choices=["local", "milvus"],
        default="local",
        help="where the embeddings live: an index folder (default) or a Milvus collection",
    )
    parser.add_argument(
        "--uri",
        default=None,
        help="Milvus URI for --backend milvus: a .db file (embedded milvus-lite) or a server address such as "
        "http://host:19530 (default: milvus.db in the output folder)",
    )
    parser.add_argument("--collection", default="mm_sbert", help="Milvus collection name (default: mm_sbert)")
    parser.add_argument(
        "--processes",
        type=positive_int,
        default=None,
        help="encode in this many CPU processes, each a shard of every chunk (same index as one process)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mm_sbert.image_features import ImageLoadError
    from mm_sbert.retrieval import CooperativeRetriever

    if args.backend != "milvus" and args.uri is not None:
        raise CLIError("--uri is for --backend milvus")
    if args.backend == "milvus" and args.precision != "float32":
        raise CLIError("--precision chooses the local index's search; with --backend milvus, Milvus does")
    if args.backend == "milvus":
        require_package("pymilvus", "milvus", "mm-sbert index --backend milvus")
    images = [str(path.resolve()) for path in list_images(args.images)]
    retriever = CooperativeRetriever(load_model(args.model), batch_size=args.batch_size, show_progress_bar=True)
    try:
        with input_errors(ImageLoadError, ValueError):
            retriever.index(
                images,
                ids=images,
                path=args.output,
                precision=args.precision,
                store=args.features,
                backend=args.backend,
                uri=args.uri,
                collection=args.collection,
                model_path=args.model,
                processes=args.processes,
            )
    except KeyboardInterrupt:
        print(f"mm-sbert index: {args.output} was not changed; run the same command to build it", file=sys.stderr)
        raise
    finally:
        retriever.close()
    print(f'Indexed {len(images)} images into {args.output}; search with: mm-sbert search {args.output} "a caption"')
    return 0
