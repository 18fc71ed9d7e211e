"""``mm-sbert index``: encode an image folder once with the bi-encoder and persist the embeddings."""

from __future__ import annotations

import argparse
import json
import os

from mm_sbert.cli.common import CLIError, list_images, load_model, require_component, set_threads

INDEX_SUBFOLDER = "embeddings"
CLI_CONFIG = "mm_sbert_index.json"


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
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    (retriever_class,) = require_component("mm_sbert.retrieval", ["CooperativeRetriever"], "mm-sbert index")
    images = [str(path.resolve()) for path in list_images(args.images)]
    if os.path.exists(args.output) and os.listdir(args.output):
        if not os.path.isfile(os.path.join(args.output, CLI_CONFIG)):
            raise CLIError(f"'{args.output}' exists and is not an mm-sbert index; choose an empty or new folder")
    model = load_model(args.model)
    retriever = retriever_class(model, batch_size=args.batch_size, show_progress_bar=True)
    os.makedirs(args.output, exist_ok=True)
    retriever.index(images, ids=images, path=os.path.join(args.output, INDEX_SUBFOLDER), ann=args.ann)
    with open(os.path.join(args.output, CLI_CONFIG), "w", encoding="utf-8") as f:
        json.dump({"model": os.path.abspath(args.model), "num_images": len(images)}, f, indent=2)
    print(f'Indexed {len(images)} images into {args.output}; search with: mm-sbert search {args.output} "a caption"')
    return 0
