"""``mm-sbert search``: cooperative search of an indexed image folder (BE top-k, CE rerank), optional HTML page."""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os

from mm_sbert.cli.common import CLIError, existing_path, load_model, require_component, set_threads
from mm_sbert.cli.index import CLI_CONFIG, INDEX_SUBFOLDER


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="search an indexed image folder for a caption (BE retrieval + CE reranking)",
        description="Retrieve the --rerank-k best images for the query with the bi-encoder, rerank them with the "
        "cross-encoder and print the best --top-k with both scores. --html writes a page with thumbnails.",
    )
    parser.add_argument("index", help="index folder written by `mm-sbert index`")
    parser.add_argument("query", nargs="+", help="the caption to search for")
    parser.add_argument("--top-k", "-k", type=int, default=5, help="results to show (default: 5)")
    parser.add_argument("--rerank-k", type=int, default=20, help="BE candidates the CE reranks (default: 20)")
    parser.add_argument("--no-rerank", action="store_true", help="bi-encoder ranking only (no cross-encoder)")
    parser.add_argument("--model", "-m", default=None, help="model folder (default: the one the index was built with)")
    parser.add_argument("--html", default=None, metavar="FILE", help="also write a self-contained HTML results page")
    parser.add_argument("--json", action="store_true", help="print the hits as JSON lines instead of a table")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if args.top_k < 1 or args.rerank_k < 1:
        raise CLIError("--top-k and --rerank-k must be >= 1")
    (retriever_class,) = require_component("mm_sbert.retrieval", ["CooperativeRetriever"], "mm-sbert search")
    folder = existing_path(args.index, "Index folder", "dir")
    config_path = folder / CLI_CONFIG
    if not config_path.is_file():
        raise CLIError(f"'{args.index}' is not an index written by `mm-sbert index` (no {CLI_CONFIG})")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    model = load_model(args.model or config["model"])
    query = " ".join(args.query).strip()
    if not query:
        raise CLIError('The query is empty; pass a caption, e.g. "a red circle on the left"')

    retriever = retriever_class(model, top_k=max(args.rerank_k, args.top_k), show_progress_bar=False)
    if config.get("backend") == "milvus":
        (milvus_class,) = require_component("mm_sbert.retrieval", ["MilvusIndex"], "mm-sbert search")
        try:
            milvus_index = milvus_class(config["uri"], config["collection"])
        except ValueError as error:
            raise CLIError(str(error)) from error
        with milvus_index:
            hits = retriever.use_index(milvus_index).search(query, rerank=not args.no_rerank)[: args.top_k]
    else:
        retriever.open(str(folder / INDEX_SUBFOLDER))
        hits = retriever.search(query, rerank=not args.no_rerank)[: args.top_k]

    if args.json:
        for rank, hit in enumerate(hits, 1):
            print(json.dumps({"rank": rank, "image": hit.id, "ce_score": hit.ce_score, "be_score": hit.be_score}))
    else:
        print(f"Query: {query}")
        print(f"{'rank':>4}  {'CE prob':>7}  {'CE logit':>8}  {'BE cos':>7}  image")
        for rank, hit in enumerate(hits, 1):
            ce = "" if hit.ce_score is None else f"{_sigmoid(hit.ce_score):7.3f}  {hit.ce_score:8.3f}"
            print(f"{rank:>4}  {ce or ' ' * 17:>17}  {hit.be_score:7.3f}  {hit.id}")
    if args.html:
        write_html(args.html, query, hits)
        print(f"Wrote {args.html}")
    return 0


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


def write_html(path: str, query: str, hits: list) -> None:
    """Write a self-contained results page: the query, then one card per hit with its thumbnail and scores."""
    cards = []
    for rank, hit in enumerate(hits, 1):
        ce = "" if hit.ce_score is None else f"CE {_sigmoid(hit.ce_score):.3f} &middot; "
        name, title = html.escape(os.path.basename(str(hit.id))), html.escape(str(hit.id))
        cards.append(
            f'<figure class="hit"><img src="{thumbnail_data_uri(str(hit.id))}" alt="{name}" title="{title}">'
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
