"""Recall@1/5/10 of a saved model on (caption, image) pairs, as in the paper: image retrieval (t2i) and text
retrieval (i2t) by the bi-encoder (be), full cross-encoding (ce; small sets only) and Coop (coop), with timings. The
reranker is --cross-encoder or --model's own score head, if trained (docs/evaluation.md)."""

from __future__ import annotations

import argparse
import tempfile

from mm_sbert.cli import common

MODES = ("be", "ce", "coop")
# The options evaluate_models() takes under their own names.
OPTIONS = ("store", "modes", "top_k", "batch_size", "score", "lam", "allow_untrained_head")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # fmt: off
    add = parser.add_argument
    add("--model", "-m", required=True, help="saved mm_sbert model folder (its bi-encoder retrieves)")
    add("--cross-encoder", metavar="CE", action="append",
        help="a separately trained model whose cross-encoder reranks (default: --model's own score head); given "
             "more than once: they rerank as one ensemble, by their mean logit")
    common.add_data_arguments(parser, "evaluate on N generated held-out scenes")
    add("--features", metavar="STORE", dest="store",
        help="read the images' regions from this `mm-sbert featurize` store (matched by file name)")
    add("--seed", type=common.non_negative_int, default=1, help="seed of --synthetic (default: 1)")
    add("--modes", type=modes_argument,
        help="comma-separated subset of be, ce, coop (default: be, and coop when a trained reranker is there)")
    add("--top-k", type=common.positive_int, default=20, help="BE candidates the CE reranks in coop (paper: 20)")
    common.add_score_arguments(parser, "the top k")
    add("--allow-untrained-head", action="store_true",
        help="rerank even with a score head no training objective trained (to measure it; its scores mean nothing)")
    add("--batch-size", type=common.positive_int, default=64, help="encoder batch size")
    add("--output", help="also write the metrics to this JSON file")
    # fmt: on


def modes_argument(text: str) -> tuple[str, ...]:
    """argparse type of ``--modes``: a comma-separated subset of be, ce, coop."""
    modes = tuple(dict.fromkeys(mode.strip() for mode in text.split(",") if mode.strip()))
    if not modes or any(mode not in MODES for mode in modes):
        raise argparse.ArgumentTypeError(f"got {text!r}; expected a comma-separated subset of {', '.join(MODES)}")
    return modes


def run(args: argparse.Namespace) -> int:
    from mm_sbert.evaluation import results_table as results

    common.existing_path(args.model, "Model folder", folder=True)
    rerankers = args.cross_encoder or []
    for folder in rerankers:
        common.existing_path(folder, "Cross-encoder folder", folder=True)
    if args.output:
        inputs = [args.data, args.model, *rerankers, args.store]
        results.check_metrics_path(args.output, inputs=inputs, what="--output")
    names = {"model_name": f"--model {args.model}", "cross_encoder_name": [f"--cross-encoder {f}" for f in rerankers]}
    with tempfile.TemporaryDirectory() as scratch:
        # The data is read and checked before any model loads: bad --data fails at once.
        corpus = common.read_caption_data(args, scratch, captions_per_image=1)
        cross_encoder = [common.load_model(folder) for folder in rerankers] or None
        options = {name: getattr(args, name) for name in OPTIONS}
        metrics = results.evaluate_models(common.load_model(args.model), corpus, cross_encoder, **options, **names)
    if args.modes is None and "coop_seconds" not in metrics:
        print(f"--model {args.model}: its score head was never trained; evaluating the bi-encoder only (--modes be)")
    print(f"{len(set(corpus.caption_image_ids))} images, {len(corpus)} captions (recall in %)")
    if rerankers and ("ce_seconds" in metrics or "coop_seconds" in metrics):
        what = "reranker" if len(rerankers) == 1 else f"ensemble of {len(rerankers)} rerankers"
        print(f"Bi-encoder {args.model}, {what} {', '.join(rerankers)} (separately trained)")
    print(results.format_table(metrics, args.top_k))
    if warning := results.saturation_warning(metrics, args.top_k):
        print(warning)
    if args.output:
        results.write_metrics(args.output, metrics)
        print(f"Wrote {args.output}")
    return 0
