"""A self-contained HTML page of search hits (thumbnails embedded), written only where mm_sbert may write."""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

from mm_sbert.storage import atomic_write_bytes, check_output_path, exclusive_output, output_marker

OUTPUT_KIND = "search-page"


def sigmoid(x: float) -> float:
    """The probability of a cross-encoder logit."""
    return 1.0 / (1.0 + math.exp(-x))


def thumbnail_data_uri(path: str, size: int = 160) -> str:
    """A PNG thumbnail of an image file as a data URI, so the page needs no other file."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        if max(image.size) < size:  # small images (e.g. synthetic scenes) are enlarged so they stay visible
            scale = size / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def check_page_path(path: str, inputs: Iterable[str | None] = ()) -> str:
    """``path`` as an absolute path, refused (:class:`~mm_sbert.errors.UnsafeOutputError`) unless it is new or a
    page mm_sbert wrote, and none of ``inputs`` (the index folder, the image folder, the models)."""
    return str(check_output_path(path, OUTPUT_KIND, folder=False, inputs=inputs, what="The results page"))


def write_results_page(
    path: str, query: str, hits: Sequence[Any], images: Sequence[str] | None = None, inputs: Iterable[str | None] = ()
) -> None:
    """Write a self-contained results page: the query, then one card per hit with its thumbnail and scores.

    The page carries mm_sbert's ``search-page`` mark, so a rerun may replace it but nothing else is ever
    overwritten: ``path`` must be new or such a page, and none of ``inputs`` (see :func:`check_page_path`).

    Args:
        path: the HTML file.
        query: the caption searched for.
        hits: the :class:`~mm_sbert.retrieval.Hit` list, best first.
        images: the image file of each hit (default: the hits' ids); pass paths already checked to lie inside the
            folder the user chose.
        inputs: paths the search read, which the page may not replace.
    """
    target = check_page_path(path, inputs)
    images = [str(hit.id) for hit in hits] if images is None else images
    cards = []
    for rank, (hit, image) in enumerate(zip(hits, images), 1):
        ce = "" if hit.ce_score is None else f"CE {sigmoid(hit.ce_score):.3f} &middot; "
        name, title = html.escape(os.path.basename(image)), html.escape(image)
        cards.append(
            f'<figure class="hit"><img src="{thumbnail_data_uri(image)}" alt="{name}" title="{title}">'
            f"<figcaption><b>#{rank}</b> {name}<br>{ce}BE {hit.be_score:.3f}</figcaption></figure>"
        )
    page = f"""<!DOCTYPE html>
<!-- {output_marker(OUTPUT_KIND)} -->
<html lang="en"><head><meta charset="utf-8"><title>mm-sbert search: {html.escape(query)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
.hits {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.hit {{ margin: 0; padding: .5em; border: 1px solid #ccc; border-radius: 6px; text-align: center; }}
.hit img {{ display: block; width: 160px; height: 160px; object-fit: contain; image-rendering: pixelated; }}
figcaption {{ font-size: 85%; margin-top: .3em; }}
</style></head>
<body>
<h1>Query</h1>
<p class="query">{html.escape(query)}</p>
<h2>Top {len(hits)} images</h2>
<div class="hits">
{chr(10).join(cards)}
</div>
<p><small>CE: cross-encoder probability (reranking), BE: bi-encoder cosine similarity (retrieval).</small></p>
</body></html>
"""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with exclusive_output(target, what="The results page"):
        atomic_write_bytes(target, page.encode("utf-8"))
