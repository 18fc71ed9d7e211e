"""``mm-sbert evaluate``: recall@1/5/10 of BE, Coop and (optionally) full CE retrieval, with timings."""

from __future__ import annotations

import argparse
import os
import tempfile

from mm_sbert.cli.common import (
    CLIError,
    add_data_arguments,
    add_score_arguments,
    existing_path,
    load_model,
    non_negative_int,
    open_store,
    positive_int,
    read_caption_data,
    stored_regions,
)

MODES = ("be", "ce", "coop")
# Above this share of queries with all but equal CE probabilities, `--score combination` ranks like the BE.
SATURATED_WARNING = 0.5


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="image-text retrieval recall of BE / CE / Coop, both directions, with timings",
        description="Evaluate a saved model on (caption, image) pairs as in the paper: image retrieval (t2i, hit = "
        "the caption's image in the top k) and text retrieval (i2t, hit = any of the image's captions), R@1/5/10, "
        "for the bi-encoder (be), full cross-encoding (ce; every pair: small sets only) and Coop (coop). The "
        "reranker is --cross-encoder (a separately trained model, the paper's Sep+Coop) or --model's own score "
        "head (a joint model); a head no training objective trained is refused.",
    )
    parser.add_argument("--model", "-m", required=True, help="saved mm_sbert model folder (its bi-encoder retrieves)")
    parser.add_argument(
        "--cross-encoder",
        metavar="CE",
        help="a separately trained model whose cross-encoder reranks (e.g. `mm-sbert train ce` output); it reads "
        "the images with its own featurizer and the captions with its own tokenizer (default: --model's own head)",
    )
    add_data_arguments(parser, "evaluate on N generated held-out scenes")
    parser.add_argument(
        "--features",
        metavar="STORE",
        help="read the images' regions from this feature store (`mm-sbert featurize`; matched by file name) instead "
        "of featurizing them (a --cross-encoder with another featurizer featurizes the images itself)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=1, help="seed of --synthetic (default: 1)")
    parser.add_argument(
        "--modes",
        default=None,
        help="comma-separated subset of be, ce, coop (default: be, and coop when a trained reranker is there)",
    )
    parser.add_argument(
        "--top-k", type=positive_int, default=20, help="BE candidates the CE reranks in coop (paper: 20)"
    )
    add_score_arguments(parser, "the top k")
    parser.add_argument(
        "--allow-untrained-head",
        action="store_true",
        help="rerank even with a score head no training objective trained (to measure it; its scores mean nothing)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=64, help="encoder batch size")
    parser.add_argument("--output", default=None, help="also write the metrics to this JSON file")
    parser.set_defaults(run=run)


def parse_modes(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    modes = tuple(dict.fromkeys(mode.strip() for mode in text.split(",") if mode.strip()))
    if not modes or any(mode not in MODES for mode in modes):
        raise CLIError(f"--modes got {text!r}; expected a comma-separated subset of {', '.join(MODES)}")
    return modes


def reranker(args: argparse.Namespace, model, store):
    """``(cross_encoder, what, trained)``: the model that reranks (``--cross-encoder`` or ``--model``'s own head),
    how messages name it, and whether it may rerank by default (its head recorded as trained, or not recorded)."""
    from mm_sbert.errors import IncompatibleModelError
    from mm_sbert.models import check_view_trained
    from mm_sbert.models.views import to_cross_encoder

    if args.cross_encoder is not None:
        what, source = f"--cross-encoder {args.cross_encoder}", load_model(args.cross_encoder)
    else:
        what, source = f"--model {args.model}", model
    try:
        check_view_trained(source, "cross_encoder", what, allow_untrained=args.allow_untrained_head)
    except IncompatibleModelError as error:
        if args.modes is not None or args.cross_encoder is not None:
            raise CLIError(str(error)) from error
        return None, what, False  # the default modes leave the untrained head out
    return to_cross_encoder(source), what, True


def featurized(model, paths: list[str], store, what: str) -> list:
    """``paths`` as ``model`` reads them: regions from ``store`` (if given) or from its own featurizer."""
    if store is not None:
        return stored_regions(store.path, paths, model[0].featurizer)
    featurizer = model[0].featurizer
    if featurizer is None:
        raise CLIError(f"{what} has no image featurizer; give --features a store with its regions")
    from mm_sbert.image_features import load_image

    # Featurize each image once; CE pairs would otherwise featurize it again for every caption.
    return featurizer.featurize([load_image(path) for path in paths])


def run(args: argparse.Namespace) -> int:
    from mm_sbert.evaluation.results_table import evaluate_modes, format_table

    modes = parse_modes(args.modes)
    existing_path(args.model, "Model folder", "dir")
    if args.cross_encoder is not None:
        existing_path(args.cross_encoder, "Cross-encoder folder", "dir")
    if args.output:
        from mm_sbert.storage import check_output_path

        check_output_path(
            args.output,
            "metrics",
            folder=False,
            inputs=[args.data, args.model, args.cross_encoder, args.features],
            what="--output",
        )
    store = open_store(args.features)
    with tempfile.TemporaryDirectory() as scratch:
        # The data is read and checked before any model loads: bad --data fails at once.
        corpus = read_caption_data(args, scratch, captions_per_image=1)
        images, captions, caption_image_ids = corpus.evaluation_data()
        model = load_model(args.model)
        from mm_sbert.errors import IncompatibleModelError
        from mm_sbert.models import check_reranker, check_view_trained, same_featurizer

        try:
            check_view_trained(model, "bi_encoder", f"--model {args.model}", allow_untrained=args.allow_untrained_head)
        except IncompatibleModelError as error:
            raise CLIError(str(error)) from error
        cross_encoder, what, usable = None, None, False
        if modes is None or "ce" in modes or "coop" in modes:
            cross_encoder, what, usable = reranker(args, model, store)
        if modes is None:
            modes = ("be", "coop") if usable else ("be",)
            if not usable:
                print(f"{what}: its score head was never trained; evaluating the bi-encoder only (--modes be)")
        needs_reranker = "ce" in modes or "coop" in modes
        regions = featurized(model, images, store, f"--model {args.model}")
        ce_regions = None
        if needs_reranker and args.cross_encoder is not None and not same_featurizer(model, cross_encoder):
            own_store = store
            if store is not None:
                try:
                    store.check_featurizer(cross_encoder[0].featurizer)
                except ValueError:
                    own_store = None  # the store holds the bi-encoder's regions: featurize for the reranker
            try:
                check_reranker(cross_encoder, store=own_store, what=what, allow_untrained=args.allow_untrained_head)
            except IncompatibleModelError as error:
                raise CLIError(str(error)) from error
            ce_regions = featurized(cross_encoder, images, own_store, what)
        metrics = evaluate_modes(
            model,
            regions,
            captions,
            caption_image_ids,
            top_k=args.top_k,
            modes=modes,
            batch_size=args.batch_size,
            score=args.score,
            lam=args.lam,
            cross_encoder=cross_encoder if needs_reranker else None,
            cross_encoder_images=ce_regions,
        )
    print(f"{len(set(caption_image_ids))} images, {len(captions)} captions (recall in %)")
    if args.cross_encoder is not None and needs_reranker:
        print(f"Bi-encoder {args.model}, reranker {args.cross_encoder} (separately trained)")
    print(format_table(metrics, args.top_k))
    saturated = metrics.get("coop_ce_saturated", 0.0)
    if saturated > SATURATED_WARNING:
        print(
            f"Warning: for {saturated:.0%} of the queries the cross-encoder's probabilities sigmoid(logit) of all "
            f"{args.top_k} candidates are equal to 3 decimals (its logits sit far from 0), so `--score combination` "
            "ranks like the bi-encoder there; use --score ce (the logit) or combination_normalized"
        )
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        from mm_sbert.storage import atomic_write_json, output_marker

        # The mark first, within the first bytes: a later run may replace this file, nothing else.
        atomic_write_json(args.output, {"written_by": output_marker("metrics"), **metrics}, indent=2)
        print(f"Wrote {args.output}")
    return 0
