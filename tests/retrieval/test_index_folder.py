"""The index folder as the library writes and opens it: the API refuses what the command line refuses."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mm_sbert.errors import ModelMismatchError, OutputInUseError, UnsafeOutputError, UnsafePathError
from mm_sbert.retrieval import CooperativeRetriever, EmbeddingIndex, IndexWriter
from mm_sbert.storage import file_record, owned_folder_kind

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "cli_index_v2")
COLORS = ["red", "green", "blue", "yellow", "white", "black"]


@pytest.fixture(scope="module")
def views():
    from conftest import build_views

    return build_views()


@pytest.fixture
def image_folder(tmp_path) -> list[str]:
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for index, color in enumerate(COLORS):
        image = Image.new("RGB", (32, 32), color)
        ImageDraw.Draw(image).rectangle([index * 4, 0, index * 4 + 8, 16], fill=COLORS[(index + 2) % len(COLORS)])
        path = folder / f"img{index}.png"
        image.save(path)
        paths.append(str(path))
    return paths


@pytest.fixture
def index_folder(tmp_path, views, image_folder) -> str:
    path = str(tmp_path / "collection.index")
    CooperativeRetriever(views[0], show_progress_bar=False).index(image_folder, ids=image_folder, path=path)
    return path


def test_open_refuses_another_bi_encoder(index_folder, views):
    from conftest import build_views

    other, _ = build_views(seed=1)
    with pytest.raises(ModelMismatchError, match="not the one that built the index"):
        CooperativeRetriever(other).open(index_folder)
    hits = CooperativeRetriever(*views, top_k=3).open(index_folder).search("a red square")
    assert len(hits) == 3


def test_open_reads_no_image_outside_the_image_root(index_folder, views, tmp_path, monkeypatch):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (32, 32), "red").save(outside)
    embeddings = os.path.join(index_folder, "embeddings")
    for name in ("ids.json", "items.json"):
        paths = json.loads(open(os.path.join(embeddings, name)).read())
        with open(os.path.join(embeddings, name), "w") as f:
            json.dump([str(outside)] + paths[1:], f)
    manifest_path = os.path.join(embeddings, "manifest.json")
    manifest = json.loads(open(manifest_path).read())
    manifest["files"] = {name: file_record(os.path.join(embeddings, name)) for name in manifest["files"]}
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)  # a checksum is not a signature
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    retriever = CooperativeRetriever(*views, top_k=6).open(index_folder)
    with pytest.raises(UnsafePathError, match="secret.png' lies outside"):
        retriever.search("a red square")
    assert str(outside) not in opened


def test_a_link_among_the_images_cannot_widen_the_image_root(views, image_folder, tmp_path):
    secret = tmp_path / "private" / "secret.png"
    secret.parent.mkdir()
    Image.new("RGB", (32, 32), "red").save(secret)
    link = os.path.join(os.path.dirname(image_folder[0]), "img9.png")
    os.symlink(secret, link)
    path = str(tmp_path / "linked.index")
    with pytest.raises(UnsafePathError, match=r"img9\.png' leads to '.*secret\.png', outside '.*images'"):
        CooperativeRetriever(views[0], show_progress_bar=False).index([*image_folder, link], path=path)
    assert not os.path.exists(path)
    # The root is the images' folder as named, not its real place: a collection reached through a link still opens.
    alias = tmp_path / "alias"
    alias.symlink_to(os.path.dirname(image_folder[0]), target_is_directory=True)
    named = [str(alias / os.path.basename(image)) for image in image_folder]
    CooperativeRetriever(views[0], show_progress_bar=False).index(named, path=path)
    assert json.loads(open(os.path.join(path, "mm_sbert_index.json")).read())["image_root"] == str(alias)
    retriever = CooperativeRetriever(*views, top_k=2).open(path)
    hit = retriever.search("a red square")[0]
    assert os.path.samefile(retriever.image_path(hit.corpus_id), named[hit.corpus_id])


def test_image_root_relocates_a_moved_collection(index_folder, views, image_folder, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(os.path.dirname(image_folder[0]), moved)
    shutil.rmtree(os.path.dirname(image_folder[0]))
    with pytest.raises(FileNotFoundError, match="pass image_root"):
        CooperativeRetriever(*views).open(index_folder)
    retriever = CooperativeRetriever(*views, top_k=6).open(index_folder, image_root=str(moved))
    hits = retriever.search("a blue sky")
    assert all(retriever.image_path(hit.corpus_id).startswith(str(moved.resolve())) for hit in hits)


def test_a_folder_written_by_the_old_command_line_still_opens_and_answers_the_same(tmp_path):
    from mm_sbert import MMSentenceTransformer

    folder = tmp_path / "fixture"
    shutil.copytree(FIXTURE, folder)
    model = MMSentenceTransformer(os.path.join(ROOT, "tests", "fixtures", "release_0_1_0_joint", "model"))
    retriever = CooperativeRetriever(model, top_k=3).open(str(folder / "index"), image_root=str(folder / "images"))
    hits = retriever.search("a red circle")
    expected = [json.loads(line) for line in (folder / "expected_search.jsonl").read_text().splitlines()]
    assert [os.path.basename(retriever.image_path(hit.corpus_id)) for hit in hits] == [
        os.path.basename(row["image"]) for row in expected
    ]
    assert [hit.ce_score for hit in hits] == pytest.approx([row["ce_score"] for row in expected], abs=1e-5)
    assert [hit.be_score for hit in hits] == pytest.approx([row["be_score"] for row in expected], abs=1e-5)
    assert all(retriever.image_path(hit.corpus_id).startswith(str((folder / "images").resolve())) for hit in hits)
    # A rebuild over it is allowed: an index folder mm_sbert wrote before folders were marked.
    assert owned_folder_kind(folder / "index") == "embedding-index"


def test_top_k_is_the_hits_shown_and_rerank_k_the_candidates_reranked(index_folder, views):
    class Recording:
        def __init__(self, cross_encoder):
            self.cross_encoder, self.pairs = cross_encoder, []

        def predict(self, pairs, **kwargs):
            self.pairs.extend(pairs)
            return self.cross_encoder.predict(pairs, **kwargs)

    recording = Recording(views[1])
    retriever = CooperativeRetriever(views[0], recording, top_k=2, rerank_k=5).open(index_folder)
    hits = retriever.search("a red square")
    assert len(hits) == 2 and len(recording.pairs) == 5
    recording.pairs.clear()
    assert len(retriever.search("a red square", top_k=3, rerank_k=4)) == 3 and len(recording.pairs) == 4
    with pytest.raises(ValueError, match="rerank_k must be an integer >= 1"):
        retriever.search("a red square", rerank_k=0)


def test_writers_refuse_to_replace_what_mm_sbert_did_not_write(tmp_path, views, image_folder):
    thesis = tmp_path / "work" / "thesis.tex"
    thesis.parent.mkdir()
    thesis.write_text("my thesis")
    with pytest.raises(UnsafeOutputError, match="did not write"):
        EmbeddingIndex(np.eye(3, dtype=np.float32)).save(str(thesis.parent))
    assert thesis.read_text() == "my thesis"
    images = os.path.dirname(image_folder[0])
    with pytest.raises(UnsafeOutputError, match="an input of the same command"):
        CooperativeRetriever(views[0], show_progress_bar=False).index(image_folder, path=images)
    assert sorted(os.listdir(images)) == [os.path.basename(path) for path in image_folder]


def test_finished_index_folders_are_marked_and_a_rerun_replaces_them(index_folder, views, image_folder):
    assert owned_folder_kind(index_folder) == "embedding-index"
    assert owned_folder_kind(os.path.join(index_folder, "embeddings")) == "embedding-index"
    CooperativeRetriever(views[0], show_progress_bar=False).index(image_folder[:3], path=index_folder)
    assert len(CooperativeRetriever(views[0]).open(index_folder).embedding_index) == 3


def test_a_second_writer_of_the_same_index_is_refused(tmp_path):
    path = str(tmp_path / "index")
    with IndexWriter(path, count=2, dim=3) as first:
        with pytest.raises(OutputInUseError, match="in use by process"):
            IndexWriter(path, count=2, dim=3).__enter__()
        first.write(np.eye(2, 3, dtype=np.float32))
    assert len(EmbeddingIndex.open(path)) == 2


def test_a_rebuild_without_enough_free_space_is_refused_and_the_old_index_kept(tmp_path, monkeypatch):
    import collections

    from mm_sbert.retrieval import embedding_index

    path = str(tmp_path / "index")
    EmbeddingIndex(np.eye(4, dtype=np.float32), ids=["a", "b", "c", "d"]).save(path)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(embedding_index.shutil, "disk_usage", lambda folder: usage(10**9, 10**9, 1000))
    with pytest.raises(OSError, match="Not enough free space") as error:
        EmbeddingIndex(np.eye(4, dtype=np.float32), ids=["e", "f", "g", "h"]).save(path)
    assert error.value.errno == 28
    assert EmbeddingIndex.open(path).ids == ["a", "b", "c", "d"]


def test_rows_are_written_with_plain_file_writes_not_a_memory_map(tmp_path, monkeypatch):
    real_memmap = np.memmap

    def read_only_memmap(*args, mode="r+", **kwargs):
        if mode not in ("r", "c"):  # reading a fully written file back is safe; writing through a map is not
            raise AssertionError("a write through a memory map can SIGBUS on a full disk")
        return real_memmap(*args, mode=mode, **kwargs)

    monkeypatch.setattr(np, "memmap", read_only_memmap)
    path = str(tmp_path / "index")
    rows = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    with IndexWriter(path, count=50, dim=8, normalized=False) as writer:
        writer.write(rows[:20])
        writer.write(rows[20:])
        writer.set_precision("int8")
    np.testing.assert_array_equal(np.load(os.path.join(path, "embeddings.npy")), rows)


def test_embedding_index_and_milvus_index_share_one_interface():
    from mm_sbert.retrieval import BaseIndex, MilvusIndex

    assert issubclass(EmbeddingIndex, BaseIndex) and issubclass(MilvusIndex, BaseIndex)
    for verb in ("build", "add", "search", "save", "open", "row_id", "close"):
        assert callable(getattr(EmbeddingIndex, verb)) and callable(getattr(MilvusIndex, verb))
    index = EmbeddingIndex.build(np.eye(3, 4, dtype=np.float32), ids=["a", "b", "c"])
    index.add(np.eye(1, 4, 3, dtype=np.float32), ids=["d"])
    assert len(index) == 4 and index.search(np.eye(1, 4, 3, dtype=np.float32), 1)[1].tolist() == [[3]]


def test_a_cross_encoder_that_cannot_read_the_images_is_refused_when_opening(index_folder, views):
    import copy

    blind = copy.deepcopy(views[1])
    blind[0].featurizer = None  # a model trained on stored features only
    with pytest.raises(ValueError, match="no image featurizer"):
        CooperativeRetriever(views[0], blind).open(index_folder)
    CooperativeRetriever(views[0]).open(index_folder)  # without reranking, nothing to featurize


def test_an_index_builds_where_an_owned_folder_declares_one(tmp_path, views, image_folder):
    """The demo's folder declares its ``index`` child; the index's own rows folder inside it must not be refused."""
    from mm_sbert.demo.run_demo import DEMO_CHILDREN, DEMO_KIND, DEMO_PATTERNS
    from mm_sbert.storage import mark_owned_folder

    demo = tmp_path / "demo"
    demo.mkdir()
    mark_owned_folder(demo, DEMO_KIND, patterns=DEMO_PATTERNS, children=DEMO_CHILDREN)
    retriever = CooperativeRetriever(views[0], show_progress_bar=False)
    retriever.index(image_folder, ids=image_folder, path=str(demo / "index"))
    assert owned_folder_kind(demo / "index") == "embedding-index"
    assert not [name for name in os.listdir(demo) if ".tmp-" in name]  # the staging folder was published
    hits = CooperativeRetriever(views[0], top_k=2).open(str(demo / "index")).search("a red square")
    assert len(hits) == 2
    # Rebuilt in place, as the demo's suggested command does on a second run.
    retriever.index(image_folder, ids=image_folder, path=str(demo / "index"))
    with pytest.raises(UnsafeOutputError, match="demo-output"):
        retriever.index(image_folder, ids=image_folder, path=str(demo / "other_index"))
