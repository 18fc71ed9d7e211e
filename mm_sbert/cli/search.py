"""``mm-sbert search``: cooperative search of an indexed image folder (BE top-k, CE rerank), optional HTML page."""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
import sys
from pathlib import Path

from mm_sbert.cli.common import (
    CLIError,
    add_score_arguments,
    existing_path,
    input_errors,
    load_model,
    require_package,
)
from mm_sbert.cli.index import CLI_CONFIG, INDEX_SUBFOLDER, MILVUS_FILE


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="search an indexed image folder for a caption (BE retrieval + CE reranking)",
        description="Retrieve the --rerank-k best images for the query with the bi-encoder, rerank them with the "
        "cross-encoder and print the best --top-k with both scores. --html writes a page with thumbnails. Images are "
        "read only inside --image-root. Exit code 2: an incomplete, corrupt or edited index, an image path outside "
        "--image-root, a model other than the index's (see --force-model), or --html naming one of the index's files.",
    )
    parser.add_argument("index", help="index folder written by `mm-sbert index`")
    parser.add_argument("query", nargs="+", help="the caption to search for")
    parser.add_argument("--top-k", "-k", type=int, default=5, help="results to show (default: 5)")
    parser.add_argument("--rerank-k", type=int, default=20, help="BE candidates the CE reranks (default: 20)")
    parser.add_argument("--no-rerank", action="store_true", help="bi-encoder ranking only (no cross-encoder)")
    add_score_arguments(parser, "the --rerank-k candidates")
    parser.add_argument("--model", "-m", default=None, help="model folder (default: the one the index was built with)")
    parser.add_argument(
        "--force-model",
        action="store_true",
        help="search even when --model embeds differently from the model the index was built with",
    )
    parser.add_argument(
        "--image-root",
        default=None,
        metavar="DIR",
        help="folder the indexed images are read from; no image outside it is opened (default: the image folder "
        "recorded by `mm-sbert index`; pass it when the images moved)",
    )
    parser.add_argument(
        "--ce-backend",
        choices=["torch", "bf16", "onnx", "onnx-int8"],
        default="torch",
        help="where the cross-encoder reranks: eager PyTorch (default, the reference), eager in bfloat16 (fast on "
        "CPUs with bfloat16 units, e.g. AMX; slow elsewhere), ONNX Runtime float32, or ONNX Runtime with int8 "
        "weights (see benchmarks/results/retrieval_latency.md for speed and recall); an ONNX export is written to "
        "the model's onnx/ folder the first time",
    )
    parser.add_argument("--html", default=None, metavar="FILE", help="also write a self-contained HTML results page")
    parser.add_argument("--json", action="store_true", help="print the hits as JSON lines instead of a table")
    parser.set_defaults(run=run)


