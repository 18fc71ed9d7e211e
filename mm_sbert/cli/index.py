"""``mm-sbert index``: encode an image folder once with the bi-encoder and persist the embeddings."""

from __future__ import annotations

import argparse
import os
import sys

from mm_sbert.cli.common import (
    CLIError,
    input_errors,
    list_images,
    load_model,
    positive_int,
    require_package,
    stored_regions,
)

INDEX_SUBFOLDER = "embeddings"
CLI_CONFIG = "mm_sbert_index.json"
CLI_FORMAT = "mm_sbert.cli-index"
CLI_VERSION = 2  # 1: {"model", "num_images"} only
MILVUS_FILE = "milvus.db"
PRECISION_CHOICES = ["float32", "int8", "binary", "hnsw", "ivf"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index",
        help="encode an image folder with the bi-encoder into a searchable index",
        description="Encode every image of the given files / folders once with the model's bi-encoder and store the "
        "embeddings (and the image paths) in an index folder, for `mm-sbert search`. The index records the model's "
        "fingerprint (search refuses another model) and the image folder (search reads images only inside it). "
        "An interrupted run leaves the folder marked incomplete; running the same command again replaces it. "
        "Exit code 2: a missing, corrupt or unreadable image (named), or an output folder that is not an index.",
    )
    parser.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--model", "-m", required=True, help="saved mm_sbert model folder")
    parser.add_argument("--output", "-o", required=True, help="index folder to write")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per bi-encoder batch")
    parser.add_argument(
        "--features",
        metavar="STORE",
        help="read the images' regions from this feature store (`mm-sbert featurize`; matched by file name) instead "
        "of featurizing them",
    )
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
    parser.set_defaults(run=run)


def _is_index_folder_or_leftovers(folder: str) -> bool:
    """True for a folder `mm-sbert index` wrote, even one a killed run left without its config."""
    ours = (
        CLI_CONFIG,
        INDEX_SUBFOLDER,
        f".{INDEX_SUBFOLDER}.tmp-",
        f".{CLI_CONFIG}.tmp-",
        MILVUS_FILE,
        f".{MILVUS_FILE}",
    )
    return all(name.startswith(ours) for name in os.listdir(folder))


def _previous_config(config_path: str) -> dict | None:
    """The config an earlier run wrote into this folder (``None`` when there is none or it is unreadable)."""
    from mm_sbert.storage import read_json_file

    if not os.path.isfile(config_path):
        return None
    try:
        previous = read_json_file(config_path, "index config")
    except (OSError, ValueError):
        return None
    return previous if isinstance(previous, dict) else None


def run(args: argparse.Namespace) -> int:
    from mm_sbert.image_features import ImageLoadError
    from mm_sbert.retrieval import CooperativeRetriever, IndexWriter, MilvusIndex, encoder_fingerprint
    from mm_sbert.storage import atomic_write_json

    milvus = args.backend == "milvus"
    if not milvus and args.uri is not None:
        raise CLIError("--uri is for --backend milvus")
    if milvus and (args.precision != "float32" or args.ann):
        raise CLIError("--precision and --ann choose the local index's search; with --backend milvus, Milvus does")
    if milvus:
        require_package("pymilvus", "milvus", "mm-sbert index --backend milvus")
    images = [str(path.resolve()) for path in list_images(args.images)]
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise CLIError(f"--output '{args.output}' is a file, not a folder")
    if os.path.isdir(args.output) and not _is_index_folder_or_leftovers(args.output):
        raise CLIError(f"'{args.output}' exists and is not an mm-sbert index; choose an empty or new folder")
    config_path = os.path.join(args.output, CLI_CONFIG)
    previous = _previous_config(config_path)
    uri = args.uri or os.path.join(args.output, MILVUS_FILE)
    if "://" not in uri:  # a milvus-lite file: recorded absolute, so search works from any directory
        uri = os.path.abspath(uri)
    model = load_model(args.model)
    items = images
    if args.features is not None:
        items = stored_regions(args.features, images, model[0].featurizer, what="the images to index")
    retriever = CooperativeRetriever(model, batch_size=args.batch_size, show_progress_bar=True)
    os.makedirs(args.output, exist_ok=True)
    embeddings_path = os.path.join(args.output, INDEX_SUBFOLDER)
    # What an earlier run killed mid-write left behind (its temporary folder / config file)
    IndexWriter.remove_leftovers(embeddings_path)
    for name in os.listdir(args.output):
        if name.startswith(f".{CLI_CONFIG}.tmp-"):
            os.remove(os.path.join(args.output, name))
    config = {
        "format": CLI_FORMAT,
        "version": CLI_VERSION,
        "model": os.path.abspath(args.model),
        "model_fingerprint": encoder_fingerprint(model),
        "image_root": os.path.commonpath([os.path.dirname(image) for image in images]),
        "num_images": len(images),
        # Written first as False, so a run that dies from here on leaves a folder search calls incomplete and a
        # rerun of index recognises as its own and replaces.
        "complete": False,
    }
    if milvus:
        config.update({"backend": "milvus", "uri": uri, "collection": args.collection})
    else:
        config["precision"] = args.precision
    atomic_write_json(config_path, config, indent=2)
    try:
        if milvus:
            # Re-indexing replaces only the collection this output folder wrote, never another one at that URI.
            own = previous is not None and (previous.get("uri"), previous.get("collection")) == (uri, args.collection)
            with input_errors(ImageLoadError):
                embedding_index = retriever.index(items, ids=images)
            try:
                MilvusIndex.from_index(embedding_index, uri, collection_name=args.collection, overwrite=own).close()
            except ValueError as error:
                raise CLIError(str(error)) from error
        else:
            with input_errors(ImageLoadError):
                retriever.index(items, ids=images, path=embeddings_path, ann=args.ann, precision=args.precision)
    except KeyboardInterrupt:
        print(
            f"mm-sbert index: the index in {args.output} is incomplete; run the same command to rebuild it",
            file=sys.stderr,
        )
        raise
    atomic_write_json(config_path, {**config, "complete": True}, indent=2)
    print(f'Indexed {len(images)} images into {args.output}; search with: mm-sbert search {args.output} "a caption"')
    return 0
