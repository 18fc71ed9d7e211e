"""``mm-sbert index``: encode an image folder once with the bi-encoder and persist the embeddings."""

from __future__ import annotations

import argparse
import json
import os

from mm_sbert.cli.common import CLIError, list_images, load_model, require_component, set_threads

INDEX_SUBFOLDER = "embeddings"
CLI_CONFIG = "mm_sbert_index.json"
MILVUS_FILE = "milvus.db"
PRECISION_CHOICES = ["float32", "int8", "binary", "hnsw", "ivf"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index",
        help="encode an image folder with the bi-encoder into a searchable index",
        description="Encode every image of the given files / folders once with the model's bi-encoder and store the "
        "embeddings (and the image paths) in an index folder, for `mm-sbert search`.",
    )
    parser.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--model", "-m", required=True, help="saved mm_sbert model folder")
    parser.add_argument("--output", "-o", required=True, help="index folder to write")
    parser.add_argument("--batch-size", type=int, default=32, help="images per bi-encoder batch")
    parser.add_argument("--ann", default=None, help="also build a FAISS index with this factory string, e.g. HNSW32")
    parser.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="float32",
        help="search of the local index: exact float32 (default), int8 / binary codes rescored in float32, or a "
        "FAISS hnsw / ivf index",
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
        help=f"Milvus URI for --backend milvus: a .db file (embedded milvus-lite) or a server address such as "
        f"http://host:19530 (default: {MILVUS_FILE} in the output folder)",
    )
    parser.add_argument("--collection", default="mm_sbert", help="Milvus collection name (default: mm_sbert)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    (retriever_class,) = require_component("mm_sbert.retrieval", ["CooperativeRetriever"], "mm-sbert index")
    milvus = args.backend == "milvus"
    if not milvus and args.uri is not None:
        raise CLIError("--uri is for --backend milvus")
    if milvus and (args.precision != "float32" or args.ann):
        raise CLIError("--precision and --ann choose the local index's search; with --backend milvus, Milvus does")
    images = [str(path.resolve()) for path in list_images(args.images)]
    previous = None
    if os.path.exists(args.output) and os.listdir(args.output):
        if not os.path.isfile(os.path.join(args.output, CLI_CONFIG)):
            raise CLIError(f"'{args.output}' exists and is not an mm-sbert index; choose an empty or new folder")
        with open(os.path.join(args.output, CLI_CONFIG), encoding="utf-8") as f:
            previous = json.load(f)
    uri = args.uri or os.path.join(args.output, MILVUS_FILE)
    if "://" not in uri:  # a milvus-lite file: recorded absolute, so search works from any directory
        uri = os.path.abspath(uri)
    model = load_model(args.model)
    retriever = retriever_class(model, batch_size=args.batch_size, show_progress_bar=True)
    os.makedirs(args.output, exist_ok=True)
    config = {"model": os.path.abspath(args.model), "num_images": len(images)}
    if milvus:
        (milvus_class,) = require_component("mm_sbert.retrieval", ["MilvusIndex"], "mm-sbert index --backend milvus")
        # Re-indexing replaces only the collection this output folder wrote, never another one at that URI.
        own = previous is not None and (previous.get("uri"), previous.get("collection")) == (uri, args.collection)
        embedding_index = retriever.index(images, ids=images)
        try:
            milvus_class.from_index(embedding_index, uri, collection_name=args.collection, overwrite=own).close()
        except ValueError as error:
            raise CLIError(str(error)) from error
        config.update({"backend": "milvus", "uri": uri, "collection": args.collection})
    else:
        retriever.index(
            images, ids=images, path=os.path.join(args.output, INDEX_SUBFOLDER), ann=args.ann, precision=args.precision
        )
        config["precision"] = args.precision
    with open(os.path.join(args.output, CLI_CONFIG), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    print(f'Indexed {len(images)} images into {args.output}; search with: mm-sbert search {args.output} "a caption"')
    return 0
