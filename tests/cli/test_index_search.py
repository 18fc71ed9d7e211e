from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
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
    assert code == 2 and "argument --top-k/-k: must be >= 1, got 0" in err


@pytest.mark.parametrize("lam", [0.0, 0.25, 1.0])
def test_search_score_combination_orders_by_normalised_mix_of_both_scores(capsys, index_dir, lam):
    code, out, err = run_cli(
        capsys, "search", index_dir, "a large blue star", "--json", "--top-k", "6", "--rerank-k", "6",
        "--score", "combination_normalized", "--lam", str(lam),
    )  # fmt: skip
    assert code == 0, err
    hits = [json.loads(line) for line in out.splitlines()]
    be = np.array([hit["be_score"] for hit in hits])
    ce_prob = 1 / (1 + np.exp(-np.array([hit["ce_score"] for hit in hits])))
    expected = lam * (be - be.min()) / np.ptp(be) + (1 - lam) * (ce_prob - ce_prob.min()) / np.ptp(ce_prob)
    assert [hit["score"] for hit in hits] == pytest.approx(expected.tolist(), abs=1e-5)
    assert np.all(np.diff(expected) <= 1e-6), "hits are ordered by the combined score"
    if lam == 1.0:
        assert np.all(np.diff(be) <= 1e-6), "lam 1 keeps the bi-encoder's order"
    if lam == 0.0:
        assert np.all(np.diff(ce_prob) <= 1e-6), "lam 0 is the cross-encoder's order"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lam", "1.5"], "argument --lam: must be in [0, 1], got 1.5"),
        (["--lam", "nan"], "argument --lam: must be in [0, 1], got nan"),
        (["--lam", "half"], "argument --lam: expected a number in [0, 1], got 'half'"),
        (["--score", "combination", "--no-rerank"], "cannot be used with --no-rerank"),
    ],
)
def test_search_score_options_refuse_bad_values(capsys, index_dir, extra, message):
    code, _, err = run_cli(capsys, "search", index_dir, "a star", *extra)
    assert code == 2 and message in err


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


def _index(capsys, output, images=None, *extra) -> tuple[int, str, str]:
    return run_cli(capsys, "index", images or f"{scene_folder()}/images", "-m", tiny_model_dir(), "-o", output, *extra)


@pytest.fixture
def fresh_index(capsys, tmp_path) -> str:
    """An index of its own, for tests that damage it."""
    path = str(tmp_path / "idx")
    code, _, err = _index(capsys, path)
    assert code == 0, err
    return path


def _rewrite_manifest(embeddings: str) -> None:
    """Recompute every checksum of an index manifest, as someone editing the files on purpose would."""
    from mm_sbert.storage import file_record

    manifest_path = os.path.join(embeddings, "manifest.json")
    manifest = json.loads(open(manifest_path).read())
    manifest["files"] = {name: file_record(os.path.join(embeddings, name)) for name in manifest["files"]}
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)


def test_index_records_model_fingerprint_image_root_and_completion(index_dir):
    config = json.loads(open(os.path.join(index_dir, "mm_sbert_index.json")).read())
    assert config["complete"] is True and config["num_images"] == 8
    assert config["image_root"] == os.path.realpath(f"{scene_folder()}/images")
    assert config["model_fingerprint"]["embedding_dim"] == 32
    assert len(config["model_fingerprint"]["probe_embedding"]) == 32


