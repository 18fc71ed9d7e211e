from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch

from mm_sbert.errors import MissingFileError
from mm_sbert.image_features import FeatureStore, read_butd_tsv, read_npz_folder, read_oscar_tsv


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.float32).tobytes()).decode()


@pytest.fixture
def regions():
    rng = np.random.default_rng(0)
    features = {"17": rng.normal(size=(3, 8)).astype(np.float32), "abc": rng.normal(size=(2, 8)).astype(np.float32)}
    boxes = {
        "17": np.array([[0, 0, 50, 40], [10, 20, 30, 40], [25, 0, 100, 80]], np.float32),
        "abc": np.array([[0, 0, 100, 80], [50, 40, 100, 80]], np.float32),
    }
    return features, boxes, (100, 80)


def test_vinvl_feature_tsv_with_box_numbers_and_labels(tmp_path, regions):
    features, boxes, (width, height) = regions
    feature_rows, label_rows = [], []
    for key in features:
        normalised = boxes[key] / [width, height, width, height]
        wh = normalised[:, 2:] - normalised[:, :2]
        row = np.concatenate([features[key], normalised, wh], axis=1)  # OSCAR's 8 + 6
        feature_rows.append(f"{key}\t{json.dumps({'num_boxes': len(row), 'features': b64(row)})}")
        objects = [{"rect": box.tolist(), "class": f"obj{i}", "conf": 0.9} for i, box in enumerate(boxes[key])]
        label_rows.append(f"{key}\t{json.dumps(objects)}")
    (tmp_path / "test.feature.tsv").write_text("\n".join(feature_rows) + "\n")
    (tmp_path / "test.label.tsv").write_text("\n".join(label_rows) + "\n")

    records = list(read_oscar_tsv(tmp_path / "test.feature.tsv", tmp_path / "test.label.tsv", feature_dim=8))
    assert [image_id for image_id, _ in records] == [17, "abc"]
    first = records[0][1]
    np.testing.assert_array_equal(first.features.numpy(), features["17"])
    torch.testing.assert_close(first.boxes, torch.tensor(boxes["17"] / [width, height, width, height]).float())
    assert first.labels == ["obj0", "obj1", "obj2"]
    store = FeatureStore.write(tmp_path / "store", records, show_progress_bar=False)
    assert store[17] == first and store["abc"] == records[1][1]

    with pytest.raises(ValueError, match="rows are 14-d; expected 2048"):
        next(read_oscar_tsv(tmp_path / "test.feature.tsv"))


def test_oscar_features_without_box_numbers_take_boxes_from_predictions(tmp_path, regions):
    features, boxes, (width, height) = regions
    key = "17"
    (tmp_path / "features.tsv").write_text(f"{key}\t{json.dumps({'num_boxes': 3, 'features': b64(features[key])})}\n")
    objects = [{"rect": box.tolist(), "class": "thing"} for box in boxes[key]]
    prediction = {"image_h": height, "image_w": width, "objects": objects}
    (tmp_path / "predictions.tsv").write_text(f"{key}\t{json.dumps(prediction)}\n")
    ((image_id, region),) = read_oscar_tsv(tmp_path / "features.tsv", tmp_path / "predictions.tsv", feature_dim=8)
    assert image_id == 17 and region.image_size == (100, 80)
    assert region.boxes[1].tolist() == pytest.approx([0.1, 0.25, 0.3, 0.5])
    with pytest.raises(ValueError, match="boxes must come from a label TSV"):
        next(read_oscar_tsv(tmp_path / "features.tsv", feature_dim=8))


def test_bottom_up_attention_tsv(tmp_path, regions):
    features, boxes, (width, height) = regions
    rows = [
        "\t".join([key, str(width), str(height), str(len(features[key])), b64(boxes[key]), b64(features[key])])
        for key in features
    ]
    (tmp_path / "trainval_36.tsv").write_text("\n".join(rows) + "\n")
    records = dict(read_butd_tsv(tmp_path / "trainval_36.tsv"))
    np.testing.assert_array_equal(records["abc"].features.numpy(), features["abc"])
    assert records["abc"].boxes.tolist() == [[0, 0, 1, 1], [0.5, 0.5, 1, 1]]
    assert records[17].image_size == (100, 80)


def test_npz_and_npy_folder(tmp_path, regions):
    features, boxes, (width, height) = regions
    np.savez(tmp_path / "17.npz", x=features["17"], bbox=boxes["17"], image_w=width, image_h=height)
    np.save(tmp_path / "abc.npy", features["abc"])
    np.save(tmp_path / "abc.boxes.npy", boxes["abc"] / [width, height, width, height])
    records = dict(read_npz_folder(tmp_path))
    assert sorted(records) == ["17", "abc"]
    np.testing.assert_array_equal(records["17"].features.numpy(), features["17"])
    assert records["17"].boxes[2].tolist() == pytest.approx([0.25, 0.0, 1.0, 1.0])
    assert records["abc"].boxes.tolist() == [[0, 0, 1, 1], [0.5, 0.5, 1, 1]]
    (tmp_path / "abc.boxes.npy").unlink()
    with pytest.raises(MissingFileError, match="abc.boxes.npy"):
        dict(read_npz_folder(tmp_path))


def test_boxes_clearly_outside_the_image_are_refused_not_clipped(tmp_path, regions):
    from mm_sbert.errors import InvalidFileError

    features, boxes, (width, height) = regions
    far = boxes["17"] * 5  # boxes of a 500x400 image stored with a 100x80 size
    np.savez(tmp_path / "17.npz", x=features["17"], bbox=far, image_w=width, image_h=height)
    with pytest.raises(InvalidFileError, match=r"17.npz.*box 0 .* lies outside a 100x80 image"):
        list(read_npz_folder(tmp_path))
    row = "\t".join(["5", str(width), str(height), "3", b64(far), b64(features["17"])])
    (tmp_path / "butd.tsv").write_text(row + "\n")
    with pytest.raises(InvalidFileError, match=r"butd.tsv:1: box 0 .* lies outside a 100x80 image"):
        list(read_butd_tsv(tmp_path / "butd.tsv"))
    oscar = np.concatenate([features["17"], np.tile([[0, 0, 3.0, 3.0, 3.0, 3.0]], (3, 1))], axis=1)
    (tmp_path / "f.tsv").write_text(f"5\t{json.dumps({'num_boxes': 3, 'features': b64(oscar)})}\n")
    with pytest.raises(InvalidFileError, match="lies outside normalised"):
        list(read_oscar_tsv(tmp_path / "f.tsv", feature_dim=8))
    # a detector's overshoot of a pixel is kept (clipped to the border)
    np.savez(tmp_path / "17.npz", x=features["17"], bbox=boxes["17"] + [0, 0, 1, 1], image_w=width, image_h=height)
    assert float(dict(read_npz_folder(tmp_path))["17"].boxes.max()) == 1.0
