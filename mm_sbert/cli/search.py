"""``mm-sbert search``: cooperative search of an index folder (BE candidates, CE rerank), optional HTML page."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from mm_sbert.cli.common import (
    CLIError,
    add_score_arguments,
    existing_path,
    input_errors,
    load_model,
    positive_int,
    require_package,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="search an indexed image folder for a caption (BE retrieval + CE reranking)",
        description="Retrieve the --rerank-k best images for the query with the bi-encoder, rerank them with the "
        "cross-encoder (the model's own head, or a separately trained --cross-encoder) and print the best --top-k "
        "with both scores. --html writes a page with thumbnails. Images are read only inside --image-root. Exit code "
        "2: an incomplete, corrupt or edited index, an image path outside --image-root, a --model other than the "
        "index's, or an --html path that is not a new file or a page of mm-sbert search.",
    )
    parser.add_argument("index", help="index folder written by `mm-sbert index`")
    parser.add_argument("query", nargs="+", help="the caption to search for")
    parser.add_argument("--top-k", "-k", type=positive_int, default=5, help="results to show (default: 5)")
    parser.add_argument(
        "--rerank-k",
        type=positive_int,
        default=20,
        help="BE candidates the CE reranks, at least --top-k (default: 20)",
    )
    parser.add_argument("--no-rerank", action="store_true", help="bi-encoder ranking only (no cross-encoder)")
    add_score_arguments(parser, "the --rerank-k candidates")
    parser.add_argument(
        "--model", "-m", default=None, help="bi-encoder model folder (default: the one the index was built with)"
    )
    parser.add_argument(
        "--cross-encoder",
        default=None,
        metavar="CE",
        help="a separately trained cross-encoder folder that reranks the candidates (the paper's separate setting); "
        "default: the --model's own score head",
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
        "the cross-encoder's onnx/ folder the first time",
    )
    parser.add_argument("--html", default=None, metavar="FILE", help="also write a self-contained HTML results page")
    parser.add_argument("--json", action="store_true", help="print the hits as JSON lines instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mm_sbert.retrieval import CooperativeRetriever
    from mm_sbert.retrieval.index_folder import read_index_config
    from mm_sbert.retrieval.results_page import check_page_path, sigmoid, write_results_page

    if args.no_rerank and args.score != "ce":
        raise CLIError(f"--score {args.score} combines the cross-encoder's score; it cannot be used with --no-rerank")
    query = " ".join(args.query).strip()
    if not query:
        raise CLIError('The query is empty; pass a caption, e.g. "a red circle on the left"')
    folder = str(existing_path(args.index, "Index folder", "dir"))
    with input_errors():
        config = read_index_config(folder)
        model_path = args.model or config["model"]
        if config.get("backend") == "milvus":
            require_package("pymilvus", "milvus", "Searching a Milvus-backed index")
        inputs = [folder, args.image_root or config.get("image_root"), model_path, args.cross_encoder]
        page = check_page_path(args.html, inputs) if args.html else None
    if model_path is None:
        raise CLIError(f"The index '{folder}' records no model; pass --model")
    model = load_model(model_path)
    cross_encoder = None if args.no_rerank else load_cross_encoder(args.cross_encoder, model_path, args.ce_backend)
    if not args.no_rerank:
        check_reranker_trained(cross_encoder if cross_encoder is not None else model, args, model_path)
    retriever = CooperativeRetriever(
        model, cross_encoder, top_k=args.top_k, rerank_k=args.rerank_k, show_progress_bar=False
    )
    try:
        with input_errors(FileNotFoundError, ValueError), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            retriever.open(folder, image_root=args.image_root)
            for warning in caught:
                print(f"Warning: {warning.message}", file=sys.stderr)
            hits = retriever.search(query, rerank=not args.no_rerank, score=args.score, lam=args.lam)
            images = [retriever.image_path(hit.corpus_id) for hit in hits]
    finally:
        retriever.close()

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
            ce = "" if hit.ce_score is None else f"{sigmoid(hit.ce_score):7.3f}  {hit.ce_score:8.3f}"
            print(f"{rank:>4}{score}  {ce or ' ' * 17:>17}  {hit.be_score:7.3f}  {image}")
    if page is not None:
        with input_errors(OSError):
            write_results_page(page, query, hits, images, inputs=inputs)
        print(f"Wrote {args.html}", file=sys.stderr)  # stderr: stdout may be a JSON-lines stream
    return 0


def check_reranker_trained(reranker, args: argparse.Namespace, model_path: str) -> None:
    """Refuse to rerank with a score head no training objective has trained (a bi-encoder's head scores every pair
    about alike); a model without a head only retrieves."""
    from mm_sbert.errors import IncompatibleModelError
    from mm_sbert.models import check_view_trained
    from mm_sbert.models.views import has_score_head

    if args.cross_encoder is None and not has_score_head(reranker):
        return
    what = f"--cross-encoder {args.cross_encoder}" if args.cross_encoder else f"the index's model {model_path}"
    try:
        check_view_trained(reranker, "cross_encoder", what)
    except IncompatibleModelError as error:
        raise CLIError(f"{error}; search with --no-rerank, or rerank with --cross-encoder CE") from error


def load_cross_encoder(path: str | None, model_path: str, backend: str):
    """The reranker: ``None`` (the bi-encoder model's own head) unless a separate ``path`` or another backend than
    eager float32 is asked for."""
    if path is None and backend == "torch":
        return None
    from mm_sbert.models import MMCrossEncoder

    folder = str(existing_path(path or model_path, "--cross-encoder", "dir"))
    if backend == "bf16":
        import torch

        return MMCrossEncoder(folder, device="cpu", model_kwargs={"dtype": torch.bfloat16})
    if backend == "torch":
        return MMCrossEncoder(folder, device="cpu")
    require_package("onnxruntime", "onnx", f"--ce-backend {backend}")
    file_name = "onnx/model_qint8.onnx" if backend == "onnx-int8" else "onnx/model.onnx"
    if not os.path.isfile(os.path.join(folder, file_name)):
        require_package("onnx", "onnx", f"Exporting the cross-encoder for --ce-backend {backend}")
        print(f"Exporting the cross-encoder to {os.path.join(folder, file_name)} (once)", file=sys.stderr)
    with input_errors(ValueError, FileNotFoundError):
        return MMCrossEncoder(folder, device="cpu", backend="onnx", model_kwargs={"file_name": file_name})
