"""Retrieve the --rerank-k best images with the bi-encoder, rerank them with the cross-encoder and print the best
--top-k. Images are read only inside --image-root. Exit code 2: an incomplete or edited index, an image outside
--image-root, a --model other than the index's, or an --html path that is not new or a page of mm-sbert search."""

from __future__ import annotations

import argparse
import sys
import warnings

from mm_sbert.cli import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # fmt: off
    add = parser.add_argument
    add("index", help="index folder written by `mm-sbert index`")
    add("query", nargs="+", help="the caption to search for")
    add("--top-k", "-k", type=common.positive_int, default=5, help="results to show (default: 5)")
    add("--rerank-k", type=common.positive_int, default=20,
        help="BE candidates the CE reranks, at least --top-k (default: 20)")
    add("--no-rerank", action="store_true", help="bi-encoder ranking only (no cross-encoder)")
    common.add_score_arguments(parser, "the --rerank-k candidates")
    add("--model", "-m", help="bi-encoder model folder (default: the one the index was built with)")
    add("--cross-encoder", metavar="CE", action="append",
        help="a separately trained cross-encoder folder to rerank with (default: --model's own score head); given "
             "more than once: they rerank as one ensemble, by their mean logit")
    add("--image-root", metavar="DIR",
        help="the only folder images are read from (default: the index's; pass it when the images moved)")
    add("--ce-backend", choices=["torch", "bf16", "onnx", "onnx-int8"], default="torch",
        help="how the cross-encoder runs: PyTorch in float32 (default) or bfloat16, or ONNX Runtime in float32 or "
        "with int8 weights (exported once into its onnx/ folder; see docs/scale.md)")
    add("--html", metavar="FILE", help="also write a self-contained HTML results page")
    add("--json", action="store_true", help="print the hits as JSON lines instead of a table")
    # fmt: on


def run(args: argparse.Namespace) -> int:
    from mm_sbert.retrieval import CooperativeRetriever
    from mm_sbert.retrieval.hit_text import hits_as_json_lines, hits_as_table
    from mm_sbert.retrieval.index_folder import read_index_config
    from mm_sbert.retrieval.reranker_loading import load_reranker, onnx_export_path
    from mm_sbert.retrieval.results_page import check_page_path, write_results_page

    if args.no_rerank and args.score != "ce":
        raise common.CLIError(
            f"--score {args.score} combines the cross-encoder's score; it cannot be used with --no-rerank"
        )
    query = " ".join(args.query).strip()
    if not query:
        raise common.CLIError('The query is empty; pass a caption, e.g. "a red circle on the left"')
    folder = str(common.existing_path(args.index, "Index folder", folder=True))
    config = read_index_config(folder)
    model_path = args.model or config["model"]
    if config.get("backend") == "milvus":
        common.require_package("pymilvus", "milvus", "Searching a Milvus-backed index")
    rerankers = args.cross_encoder or []
    inputs = [folder, args.image_root or config.get("image_root"), model_path, *rerankers]
    page = check_page_path(args.html, inputs) if args.html else None
    if model_path is None:
        raise common.CLIError(f"The index '{folder}' records no model; pass --model")
    model = common.load_model(model_path)
    for reranker in rerankers:
        common.existing_path(reranker, "--cross-encoder", folder=True)
    if not args.no_rerank and args.ce_backend.startswith("onnx"):
        common.require_package("onnxruntime", "onnx", f"--ce-backend {args.ce_backend}")
        for reranker in rerankers or [model_path]:
            if export := onnx_export_path(reranker, args.ce_backend):
                common.require_package(
                    "onnx", "onnx", f"Exporting the cross-encoder for --ce-backend {args.ce_backend}"
                )
                print(f"Exporting the cross-encoder to {export} (once)", file=sys.stderr)
    cross_encoder = None
    if not args.no_rerank:
        with common.input_errors(ValueError, FileNotFoundError):
            cross_encoder = load_reranker(model, model_path, rerankers or None, args.ce_backend)
    retriever = CooperativeRetriever(model, cross_encoder, top_k=args.top_k, rerank_k=args.rerank_k)
    try:
        with common.input_errors(FileNotFoundError, ValueError), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            retriever.open(folder, image_root=args.image_root)
            for warning in caught:
                print(f"Warning: {warning.message}", file=sys.stderr)
            hits = retriever.search(query, rerank=not args.no_rerank, score=args.score, lam=args.lam)
            images = [retriever.image_path(hit.corpus_id) for hit in hits]
    finally:
        retriever.close()

    combined = args.score != "ce"
    text = hits_as_json_lines(hits, images, combined) if args.json else hits_as_table(query, hits, images, combined)
    if text:  # JSON lines of no hits: no line at all
        print(text)
    if page is not None:
        with common.input_errors(OSError):
            write_results_page(page, query, hits, images, inputs=inputs)
        print(f"Wrote {args.html}", file=sys.stderr)  # stderr: stdout may be a JSON-lines stream
    return 0
