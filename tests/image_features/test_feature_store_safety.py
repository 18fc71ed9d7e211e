"""The feature store never writes over what it did not write, has one writer at a time, survives a killed writer,
and validates every file it reads (issue 29)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mm_sbert.errors import MMSbertError, OutputInUseError, StorageError, UnsafeOutputError
from mm_sbert.image_features import ColorGridFeaturizer, FeatureStore
from mm_sbert.storage import bytes_record

ROOT = Path(__file__).resolve().parents[2]


def grid() -> ColorGridFeaturizer:
    return ColorGridFeaturizer(grid_size=2, resize_to=32)


def test_a_foreign_folder_is_refused_before_any_work(tmp_path, image_folder):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(UnsafeOutputError, match=r"did not write and it is not empty \(thesis.tex\)"):
        FeatureStore.build(folder, image_folder, grid(), show_progress_bar=False)
    assert sorted(os.listdir(folder)) == ["thesis.tex"]


def test_the_folder_of_the_images_is_refused(tmp_path, image_folder):
    before = {path.name: path.read_bytes() for path in image_folder}
    with pytest.raises(UnsafeOutputError, match="an input of the same command"):
        FeatureStore.build(image_folder[0].parent, image_folder, grid(), show_progress_bar=False)
    assert {path.name: path.read_bytes() for path in image_folder} == before
    assert sorted(os.listdir(image_folder[0].parent)) == sorted(before)


def test_a_user_file_dropped_into_a_store_is_refused_on_the_next_write(tmp_path, image_folder):
    store = tmp_path / "store"
    FeatureStore.build(store, image_folder[:2], grid(), show_progress_bar=False)
    (store / "photo.jpg").write_bytes(b"mine")
    with pytest.raises(UnsafeOutputError, match=r"files mm_sbert did not write \(photo.jpg\)"):
        FeatureStore.build(store, image_folder, grid(), show_progress_bar=False)
    assert (store / "photo.jpg").read_bytes() == b"mine" and len(FeatureStore(store)) == 2


def test_a_store_written_before_the_owner_mark_still_resumes(tmp_path, image_folder):
    store = tmp_path / "store"
    FeatureStore.build(store, image_folder[:2], grid(), show_progress_bar=False)
    (store / ".mm_sbert_owner.json").unlink()  # as older versions wrote it
    assert len(FeatureStore.build(store, image_folder, grid(), show_progress_bar=False)) == 6


def test_the_cli_refuses_an_output_that_is_an_input(tmp_path, image_folder):
    from mm_sbert.cli.main import main

    assert main(["featurize", str(image_folder[0].parent), "--output", str(image_folder[0].parent)]) == 2
    assert not (image_folder[0].parent / "manifest.json").exists()


SLOW_WRITER = """
import sys, time
from mm_sbert.image_features import ColorGridFeaturizer, FeatureStore, ImageFeaturizer

class Slow(ImageFeaturizer):  # a wrapper: the store records the featurizer it wraps
    def __init__(self):
        self.featurizer = ColorGridFeaturizer(grid_size=2, resize_to=32)
        self.feature_dim = self.featurizer.feature_dim
        self.calls = 0
    def get_config_dict(self):
        return self.featurizer.get_config_dict()
    def featurize(self, images):
        self.calls += 1
        if self.calls == 3:  # two shards of one image are stored: say so, then hang
            print("two stored", flush=True)
            time.sleep(120)
        return self.featurizer.featurize(images)

