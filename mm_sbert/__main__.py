"""``python -m mm_sbert``: the ``mm-sbert`` command line."""

from __future__ import annotations

from mm_sbert.cli.main import console_main

if __name__ == "__main__":
    console_main()
