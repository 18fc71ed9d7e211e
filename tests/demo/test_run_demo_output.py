"""The demo's output folder follows the ownership rule before any work (issue 29)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mm_sbert.demo import demo_settings, run_demo
from mm_sbert.demo.run_demo import DEMO_CHILDREN, DEMO_KIND
from mm_sbert.errors import UnsafeOutputError
from mm_sbert.storage import check_output_path, mark_owned_folder


def test_the_demo_refuses_a_users_folder_before_any_work(tmp_path: Path, capsys) -> None:
    (tmp_path / "demo_results.json").write_text("my own results")
    with pytest.raises(UnsafeOutputError, match="did not write and it is not empty"):
        run_demo(str(tmp_path), demo_settings(quick=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_results.json"]
    assert (tmp_path / "demo_results.json").read_text() == "my own results"
    assert capsys.readouterr().out == ""  # refused before the first step


def test_the_demo_folder_takes_the_model_index_and_page_it_suggests_and_nothing_else(tmp_path: Path) -> None:
    mark_owned_folder(tmp_path, DEMO_KIND, children=DEMO_CHILDREN)
    for name, kind in DEMO_CHILDREN.items():
        check_output_path(tmp_path / name, kind, folder=kind != "search-page")
    with pytest.raises(UnsafeOutputError, match="demo-output"):
        check_output_path(tmp_path / "model", "feature-store", folder=True)


def test_scene_images_never_overwrite_a_users_photos(tmp_path: Path) -> None:
    from PIL import Image

    from mm_sbert.demo import SyntheticScenes

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(photos / "scene_00000.png")
    before = (photos / "scene_00000.png").read_bytes()
    scenes = SyntheticScenes(2, captions_per_image=1, seed=0)
    with pytest.raises(UnsafeOutputError, match="did not write and it is not empty"):
        scenes.save_images(str(photos))
    assert (photos / "scene_00000.png").read_bytes() == before
    paths = scenes.save_images(str(tmp_path / "scenes"))
    assert scenes.save_images(str(tmp_path / "scenes")) == paths  # its own folder: written again
