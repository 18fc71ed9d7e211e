"""Saving a model through the API follows the ownership rule like every writer (issue 29): the host's save would
write into any folder, over a user's files or into an index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import build_views

from mm_sbert.errors import UnsafeOutputError
from mm_sbert.retrieval import EmbeddingIndex
from mm_sbert.storage import mark_owned_folder


@pytest.fixture(scope="module")
def views():
    return build_views("bert")


@pytest.mark.parametrize("view", [0, 1], ids=["MMSentenceTransformer", "MMCrossEncoder"])
def test_save_refuses_a_users_folder_and_leaves_it_untouched(views, tmp_path: Path, view: int) -> None:
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    for save in (views[view].save, views[view].save_pretrained):
        with pytest.raises(UnsafeOutputError, match="did not write and it is not empty"):
            save(str(folder))
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]
    assert (folder / "thesis.tex").read_text() == "years of work"


def test_save_refuses_an_index_folder_and_a_path_inside_one(views, tmp_path: Path) -> None:
    index = tmp_path / "index"
    EmbeddingIndex(np.eye(3, 4, dtype=np.float32), ids=["a", "b", "c"]).save(str(index))
    before = {p: p.read_bytes() for p in index.rglob("*") if p.is_file()}
    with pytest.raises(UnsafeOutputError, match="embedding-index"):
        views[0].save(str(index))
    with pytest.raises(UnsafeOutputError, match="lies inside"):
        views[0].save(str(index / "model"))
    assert {p: p.read_bytes() for p in index.rglob("*") if p.is_file()} == before


def test_save_replaces_its_own_model_folder_and_saves_checkpoints_a_run_declares(views, tmp_path: Path) -> None:
    views[0].save(str(tmp_path / "model"))
    views[1].save(str(tmp_path / "model"))  # a model folder mm_sbert saved: the same kind
    run = tmp_path / "run"
    run.mkdir()
    mark_owned_folder(run, "training-output", patterns=["checkpoint-*"], children={"checkpoint-*": "model"})
    views[0].save_pretrained(str(run / "checkpoint-1"))
    assert (run / "checkpoint-1" / "modules.json").is_file()
    with pytest.raises(UnsafeOutputError, match="training-output"):
        views[0].save(str(run / "notes"))


def test_onnx_export_never_overwrites_a_users_onnx_file_and_goes_into_a_model_folder(views, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    users = tmp_path / "mine"
    (users / "onnx").mkdir(parents=True)
    (users / "onnx" / "model.onnx").write_bytes(b"my own model")
    with pytest.raises(UnsafeOutputError, match="ONNX export folder .* did not write"):
        views[1].export_onnx(str(users))
    assert (users / "onnx" / "model.onnx").read_bytes() == b"my own model"
    model = tmp_path / "model"
    views[1].save(str(model))
    first = views[1].export_onnx(str(model))
    assert views[1].export_onnx(str(model)) == first  # its own export: replaced
    with pytest.raises(UnsafeOutputError, match="mm_sbert's model folder"):
        EmbeddingIndex(np.eye(3, 4, dtype=np.float32)).save(str(model / "onnx"))
