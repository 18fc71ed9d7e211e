from __future__ import annotations

import json
from pathlib import Path

import pytest

from mm_sbert.errors import MMSbertError, UnsafeOutputError
from mm_sbert.storage import (
    check_output_path,
    mark_owned_folder,
    output_marker,
    owned_folder_kind,
    register_legacy_folder_kind,
)


def test_new_path_and_empty_folder_may_be_written(tmp_path: Path) -> None:
    assert check_output_path(tmp_path / "new" / "store", "feature-store", folder=True) == tmp_path / "new" / "store"
    (tmp_path / "empty").mkdir()
    assert check_output_path(tmp_path / "empty", "feature-store", folder=True) == tmp_path / "empty"


def test_foreign_non_empty_folder_is_refused_and_untouched(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(UnsafeOutputError, match=r"did not write and it is not empty \(thesis.tex\)") as info:
        check_output_path(tmp_path, "embedding-index", folder=True, what="--output")
    assert isinstance(info.value, MMSbertError) and isinstance(info.value, ValueError)
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_owned_folder_of_the_same_kind_may_be_replaced_another_kind_not(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    folder.mkdir()
    (folder / "embeddings.npy").write_bytes(b"x")
    mark_owned_folder(folder, "embedding-index")
    assert owned_folder_kind(folder) == "embedding-index"
    assert check_output_path(folder, "embedding-index", folder=True) == folder
    with pytest.raises(UnsafeOutputError, match="mm_sbert's embedding-index folder, not a feature-store"):
        check_output_path(folder, "feature-store", folder=True)


def test_user_file_dropped_into_an_owned_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    folder.mkdir()
    (folder / "embeddings.npy").write_bytes(b"x")
    mark_owned_folder(folder, "embedding-index")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UnsafeOutputError, match=r"holds files mm_sbert did not write \(notes.txt\)"):
        check_output_path(folder, "embedding-index", folder=True)


def test_patterns_cover_what_an_interrupted_writer_left_and_nothing_else(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    mark_owned_folder(folder, "feature-store", patterns=["shard-*", ".shard-*.tmp-*"])
    (folder / "shard-00003.features.npy").write_bytes(b"x")
    (folder / ".shard-00004.boxes.npy.tmp-1234abcd").write_bytes(b"x")
    assert check_output_path(folder, "feature-store", folder=True) == folder
    (folder / "photo.jpg").write_bytes(b"x")
    with pytest.raises(UnsafeOutputError, match="photo.jpg"):
        check_output_path(folder, "feature-store", folder=True)


@pytest.mark.parametrize("relation", ["equal", "inside", "containing"])
def test_an_input_of_the_same_command_is_never_an_output(tmp_path: Path, relation: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    captions = data / "captions.csv"
    captions.write_text("caption,image\n")
    output, given = {
        "equal": (captions, captions),
        "inside": (data / "out.json", data),
        "containing": (data, captions),
    }[relation]
    with pytest.raises(UnsafeOutputError, match="an input of the same command"):
        check_output_path(output, "metrics", folder=False, inputs=[None, given], what="--output")
    assert captions.read_text() == "caption,image\n"


def test_input_reached_through_a_symlink_is_still_an_input(tmp_path: Path) -> None:
    data = tmp_path / "captions.csv"
    data.write_text("caption,image\n")
    link = tmp_path / "link.csv"
    link.symlink_to(data)
    with pytest.raises(UnsafeOutputError, match="an input"):
        check_output_path(data, "metrics", folder=False, inputs=[link])


def test_a_file_inside_an_owned_model_folder_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    mark_owned_folder(model, "model")
    with pytest.raises(UnsafeOutputError, match="lies inside .*mm_sbert's model folder"):
        check_output_path(model / "metrics.json", "metrics", folder=False)
    with pytest.raises(UnsafeOutputError, match="lies inside"):
        check_output_path(model / "sub" / "index", "embedding-index", folder=True)


def test_a_folder_merely_named_like_a_package_sub_folder_is_not_owned(tmp_path: Path) -> None:
    # A user's folder called like the sub-folders the package writes (an index's "embeddings", a model's
    # "1_Pooling") is the user's, whatever its name.
    for name in ("embeddings", "1_Pooling", "0_MultimodalTransformer", "checkpoint-10"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "mine.txt").write_text("x")
        assert owned_folder_kind(folder) is None
        with pytest.raises(UnsafeOutputError, match="did not write"):
            check_output_path(folder, "embedding-index", folder=True)
    # ... and a file may be written inside it: it is not a package folder.
    assert check_output_path(tmp_path / "embeddings" / "metrics.json", "metrics", folder=False)


def test_legacy_recognizer_must_match_and_may_not_crash_the_check(tmp_path: Path) -> None:
    def strict(folder: Path) -> bool:
        manifest = json.loads((folder / "manifest.json").read_text())
        return manifest["format"] == "test-legacy-format"

    register_legacy_folder_kind("test-legacy", strict)
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"format": "test-legacy-format"}))
    assert owned_folder_kind(old) == "test-legacy"
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text("not json")  # the recognizer raises: not owned, not a crash
    assert owned_folder_kind(other) is None
    with pytest.raises(UnsafeOutputError):
        check_output_path(other, "test-legacy", folder=True)


