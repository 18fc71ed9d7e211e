from __future__ import annotations

from pathlib import Path

from mm_sbert.cli.reference import render_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_reference_page_is_up_to_date():
    # Regenerate with: python -m mm_sbert.cli.reference > docs/cli.md
    assert DOCS.read_text(encoding="utf-8") == render_markdown()


def test_reference_documents_every_option():
    page = render_markdown()
    for option in ("--quick", "--steps", "--html", "--rerank-k", "--synthetic", "--modes", "--private", "--dtype"):
        assert option in page