FeatureStore.build(sys.argv[1], sys.argv[2:], Slow(), batch_size=1, shard_size=1, show_progress_bar=False)
"""


def test_a_second_writer_is_refused_and_a_killed_writer_leaves_its_finished_shards(tmp_path, image_folder):
    store = tmp_path / "store"
    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SLOW_WRITER), str(store), *map(str, image_folder)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert writer.stdout.readline().strip() == "two stored"
        with pytest.raises(OutputInUseError, match=rf"in use by process {writer.pid}"):
            FeatureStore.build(store, image_folder, grid(), batch_size=1, shard_size=1, show_progress_bar=False)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    with pytest.warns(UserWarning, match="incomplete"):
        partial = FeatureStore(store)
    assert partial.ids == ["img0", "img1"]  # the first writer's finished work, intact and readable
    finished = FeatureStore.build(store, image_folder, grid(), batch_size=1, shard_size=1, show_progress_bar=False)
    assert finished.complete and finished.ids == [path.stem for path in image_folder]


# ---------------------------------------------------------------------------------------------- files read


def _rewrite(store: Path, name: str, data: bytes) -> None:
    """Replace a shard file and fix its manifest record, so only the content check can catch it."""
    (store / name).write_bytes(data)
    manifest = json.loads((store / "manifest.json").read_text())
    shard, suffix = name.split(".", 1)
    entry = next(entry for entry in manifest["shards"] if entry["name"] == shard)
    entry["files"][suffix] = bytes_record(data)
    (store / "manifest.json").write_text(json.dumps(manifest))


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("complete", "no", "field 'complete': Input should be a valid boolean"),
        ("feature_dim", "15", "field 'feature_dim'"),
        ("dtype", "float64", "field 'dtype'"),
        ("shards", {"name": "x"}, "field 'shards'"),
        ("failed", ["a"], "field 'failed'"),
    ],
)
def test_manifest_fields_of_the_wrong_type_are_refused_by_name(tmp_path, image_folder, field, value, expected):
    store = tmp_path / "store"
    FeatureStore.build(store, image_folder[:2], grid(), show_progress_bar=False)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest[field] = value
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StorageError, match=rf"manifest '.*manifest.json' is invalid: {expected}"):
        FeatureStore(store)


def test_offsets_that_do_not_match_the_regions_are_refused(tmp_path, image_folder):
    store = tmp_path / "store"
    regions = FeatureStore.build(store, image_folder[:2], grid(), show_progress_bar=False).manifest["shards"][0][
        "num_regions"
    ]
    _rewrite(store, "shard-00000.offsets.npy", _npy(np.array([0, 1, regions], dtype=np.int64)))
    assert FeatureStore(store)["img0"].num_regions == 1  # another split of the same regions is consistent
    _rewrite(store, "shard-00000.offsets.npy", _npy(np.array([0, 4, regions + 1], dtype=np.int64)))
    with pytest.raises(StorageError, match=f"does not split the shard's {regions} regions among its 2 images"):
        FeatureStore(store)
    _rewrite(store, "shard-00000.offsets.npy", _npy(np.array([0, 5, 4, regions], dtype=np.int64)))
    with pytest.raises(StorageError, match=r"shape \(4,\), but the manifest describes int64 \(3,\)"):
        FeatureStore(store)


def test_features_of_another_shape_or_dtype_are_refused(tmp_path, image_folder):
    store = tmp_path / "store"
    FeatureStore.build(store, image_folder[:2], grid(), show_progress_bar=False)
    _rewrite(store, "shard-00000.features.npy", _npy(np.zeros((8, 15), np.float64)))
    with pytest.raises(StorageError, match=r"holds a float64 array of shape \(8, 15\), but the manifest describes"):
        FeatureStore(store)
    _rewrite(store, "shard-00000.features.npy", b"not an npy file at all")
    with pytest.raises(StorageError, match="is not a valid .npy array file"):
        FeatureStore(store)


def test_shard_list_of_the_wrong_shape_is_refused_by_field(tmp_path, image_folder):
    store = tmp_path / "store"
    FeatureStore.build(store, image_folder[:2], grid(), show_progress_bar=False)
    _rewrite(store, "shard-00000.meta.json", json.dumps({"ids": [1.5, "b"], "labels": [None, None]}).encode())
    with pytest.raises(StorageError, match=r"shard list '.*meta.json' is invalid: field 'ids.0"):
        FeatureStore(store)
    _rewrite(store, "shard-00000.meta.json", json.dumps({"ids": ["a"], "labels": [None]}).encode())
    with pytest.raises(StorageError, match="lists 1 ids and 1 label lists, but the manifest says the shard holds 2"):
        FeatureStore(store)
    _rewrite(store, "shard-00000.meta.json", b"[]")
    with pytest.raises(MMSbertError, match="field"):
        FeatureStore(store)