def test_files_replace_only_files_with_the_same_mark(tmp_path: Path) -> None:
    ours = tmp_path / "metrics.json"
    ours.write_text(json.dumps({"written_by": output_marker("metrics"), "r@1": 1.0}))
    assert check_output_path(ours, "metrics", folder=False) == ours
    with pytest.raises(UnsafeOutputError, match="mm_sbert's metrics file, not a search-page"):
        check_output_path(ours, "search-page", folder=False)
    image = tmp_path / "photo.jpg"
    image.write_bytes(b"\xff\xd8\xff\xe0 jpeg")
    with pytest.raises(UnsafeOutputError, match="a file mm_sbert did not write"):
        check_output_path(image, "search-page", folder=False)
    with pytest.raises(UnsafeOutputError, match="is a folder, not a file"):
        check_output_path(tmp_path, "metrics", folder=False)
    with pytest.raises(UnsafeOutputError, match="is a file, not a folder"):
        check_output_path(ours, "metrics", folder=True)


def test_symlink_output_and_symlink_loop_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"m": output_marker("metrics")}))
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with pytest.raises(UnsafeOutputError, match="symbolic link"):
        check_output_path(link, "metrics", folder=False)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(UnsafeOutputError, match="symbolic link"):
        check_output_path(loop, "metrics", folder=False)


def test_an_owned_folder_accepts_only_the_children_its_mark_declares_of_that_kind(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    mark_owned_folder(run, "training-output", patterns=["checkpoint-*"], children={"checkpoint-*": "model"})
    assert check_output_path(run / "checkpoint-5", "model", folder=True) == run / "checkpoint-5"
    with pytest.raises(UnsafeOutputError, match="mm_sbert's training-output folder"):
        check_output_path(run / "checkpoint-5", "embedding-index", folder=True)
    with pytest.raises(UnsafeOutputError, match="mm_sbert's training-output folder"):
        check_output_path(run / "thesis", "model", folder=True)
    # only direct children: a path deeper down is still inside the owned folder
    with pytest.raises(UnsafeOutputError, match="mm_sbert's training-output folder"):
        check_output_path(run / "checkpoint-5" / "inner", "model", folder=True)


def test_the_nearest_owned_folder_decides_so_a_declared_child_may_hold_its_own_declared_children(
    tmp_path: Path,
) -> None:
    demo = tmp_path / "demo"
    demo.mkdir()
    mark_owned_folder(demo, "demo-output", children={"index": "embedding-index", "model": "model"})
    index = demo / "index"
    assert check_output_path(index, "embedding-index", folder=True) == index
    index.mkdir()
    mark_owned_folder(index, "embedding-index", children={"embeddings": "embedding-index"})
    assert check_output_path(index / "embeddings", "embedding-index", folder=True) == index / "embeddings"
    # What the nested folder does not declare stays refused, and so does a path in a plain folder of the demo's.
    with pytest.raises(UnsafeOutputError, match="mm_sbert's embedding-index folder"):
        check_output_path(index / "notes", "embedding-index", folder=True)
    with pytest.raises(UnsafeOutputError, match="mm_sbert's embedding-index folder"):
        check_output_path(index / "embeddings", "model", folder=True)
    (demo / "held_out_images").mkdir()
    with pytest.raises(UnsafeOutputError, match="mm_sbert's demo-output folder"):
        check_output_path(demo / "held_out_images" / "index", "embedding-index", folder=True)
