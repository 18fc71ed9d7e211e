"""``mm-sbert``: the command line of mm_sbert (also ``python -m mm_sbert``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from mm_sbert.cli.common import EXIT_CODES
from mm_sbert.version import __version__

# name -> (one-line help, thread-policy stage or None for commands that do not compute). A command's module,
# mm_sbert.cli.<name> (and torch... behind it), is imported only for the command that runs, so that `mm-sbert --help`
# answers at once; its add_arguments() and run() are the command (convert's are mm_sbert.convert's own).
COMMANDS: dict[str, tuple[str, str | None]] = {
    "demo": ("train a small bi-encoder and a cross-encoder on generated scenes; compare BE, CE and Coop", "train"),
    "featurize": ("featurize images once into a feature store (region features on disk)", "featurize"),
    "train": ("fine-tune a bi-encoder (be), a cross-encoder (ce) or a joint model (joint)", "train"),
    "evaluate": ("image-text retrieval recall of BE / CE / Coop, both directions, with timings", "compute"),
    "index": ("encode an image folder with the bi-encoder into a searchable index", "encode"),
    "search": ("search an indexed image folder for a caption (BE retrieval + CE reranking)", "compute"),
    "convert": ("convert an OSCAR / M3P / MMT-Retrieval checkpoint into an mm_sbert model folder", None),
    "push": ("upload a saved model folder to the Hugging Face Hub", None),
}
SUBCOMMANDS = tuple(COMMANDS)

EPILOG = "exit codes:\n" + "".join(f"  {code:>3}  {meaning}\n" for code, meaning in EXIT_CODES.items())
EPILOG += "Run `mm-sbert COMMAND --help` for a command's options."


def threads_argument(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of threads, got {text!r}")
    return int(text)


def chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first argument that is not a global option)."""
    for argument in argv:
        if not argument.startswith("-"):
            return argument if argument in COMMANDS else None
    return None


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported and adds its options (``"*"``: every command's)."""
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
    for name, (help_line, stage) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_line)
        if command in ("*", name) and name == "convert":  # the arguments and entry point of mm_sbert.convert
            from mm_sbert.convert import convert_command

            subparser.description = f"{help_line} (see docs/reproduce_paper.md)"
            subparser.set_defaults(run=convert_command.run_command)
            convert_command.build_parser(subparser)
        elif command in ("*", name):
            module = importlib.import_module(f"mm_sbert.cli.{name}")
            subparser.description = module.__doc__  # a command module's docstring is its --help description
            subparser.set_defaults(run=module.run)
            module.add_arguments(subparser)
            if stage is not None:  # the same --threads on every command that computes
                # fmt: off
                subparser.add_argument("--threads", type=threads_argument,
                    help="CPU threads for torch, FAISS, BLAS and ONNX Runtime (default: the cores other processes "
                    "leave free, see mm_sbert.ThreadPolicy)")
                # fmt: on
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(chosen_command(argv))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from mm_sbert.cli.common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CLIError
    from mm_sbert.errors import MMSbertError
    from mm_sbert.memory_policy import retain_freed_memory
    from mm_sbert.thread_policy import using_thread_policy

    stage = COMMANDS[args.command][1]
    try:
        if stage is None:
            return args.run(args) or EXIT_OK
        # The one place a command's threads and memory reuse are set: --threads for every stage, or the free cores
        # per stage; the process owns its heap.
        retain_freed_memory()
        with using_thread_policy(args.threads, stage):
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
