"""Convert an original checkpoint. All arguments go to the converter; `mm-sbert convert --help` lists them."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No arguments of its own: main() passes everything after `convert` on to the converter."""


def run(args: argparse.Namespace) -> int:
    from mm_sbert.convert import main as convert_main

    try:
        return convert_main(list(args.converter_args))
    except SystemExit as exc:  # argparse inside the converter exits for --help and bad arguments
        return exc.code if isinstance(exc.code, int) else 2