def read_index_config(folder: Path) -> dict:
    """The ``mm_sbert_index.json`` of an index folder, checked: complete, and a JSON object."""
    from mm_sbert.storage import read_json_file

    config_path = folder / CLI_CONFIG
    if not config_path.is_file():
        raise CLIError(f"'{folder}' is not an index written by `mm-sbert index` (no {CLI_CONFIG})")
    with input_errors():
        config = read_json_file(config_path, "index config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise CLIError(f"'{config_path}' is not an `mm-sbert index` config (no model); rebuild the index")
    if config.get("complete") is False:
        raise CLIError(
            f"The index in '{folder}' was not completely written (`mm-sbert index` was interrupted); run "
            "`mm-sbert index` again to rebuild it"
        )
    return config


def html_target(path: str, folder: Path) -> Path:
    """``--html`` as a path, refused when it would overwrite one of the index's own files."""
    target = Path(os.path.realpath(path))
    root = Path(os.path.realpath(folder))
    if target.is_dir():
        raise CLIError(f"--html '{path}' is a folder; name the page's file, e.g. results.html")
    if target.is_relative_to(root):
        first = target.relative_to(root).parts[0]
        if first in (CLI_CONFIG, INDEX_SUBFOLDER, MILVUS_FILE) or first.startswith("."):
            raise CLIError(f"--html '{path}' would overwrite a file of the index '{folder}'; write the page elsewhere")
    return target


def run(args: argparse.Namespace) -> int:
    from mm_sbert.retrieval import CooperativeRetriever, MilvusIndex, check_encoder_fingerprint
    from mm_sbert.storage import resolve_stored_path

    if args.top_k < 1 or args.rerank_k < 1:
        raise CLIError("--top-k and --rerank-k must be >= 1")
    if args.no_rerank and args.score != "ce":
        raise CLIError(f"--score {args.score} combines the cross-encoder's score; it cannot be used with --no-rerank")
    folder = existing_path(args.index, "Index folder", "dir")
    config = read_index_config(folder)
    html_path = html_target(args.html, folder) if args.html else None
    recorded_root = config.get("image_root")
    if args.image_root is None and recorded_root is None:
        raise CLIError(
            f"The index '{args.index}' was written by an older `mm-sbert index` that did not record its image "
            "folder; pass --image-root DIR (images are read only inside it) or rebuild the index"
        )
    image_root = existing_path(args.image_root or recorded_root, "--image-root", "dir")
    query = " ".join(args.query).strip()
    if not query:
        raise CLIError('The query is empty; pass a caption, e.g. "a red circle on the left"')
    model = load_model(args.model or config["model"])
    fingerprint = config.get("model_fingerprint")
    if fingerprint is None:
        print(
            f"Warning: the index '{args.index}' records no model fingerprint (an older `mm-sbert index` wrote it), "
            "so the model cannot be checked against the one that built it; re-run `mm-sbert index` to record one",
            file=sys.stderr,
        )
    elif not args.force_model:
        with input_errors():
            check_encoder_fingerprint(fingerprint, model, what=f"the index '{args.index}'")

    cross_encoder = None
    if args.ce_backend == "bf16" and not args.no_rerank:
        import torch

        from mm_sbert.models import MMCrossEncoder

        # A copy of its own: the bi-encoder keeps encoding queries in float32, as the index was built.
        cross_encoder = MMCrossEncoder(
            args.model or config["model"], device="cpu", model_kwargs={"dtype": torch.bfloat16}
        )
    elif args.ce_backend != "torch" and not args.no_rerank:
        cross_encoder = onnx_cross_encoder(model, args.model or config["model"], args.ce_backend)
    retriever = CooperativeRetriever(
        model, cross_encoder, top_k=max(args.rerank_k, args.top_k), show_progress_bar=False
    )
    if config.get("backend") == "milvus":
        require_package("pymilvus", "milvus", "Searching a Milvus-backed index")
        try:
            embedding_index = MilvusIndex(config["uri"], config["collection"])
        except (KeyError, ValueError) as error:
            raise CLIError(f"The Milvus collection of the index '{args.index}' cannot be opened: {error}") from error
    else:
        with input_errors(FileNotFoundError):
            embedding_index = retriever.open(str(folder / INDEX_SUBFOLDER)).embedding_index
    try:
        retriever.use_index(embedding_index)
        stored_items = retriever.items
        if stored_items is None:
            raise CLIError(f"The index '{args.index}' holds no image paths; rebuild it with `mm-sbert index`")

        def image_path(row: int) -> str:
            # Every image the cross-encoder or the page reads goes through here: inside --image-root, or refused.
            stored = stored_items(row) if callable(stored_items) else stored_items[row]
            return str(resolve_stored_path(stored, recorded_root, image_root, what="image path"))

        retriever.items = image_path
        with input_errors():
            hits = retriever.search(query, rerank=not args.no_rerank, score=args.score, lam=args.lam)[: args.top_k]
            images = [image_path(hit.corpus_id) for hit in hits]
    finally:
        if hasattr(embedding_index, "close"):
            embedding_index.close()

    combined = args.score != "ce"
    if args.json:
        for rank, (hit, image) in enumerate(zip(hits, images), 1):
            row = {"rank": rank, "image": image, "ce_score": hit.ce_score, "be_score": hit.be_score}
            print(json.dumps({**row, "score": hit.score} if combined else row))
    else:
        print(f"Query: {query}")
        score_column = f"  {'score':>7}" if combined else ""
        print(f"{'rank':>4}{score_column}  {'CE prob':>7}  {'CE logit':>8}  {'BE cos':>7}  image")
        for rank, (hit, image) in enumerate(zip(hits, images), 1):
            score = f"  {hit.score:7.3f}" if combined else ""
            ce = "" if hit.ce_score is None else f"{_sigmoid(hit.ce_score):7.3f}  {hit.ce_score:8.3f}"
            print(f"{rank:>4}{score}  {ce or ' ' * 17:>17}  {hit.be_score:7.3f}  {image}")
    if html_path is not None:
        write_html(str(html_path), query, hits, images)
        print(f"Wrote {args.html}")
    return 0


def onnx_cross_encoder(model, model_folder: str, backend: str):
    """The model's cross-encoder in ONNX Runtime, from ``<model>/onnx/`` (exported there when missing)."""
    from mm_sbert.export.onnx_cross_encoder import ONNX_FILE, ONNX_FOLDER, ONNX_INT8_FILE, ensure_onnx_export

    require_package("onnxruntime", "onnx", f"--ce-backend {backend}")
    file_name = f"{ONNX_FOLDER}/{ONNX_INT8_FILE if backend == 'onnx-int8' else ONNX_FILE}"
    if not (Path(model_folder) / file_name).is_file():
        require_package("onnx", "onnx", f"Exporting the cross-encoder for --ce-backend {backend}")
        print(f"Exporting the cross-encoder to {Path(model_folder) / file_name} (once)", file=sys.stderr)
    from mm_sbert.export import OnnxCrossEncoder

    with input_errors(ValueError):
        path = ensure_onnx_export(model[0], model_folder, file_name)
    return OnnxCrossEncoder(model.to_cross_encoder(), path)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def thumbnail_data_uri(path: str, size: int = 160) -> str:
    """A PNG thumbnail of an image file as a data URI, so the page needs no other file."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        if max(image.size) < size:  # small images (e.g. synthetic scenes) are enlarged so they stay visible
            scale = size / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_html(path: str, query: str, hits: list, images: list[str] | None = None) -> None:
    """Write a self-contained results page: the query, then one card per hit with its thumbnail and scores.

    ``images``: the image file of each hit (default: the hits' ids); pass paths already checked to lie inside the
    folder the user chose.
    """
    images = [str(hit.id) for hit in hits] if images is None else images
    cards = []
    for rank, (hit, image) in enumerate(zip(hits, images), 1):
        ce = "" if hit.ce_score is None else f"CE {_sigmoid(hit.ce_score):.3f} &middot; "
        name, title = html.escape(os.path.basename(image)), html.escape(image)
        cards.append(
            f'<figure class="hit"><img src="{thumbnail_data_uri(image)}" alt="{name}" title="{title}">'
            f"<figcaption><b>#{rank}</b> {name}<br>{ce}BE {hit.be_score:.3f}</figcaption></figure>"
        )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mm-sbert search: {html.escape(query)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
.hits {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.hit {{ margin: 0; padding: .5em; border: 1px solid #ccc; border-radius: 6px; text-align: center; }}
.hit img {{ display: block; width: 160px; height: 160px; object-fit: contain; image-rendering: pixelated; }}
figcaption {{ font-size: 85%; margin-top: .3em; }}
</style></head>
<body>
<h1>Query</h1>
<p class="query">{html.escape(query)}</p>
<h2>Top {len(hits)} images</h2>
<div class="hits">
{chr(10).join(cards)}
</div>
<p><small>CE: cross-encoder probability (reranking), BE: bi-encoder cosine similarity (retrieval).</small></p>
</body></html>
"""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
