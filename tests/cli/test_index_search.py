from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
from cli_helpers import run_cli, scene_folder, tiny_model_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Appended to the page under test: after load, write each image's natural size into the DOM for --dump-dom.
IMAGE_PROBE = """<script>
window.addEventListener("load", () => {
  const report = document.createElement("pre");
  report.id = "image-report";
  report.textContent = JSON.stringify([...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight]));
  document.body.appendChild(report);
});
</script>"""


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> str:
    class Capture:  # capsys is function-scoped; the index is built once per module
        def readouterr(self):
            return type("Captured", (), {"out": "", "err": ""})()

    path = str(tmp_path_factory.mktemp("index") / "scenes.index")
    code, _, _ = run_cli(Capture(), "index", f"{scene_folder()}/images", "--model", tiny_model_dir(), "--output", path)
    assert code == 0
    return path


def test_index_then_search_prints_ranked_images_with_both_scores(capsys, index_dir):
    code, out, err = run_cli(capsys, "search", index_dir, "a", "red", "circle", "--top-k", "3", "--rerank-k", "5")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "Query: a red circle"
    rows = [
        re.match(r"^\s*(\d)\s+(\d\.\d{3})\s+(-?\d+\.\d{3})\s+(-?\d\.\d{3})\s+(\S+\.png)$", line) for line in lines[2:]
    ]
    assert all(rows) and [int(row.group(1)) for row in rows] == [1, 2, 3]
    ce_logits = [float(row.group(3)) for row in rows]
    assert ce_logits == sorted(ce_logits, reverse=True), "hits are ordered by the cross-encoder, best first"
    assert all(os.path.isfile(row.group(5)) for row in rows)


def test_search_json_matches_a_direct_cooperative_search(capsys, index_dir):
    from mm_sbert import MMSentenceTransformer
    from mm_sbert.retrieval import CooperativeRetriever

    code, out, _ = run_cli(
        capsys, "search", index_dir, "a large blue star", "--json", "--top-k", "4", "--rerank-k", "6"
    )
    assert code == 0
    hits = [json.loads(line) for line in out.splitlines()]
    retriever = CooperativeRetriever(MMSentenceTransformer(tiny_model_dir()), top_k=6)
    retriever.open(os.path.join(index_dir, "embeddings"))
    expected = retriever.search("a large blue star")[:4]
    assert [hit["image"] for hit in hits] == [hit.id for hit in expected]
    assert [hit["ce_score"] for hit in hits] == pytest.approx([hit.ce_score for hit in expected], abs=1e-5)
    assert [hit["be_score"] for hit in hits] == pytest.approx([hit.be_score for hit in expected], abs=1e-5)


def test_search_errors(capsys, tmp_path, index_dir):
    code, _, err = run_cli(capsys, "search", tmp_path, "x")
    assert code == 2 and "is not an index written by `mm-sbert index`" in err
    code, _, err = run_cli(capsys, "search", index_dir, "x", "--top-k", "0")
    assert code == 2 and "--top-k and --rerank-k must be >= 1" in err


def test_html_page_lists_query_and_thumbnails(capsys, index_dir, tmp_path):
    page = tmp_path / "out" / "results.html"
    code, out, err = run_cli(capsys, "search", index_dir, "a small green square", "--top-k", "3", "--html", page)
    assert code == 0, err
    text = page.read_text()
    assert '<p class="query">a small green square</p>' in text
    assert text.count('<img src="data:image/png;base64,') == 3, "thumbnails are embedded: the page stands alone"


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (Debian package `chromium`) is not installed")
def test_html_page_shows_the_images_in_headless_chromium(capsys, index_dir, tmp_path):
    page = tmp_path / "results.html"
    code, _, err = run_cli(capsys, "search", index_dir, "a small green square", "--top-k", "3", "--html", page)
    assert code == 0, err
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", IMAGE_PROBE + "</body>"))
    result = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r'<pre id="image-report">(.*?)</pre>', result.stdout)
    assert match, f"Chromium did not render the page: {result.stderr[-2000:]}"
    images = json.loads(match.group(1))
    assert len(images) == 3
    # Every thumbnail decoded: complete, with the 160-px size the page embeds (synthetic scenes are 64 px).
    assert all(complete and width == 160 and height == 160 for complete, width, height in images), images
