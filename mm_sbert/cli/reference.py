"""Render the CLI reference page (docs/cli.md) from the argparse definitions, so the docs cannot drift."""

from __future__ import annotations

import argparse
import os

from mm_sbert.cli.common import EXIT_CODES

HEADER = f"""# Command line: `mm-sbert`

`mm-sbert` (also `python -m mm_sbert`) wraps the library for shell use. Every command has `--help`; long work
shows progress bars. Add `--debug` before the command for full tracebacks, `--verbose` for log messages.

| exit code | meaning |
|---|---|
{chr(10).join(f"| {code} | {meaning} |" for code, meaning in EXIT_CODES.items())}

Every numeric option is checked where it is parsed (`--lr -1`, `--batch-size 0`, `--threads -1`, `--device cuda` on
a CPU-only build exit 2 naming the option), and every input file is read and checked before any model loads.
Every command that reads captions (`--data`) reads the same formats: CSV / TSV / JSON lines with one caption a row
(`caption`, `image`), JSON lines with one image a line and a caption list (`--caption-key`, default `en`), a COCO
or Karpathy JSON, or a folder holding `captions.jsonl`.

This page is generated from the command definitions (`python -m mm_sbert.cli.reference > docs/cli.md`).
"""


def render_markdown() -> str:
    """The reference page: the top-level help and each subcommand's help, in order."""
    from mm_sbert.cli.main import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width; fix it so the page is reproducible
    try:
        parser = build_parser()
        sections = [HEADER, "## Overview\n", "```text\n" + parser.format_help().rstrip() + "\n```\n"]
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for name, subparser in subparsers.choices.items():
            sections.append(f"## `mm-sbert {name}`\n")
            sections.append("```text\n" + subparser.format_help().rstrip() + "\n```\n")
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(sections)


if __name__ == "__main__":
    print(render_markdown(), end="")
