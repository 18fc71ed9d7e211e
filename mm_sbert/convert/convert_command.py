"""``mm-sbert convert``: turn an original OSCAR / M3P / MMT-Retrieval checkpoint into an mm_sbert folder."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mm_sbert.convert.checkpoint_converter import CheckpointConverter, ConvertedModel
from mm_sbert.convert.m3p_converter import M3PConverter
from mm_sbert.convert.mmt_retrieval_converter import MMTRetrievalConverter
from mm_sbert.convert.oscar_converter import OscarConverter
from mm_sbert.convert.state_dict_mapping import HEAD_SCORES, CheckpointMismatchError
from mm_sbert.models.loading import MODEL_FOLDER_KIND
from mm_sbert.storage import check_output_path

# docs/cli.md: 1 for a failure, 2 for missing or invalid input.
EXIT_FAILURE = 1
EXIT_INVALID_INPUT = 2

CONVERTERS: dict[str, type[CheckpointConverter]] = {
    "m3p": M3PConverter,
    "mmt-retrieval": MMTRetrievalConverter,
    "oscar": OscarConverter,
}


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``convert`` arguments; pass a sub-parser to mount them under another CLI."""
    parser = parser or argparse.ArgumentParser(
        prog="mm-sbert convert",
        description="Convert an original OSCAR / M3P / MMT-Retrieval checkpoint into a sentence-transformers folder "
        "that loads as both MMSentenceTransformer and MMCrossEncoder.",
    )
    parser.add_argument("--format", required=True, choices=sorted(CONVERTERS), help="layout of the checkpoint")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="OSCAR: checkpoint folder or pytorch_model.bin; M3P: the .pth file or its folder; "
        "mmt-retrieval: the unzipped model folder",
    )
    parser.add_argument("--config", help="config json (OSCAR: BertConfig + img_feature_dim; M3P: model params)")
    parser.add_argument("--tokenizer", help="tokenizer folder or hub id (M3P: an XLM-R tokenizer, xlm-roberta-base)")
    parser.add_argument("--output", required=True, help="folder to write the converted model to")
    parser.add_argument("--region-feature-dim", type=int, help="expected region feature width (2048 for OSCAR/M3P)")
    parser.add_argument("--max-seq-length", type=int, help="text tokens per input, [CLS]/[SEP] included")
    parser.add_argument("--max-regions", type=int, help="image regions per input")
    parser.add_argument("--n-heads", type=int, help="M3P only: attention heads (default: config, else hidden/64)")
    parser.add_argument(
        "--allow-unexpected", action="store_true", help="drop (and report) checkpoint keys no rule knows"
    )
    parser.add_argument(
        "--head-score",
        choices=HEAD_SCORES,
        default="softmax",
        help="what a 2-way softmax head becomes: softmax = one logit w1 - w0, the original's match probability "
        "softmax(logits)[1] (default); class1-logit = w1, the raw logits[:, 1], which ranks pairs exactly as "
        "MMT-Retrieval's evaluators and retrieval script do",
    )
    parser.add_argument(
        "--fresh-head",
        action="store_true",
        help="start a random cross-encoder head instead of the checkpoint's (a fine-tuned classifier, or M3P's "
        "image-text matching head, which otherwise becomes the head)",
    )
    parser.add_argument(
        "--add-od-labels",
        choices=["auto", "yes", "no"],
        default="auto",
        help="OSCAR only: the checkpoint was fine-tuned with object labels as a second text segment (OSCAR's "
        "--add_od_labels), so the model reads image tags the same way; auto (default): as the checkpoint's "
        "training_args.bin says, else no",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="read checkpoints that pickle Python objects besides tensors (unpickling can run code: trusted "
        "sources only)",
    )
    return parser


def run(args: argparse.Namespace) -> ConvertedModel:
    """Convert and save; see :func:`main` for the exit codes."""
    converted = convert(args)
    converted.save(args.output)
    return converted


def convert(args: argparse.Namespace) -> ConvertedModel:
    """Read and convert the checkpoint the arguments name, writing nothing."""
    options = {
        "region_feature_dim": args.region_feature_dim,
        "max_seq_length": args.max_seq_length,
        "max_regions": args.max_regions,
        "allow_unexpected": args.allow_unexpected,
        "trust_pickle": args.trust_pickle,
        "head_score": args.head_score,
        "fresh_head": args.fresh_head,
    }
    if args.format == "m3p":
        options["n_heads"] = args.n_heads
    if args.add_od_labels != "auto":
        if args.format != "oscar":
            raise ValueError(f"--add-od-labels applies to --format oscar only, not {args.format}")
        options["add_od_labels"] = args.add_od_labels == "yes"
    return CONVERTERS[args.format](**options).convert(args.checkpoint, args.config, args.tokenizer)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code: 0 converted, 2 a missing, unreadable or refused input
    (checkpoint, config, tokenizer, bad arguments), 1 the output could not be written."""
    return run_command(build_parser().parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """Convert and save as the parsed ``args`` of :func:`build_parser` say (``mm-sbert convert`` mounts the same
    arguments), printing the outcome; returns :func:`main`'s exit code."""
    try:
        # The output may not be the checkpoint, hold it, or be a folder of the user's: checked before any work.
        check_output_path(
            args.output,
            MODEL_FOLDER_KIND,
            folder=True,
            inputs=[path for path in (args.checkpoint, args.config, args.tokenizer) if path and os.path.exists(path)],
        )
        converted = convert(args)
    except (CheckpointMismatchError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    try:
        converted.save(args.output)
    except OSError as exc:
        print(f"error: could not write the converted model to {args.output}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(converted.report.summary())
    print(f"Saved to {args.output} (load with MMSentenceTransformer / MMCrossEncoder)")
    return 0