def test_search_with_another_bi_encoder_is_refused_but_a_separate_cross_encoder_reranks(capsys, index_dir, tmp_path):
    from conftest import build_views

    other, _ = build_views("bert", seed=1)  # same 32-d size, other weights
    other.save(str(tmp_path / "other"))
    code, _, err = run_cli(capsys, "search", index_dir, "a red circle", "-m", tmp_path / "other")
    assert code == 2 and "This model is not the one that built the index" in err
    # The paper's separate setting: the index's bi-encoder retrieves, another model's head reranks (no --force-model).
    code, out, err = run_cli(
        capsys, "search", index_dir, "a red circle", "--cross-encoder", tmp_path / "other", "--json", "-k", "8",
        "--rerank-k", "8",
    )  # fmt: skip
    assert code == 0, err
    separate = [json.loads(line) for line in out.splitlines()]
    joint = search_json(capsys, index_dir, "a red circle", "8", "8")
    assert sorted(hit["image"] for hit in separate) == sorted(hit["image"] for hit in joint)
    assert [hit["ce_score"] for hit in separate] != pytest.approx([hit["ce_score"] for hit in joint], abs=1e-3)
    assert run_cli(capsys, "search", index_dir, "x", "--force-model")[0] == 2, "--force-model is gone"


@pytest.mark.parametrize(
    "content, message", [("", "is empty"), ("{not json", "is not valid JSON"), ("[]", "no model")]
)
def test_search_on_an_empty_or_invalid_config_exits_2(capsys, fresh_index, content, message):
    with open(os.path.join(fresh_index, "mm_sbert_index.json"), "w") as f:
        f.write(content)
    code, _, err = run_cli(capsys, "search", fresh_index, "x")
    assert code == 2 and message in err and "JSONDecodeError" not in err


