"""``mm-sbert``: the command line of mm_sbert (also ``python -m mm_sbert``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mm_sbert.cli import convert, demo, evaluate, featurize, index, push, search, train
from mm_sbert.cli.common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CLIError
from mm_sbert.errors import MMSbertError
from mm_sbert.version import __version__

SUBCOMMANDS = (demo, featurize, train, evaluate, index, search, convert, push)

EPILOG = """\
exit codes: 0 success, 1 unexpected failure, 2 bad arguments or missing/invalid input files,
            3 an optional package not installed, 130 interrupted.
Run `mm-sbert COMMAND --help` for a command's options."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mm-sbert",
        description="Image-text retrieval with sentence-transformers: bi-encoder retrieval, cross-encoder reranking "
        "(Retrieve Fast, Rerank Smart).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mm_sbert {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="log progress details (INFO level)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on any error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    # parse_known_args: `convert` hands every argument it does not know to the converter's own parser.
    args, extra = parser.parse_known_args(argv)
    if args.command == "convert":
        args.converter_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.run(args) or EXIT_OK
    except (CLIError, MMSbertError) as exc:
        # Every refusal of the package (a bad input file, an unsafe output, an output in use...) is an input error.
        if args.debug:
            raise
        print(f"mm-sbert {args.command}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_USAGE)
    except KeyboardInterrupt:
        print(f"mm-sbert {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one readable line unless --debug
        if args.debug:
            raise
        print(
            f"mm-sbert {args.command}: failed: {type(exc).__name__}: {exc}\n"
            "(run again with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