def test_search_on_a_tampered_index_exits_2(capsys, fresh_index):
    embeddings = os.path.join(fresh_index, "embeddings", "embeddings.npy")
    with open(embeddings, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x7f")
    code, _, err = run_cli(capsys, "search", fresh_index, "a red circle")
    assert code == 2 and "embeddings.npy' does not match its sha256 checksum" in err


def test_stored_image_paths_outside_the_image_root_are_never_opened(capsys, fresh_index, tmp_path, monkeypatch):
    embeddings = os.path.join(fresh_index, "embeddings")
    outside = str(tmp_path / "secret.png")
    shutil.copy(f"{scene_folder()}/images/scene_00000.png", outside)
    for name in ("ids.json", "items.json"):
        paths = json.loads(open(os.path.join(embeddings, name)).read())
        with open(os.path.join(embeddings, name), "w") as f:
            json.dump([outside] * 1 + paths[1:], f)
    _rewrite_manifest(embeddings)  # a checksum is not a signature
    opened = []
    from PIL import Image

    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    page = tmp_path / "page.html"
    code, _, err = run_cli(capsys, "search", fresh_index, "a red circle", "-k", "8", "--rerank-k", "8", "--html", page)
    assert code == 2 and "secret.png' lies outside" in err
    assert outside not in opened and not page.exists()


def test_image_root_relocates_the_collection_and_defaults_to_the_recorded_folder(capsys, index_dir, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(f"{scene_folder()}/images", moved)
    code, out, err = run_cli(capsys, "search", index_dir, "a red circle", "--json", "--image-root", moved)
    assert code == 0, err
    images = [json.loads(line)["image"] for line in out.splitlines()]
    assert len(images) == 5 and all(image.startswith(str(moved.resolve()) + os.sep) for image in images)


@pytest.mark.parametrize("target", ["mm_sbert_index.json", "embeddings/manifest.json", "embeddings"])
def test_html_refuses_to_overwrite_the_index_files(capsys, fresh_index, target):
    config = open(os.path.join(fresh_index, "mm_sbert_index.json")).read()
    code, _, err = run_cli(capsys, "search", fresh_index, "a red circle", "--html", os.path.join(fresh_index, target))
    assert code == 2 and "an input of the same command" in err
    assert open(os.path.join(fresh_index, "mm_sbert_index.json")).read() == config
    assert run_cli(capsys, "search", fresh_index, "a red circle")[0] == 0


def test_interrupted_or_failed_rebuild_keeps_the_old_index_and_a_rerun_replaces_it(capsys, tmp_path, monkeypatch):
    from mm_sbert.retrieval import IndexWriter

    write = IndexWriter.write

    def interrupted(self, embeddings):
        raise KeyboardInterrupt  # Ctrl-C while the embeddings are written

    def disk_full(self, embeddings):
        raise OSError(28, "No space left on device")

    path = str(tmp_path / "idx")
    monkeypatch.setattr(IndexWriter, "write", interrupted)
    code, _, err = _index(capsys, path)
    assert code == 130 and "was not changed; run the same command" in err
    assert sorted(os.listdir(tmp_path)) == [".idx.lock"], "nothing published, no temporary folder left"
    monkeypatch.setattr(IndexWriter, "write", write)
    assert _index(capsys, path)[0] == 0
    before = search_json(capsys, path)
    for failure in (interrupted, disk_full):
        monkeypatch.setattr(IndexWriter, "write", failure)
        code, _, err = _index(capsys, path)
        assert code in (1, 130)
        assert search_json(capsys, path) == before, "the old index still opens and answers the same"
        assert sorted(os.listdir(tmp_path)) == [".idx.lock", "idx"]
    monkeypatch.setattr(IndexWriter, "write", write)
    assert _index(capsys, path)[0] == 0


def test_index_rerun_over_the_leftovers_of_a_killed_run(capsys, tmp_path):
    # kill -9 before the config existed: only temporary files of ours; these used to make index and search refuse
    path = tmp_path / "idx"
    (path / ".embeddings.tmp-0123abcd").mkdir(parents=True)
    (path / ".embeddings.tmp-0123abcd" / "embeddings.npy").write_bytes(b"\x93NUMPY")
    (path / ".mm_sbert_index.json.tmp-89abcdef").write_text('{"mod')
    code, _, err = _index(capsys, path)
    assert code == 0, err
    assert sorted(os.listdir(path)) == [".mm_sbert_owner.json", "embeddings", "mm_sbert_index.json"]


def test_index_with_a_corrupt_image_exits_2_naming_it(capsys, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(f"{scene_folder()}/images", folder)
    (folder / "broken.png").write_bytes(b"not a png")
    code, _, err = _index(capsys, tmp_path / "idx", folder)
    error_lines = [line for line in err.splitlines() if line.startswith("mm-sbert index:")]
    assert code == 2 and len(error_lines) == 1
    assert error_lines[0].startswith("mm-sbert index: error: Could not read image file") and "broken.png" in err


def test_index_batch_size_below_one_exits_2(capsys, tmp_path):
    code, _, err = _index(capsys, tmp_path / "idx", None, "--batch-size", "0")
    assert code == 2 and "argument --batch-size: must be >= 1, got 0" in err


def search_json(capsys, folder: str, query: str = "a large blue star", top_k="4", rerank_k="6") -> list[dict]:
    code, out, err = run_cli(capsys, "search", folder, query, "--json", "--top-k", top_k, "--rerank-k", rerank_k)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_index_precision_is_saved_and_searches_like_the_exact_index(capsys, tmp_path, index_dir):
    folder = str(tmp_path / "binary.index")
    code, _, err = run_cli(
        capsys, "index", f"{scene_folder()}/images", "--model", tiny_model_dir(), "--output", folder, "--precision",
        "binary",
    )  # fmt: skip
    assert code == 0, err
    manifest = json.loads(open(os.path.join(folder, "embeddings", "manifest.json")).read())
    assert manifest["precision"] == "binary"
    assert json.loads(open(os.path.join(folder, "mm_sbert_index.json")).read())["precision"] == "binary"
    # 8 images and 4 x 6 rescored candidates: the pool is the whole collection, so the hits are the exact ones.
    binary, exact = search_json(capsys, folder), search_json(capsys, index_dir)
    assert [(hit["rank"], hit["image"]) for hit in binary] == [(hit["rank"], hit["image"]) for hit in exact]
    # Rescoring and exact search take the dot products through different BLAS calls: equal to float32 rounding.
    for key in ("be_score", "ce_score"):
        assert [hit[key] for hit in binary] == pytest.approx([hit[key] for hit in exact], abs=1e-6)


def test_index_into_embedded_milvus_then_search_it(capsys, tmp_path, index_dir):
    folder = str(tmp_path / "milvus.index")
    argv = [
        "index",
        f"{scene_folder()}/images",
        "--model",
        tiny_model_dir(),
        "--output",
        folder,
        "--backend",
        "milvus",
    ]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    config = json.loads(open(os.path.join(folder, "mm_sbert_index.json")).read())
    assert config["backend"] == "milvus" and config["uri"] == os.path.join(os.path.abspath(folder), "milvus.db")
    hits, expected = search_json(capsys, folder), search_json(capsys, index_dir)
    assert [hit["image"] for hit in hits] == [hit["image"] for hit in expected]
    assert [hit["ce_score"] for hit in hits] == pytest.approx([hit["ce_score"] for hit in expected], abs=1e-5)
    # Indexing the same folder again replaces the collection it wrote itself.
    assert run_cli(capsys, *argv)[0] == 0
    # Another output folder pointing at that URI and collection is refused: it would replace someone else's data.
    code, _, err = run_cli(capsys, *argv[:-4], "--output", tmp_path / "other", "--backend", "milvus", "--uri",
                           config["uri"])  # fmt: skip
    assert code == 2 and "already has a collection 'mm_sbert'; pass overwrite=True" in err


def test_index_backend_option_errors(capsys, tmp_path):
    base = ["index", f"{scene_folder()}/images", "--model", tiny_model_dir(), "--output", tmp_path / "x"]
    code, _, err = run_cli(capsys, *base, "--uri", tmp_path / "m.db")
    assert code == 2 and "--uri is for --backend milvus" in err
    code, _, err = run_cli(capsys, *base, "--backend", "milvus", "--precision", "int8")
    assert code == 2 and "--precision chooses the local index's search" in err
    code, _, err = run_cli(capsys, *base, "--precision", "int4")
    assert code == 2 and "invalid choice: 'int4'" in err


def test_milvus_backend_without_pymilvus_exits_3_with_the_install_command(capsys, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pymilvus" else find_spec(name))
    folder = tmp_path / "milvus.index"
    images = f"{scene_folder()}/images"
    argv = ["index", images, "--model", tiny_model_dir(), "--output", folder, "--backend", "milvus"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 3 and "pip install 'mm-sbert[milvus]'" in err
    assert not folder.exists(), "nothing is written before the check"


def test_search_on_an_index_without_a_fingerprint_warns_that_the_model_is_unchecked(capsys, fresh_index):
    config_path = os.path.join(fresh_index, "mm_sbert_index.json")
    config = json.loads(open(config_path).read())
    del config["model_fingerprint"]
    with open(config_path, "w") as f:
        json.dump(config, f)
    code, out, err = run_cli(capsys, "search", fresh_index, "a red circle")
    assert code == 0, err
    assert "records no model fingerprint" in err and out.startswith("Query: a red circle")


def test_index_from_a_feature_store_stores_the_embeddings_of_featurizing(capsys, tmp_path, index_dir):
    store, folder, images = tmp_path / "store", str(tmp_path / "stored.index"), f"{scene_folder()}/images"
    code, _, err = run_cli(capsys, "featurize", images, "--output", store, "--model", tiny_model_dir())
    assert code == 0, err
    code, _, err = _index(capsys, folder, None, "--features", store)
    assert code == 0, err
    stored, featurized = (np.load(os.path.join(f, "embeddings", "embeddings.npy")) for f in (folder, index_dir))
    np.testing.assert_allclose(stored, featurized, atol=1e-5, rtol=0)
    # A store lacking images fails before anything is written, naming one.
    partial = tmp_path / "partial"
    image = f"{scene_folder()}/images/scene_00000.png"
    code, _, err = run_cli(capsys, "featurize", image, "--output", partial, "--model", tiny_model_dir())
    code, _, err = _index(capsys, str(tmp_path / "other.index"), None, "--features", partial)
    assert code == 2 and "of the images to index" in err


def test_search_reranks_in_onnx_runtime_like_eager_and_exports_once(capsys, tmp_path, index_dir):
    pytest.importorskip("onnx", reason="exporting needs the `onnx` package (pip install onnx)")
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir(), model)  # the export is written into the model folder
    query = ["a large blue star", "--json", "--top-k", "4", "--rerank-k", "6", "--model", str(model)]
    code, out, _ = run_cli(capsys, "search", index_dir, *query)
    assert code == 0
    eager = [json.loads(line) for line in out.splitlines()]
    code, out, err = run_cli(capsys, "search", index_dir, *query, "--ce-backend", "onnx")
    assert code == 0, err
    assert "Exporting the cross-encoder" in err and (model / "onnx" / "model.onnx").is_file()
    fast = [json.loads(line) for line in out.splitlines()]
    assert [hit["image"] for hit in fast] == [hit["image"] for hit in eager]
    assert [hit["ce_score"] for hit in fast] == pytest.approx([hit["ce_score"] for hit in eager], abs=1e-4)
    code, _, err = run_cli(capsys, "search", index_dir, *query, "--ce-backend", "onnx")
    assert code == 0 and "Exporting" not in err  # reused
    code, out, err = run_cli(capsys, "search", index_dir, *query, "--ce-backend", "onnx-int8")
    assert code == 0, err
    assert (model / "onnx" / "model_qint8.onnx").is_file() and len(out.splitlines()) == 4
    # Int8 weights round the scores: equal scores would mean the exported model was not used.
    assert [json.loads(line)["ce_score"] for line in out.splitlines()] != [hit["ce_score"] for hit in eager]


def test_search_reranks_in_bfloat16_with_a_copy_of_the_cross_encoder(capsys, index_dir):
    query = ["a large blue star", "--json", "--top-k", "6", "--rerank-k", "6"]  # every candidate shown
    code, out, _ = run_cli(capsys, "search", index_dir, *query)
    assert code == 0
    eager = [json.loads(line) for line in out.splitlines()]
    code, out, err = run_cli(capsys, "search", index_dir, *query, "--ce-backend", "bf16")
    assert code == 0, err
    fast = [json.loads(line) for line in out.splitlines()]
    # The same candidates (the bi-encoder stays float32), rescored in bfloat16: close, not equal.
    assert sorted(hit["be_score"] for hit in fast) == sorted(hit["be_score"] for hit in eager)
    assert sorted(hit["ce_score"] for hit in fast) == pytest.approx(sorted(hit["ce_score"] for hit in eager), abs=0.05)
    assert sorted(hit["ce_score"] for hit in fast) != sorted(hit["ce_score"] for hit in eager)


def test_an_index_built_from_a_feature_store_searches_and_reranks_from_the_store(capsys, tmp_path, monkeypatch):
    store, folder, images = tmp_path / "store", str(tmp_path / "stored.index"), f"{scene_folder()}/images"
    assert run_cli(capsys, "featurize", images, "--output", store, "--model", tiny_model_dir())[0] == 0
    code, _, err = _index(capsys, folder, None, "--features", store)
    assert code == 0, err
    featurized = search_json(capsys, folder, "a red circle", "4", "8")
    from PIL import Image

    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    hits = search_json(capsys, folder, "a red circle", "4", "8")
    assert opened == [], "the candidates' regions come from the store, no image is decoded"
    assert [hit["image"] for hit in hits] == [hit["image"] for hit in featurized]
    assert all(os.path.isfile(hit["image"]) and hit["ce_score"] is not None for hit in hits)


def test_search_json_with_html_keeps_stdout_a_json_lines_stream(capsys, index_dir, tmp_path):
    page = tmp_path / "page.html"
    code, out, err = run_cli(capsys, "search", index_dir, "a red circle", "--json", "--html", page)
    assert code == 0, err
    assert [json.loads(line)["rank"] for line in out.splitlines()] == [1, 2, 3, 4, 5]
    assert f"Wrote {page}" in err
    assert "mm_sbert_output=search-page" in page.read_text()[:4096]
    assert run_cli(capsys, "search", index_dir, "a blue star", "--html", page)[0] == 0, "a rerun replaces its page"
    assert '<p class="query">a blue star</p>' in page.read_text()


def test_search_html_never_overwrites_an_indexed_image_or_a_foreign_file(capsys, fresh_index, tmp_path):
    config = json.loads(open(os.path.join(fresh_index, "mm_sbert_index.json")).read())
    moved = tmp_path / "images"
    shutil.copytree(config["image_root"], moved)
    image = moved / "scene_00000.png"
    before = image.read_bytes()
    code, _, err = run_cli(capsys, "search", fresh_index, "a red circle", "--image-root", moved, "--html", image)
    assert code == 2 and "an input of the same command" in err and image.read_bytes() == before
    notes = tmp_path / "notes.html"
    notes.write_text("<p>my notes</p>")
    code, _, err = run_cli(capsys, "search", fresh_index, "a red circle", "--html", notes)
    assert code == 2 and "a file mm_sbert did not write" in err and notes.read_text() == "<p>my notes</p>"


def test_search_opens_an_index_folder_written_by_the_old_command_line(capsys, tmp_path):
    fixture = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "cli_index_v2")
    folder = tmp_path / "fixture"
    shutil.copytree(fixture, folder)
    model = os.path.join(os.path.dirname(fixture), "release_0_1_0_joint", "model")
    code, out, err = run_cli(
        capsys, "search", folder / "index", "a red circle", "--model", model, "--image-root", folder / "images",
        "--json", "--top-k", "3", "--rerank-k", "3",
    )  # fmt: skip
    assert code == 0, err
    hits = [json.loads(line) for line in out.splitlines()]
    expected = [json.loads(line) for line in (folder / "expected_search.jsonl").read_text().splitlines()]
    assert [os.path.basename(hit["image"]) for hit in hits] == [os.path.basename(hit["image"]) for hit in expected]
    assert [hit["ce_score"] for hit in hits] == pytest.approx([hit["ce_score"] for hit in expected], abs=1e-5)


def test_search_with_two_cross_encoders_reranks_by_their_mean_logit(capsys, index_dir, tmp_path):
    from conftest import build_views

    folders = []
    for seed in (1, 2):
        _, cross_encoder = build_views("bert", seed=seed)
        cross_encoder.save(str(tmp_path / f"ce{seed}"))
        folders.append(tmp_path / f"ce{seed}")

    def ce_scores(*rerankers) -> dict[str, float]:
        argv = [arg for folder in rerankers for arg in ("--cross-encoder", folder)] + ["-k", "8", "--rerank-k", "8"]
        code, out, err = run_cli(capsys, "search", index_dir, "a red circle", *argv, "--json")
        assert code == 0, err
        return {hit["image"]: hit["ce_score"] for hit in map(json.loads, out.splitlines())}

    first, second, both = ce_scores(folders[0]), ce_scores(folders[1]), ce_scores(*folders)
    assert both == pytest.approx({image: (first[image] + second[image]) / 2 for image in first}, abs=1e-4)
    assert both != pytest.approx(first, abs=1e-3) and both != pytest.approx(second, abs=1e-3)
    # A member that reads images another way cannot share the candidates' regions: exit 2, naming both folders.
    _, regions_only = build_views("bert", featurizer=False)
    regions_only.save(str(tmp_path / "regions_only"))
    argv = ["--cross-encoder", folders[0], "--cross-encoder", tmp_path / "regions_only"]
    code, _, err = run_cli(capsys, "search", index_dir, "a red circle", *argv)
    assert code == 2, err
    assert (
        f"--cross-encoder {tmp_path / 'regions_only'} featurizes images differently from --cross-encoder {folders[0]}"
        in err
    )
