from __future__ import annotations

import json

import pytest
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from mm_sbert.data import ImageCaptionCorpus
from mm_sbert.demo import color_swatches


def write_json(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def test_coco_json_rows_labels_and_evaluation_positions(tmp_path):
    path = write_json(
        tmp_path / "captions.json",
        {
            "images": [{"id": 42, "file_name": "000042.jpg"}, {"id": 7, "file_name": "000007.jpg"}],
            "annotations": [
                {"image_id": 7, "id": 1, "caption": "a cat "},
                {"image_id": 42, "id": 2, "caption": "a dog"},
                {"image_id": 42, "id": 3, "caption": "the dog"},
                {"image_id": 99, "id": 4, "caption": "not in images"},
            ],
        },
    )
    corpus = ImageCaptionCorpus.from_coco_json(path, image_dir="/imgs")
    assert corpus.images == ["/imgs/000042.jpg", "/imgs/000007.jpg"]
    assert corpus.captions == ["a dog", "the dog", "a cat"]  # image order, stripped
    assert corpus.caption_image_ids == [42, 42, 7]
    dataset = corpus.to_dataset()
    assert dataset.column_names == ["caption", "image", "label"]
    assert dataset["label"] == [42, 42, 7]
    assert dataset["image"] == ["/imgs/000042.jpg", "/imgs/000042.jpg", "/imgs/000007.jpg"]
    images, captions, caption_image_ids = corpus.evaluation_data()
    assert caption_image_ids == [0, 0, 1]  # positions in images, not COCO ids
    assert ImageCaptionCorpus.from_coco_json(path, image_dir="/imgs", max_images=1).captions == ["a dog", "the dog"]


def test_karpathy_json_splits_paths_and_ids(tmp_path):
    def entry(name, split, cocoid, captions):
        return {
            "filepath": "val2014",
            "filename": name,
            "split": split,
            "cocoid": cocoid,
            "sentences": [{"raw": c} for c in captions],
        }

    path = write_json(
        tmp_path / "dataset_coco.json",
        {
            "images": [
                entry("a.jpg", "train", 1, ["one", "two"]),
                entry("b.jpg", "restval", 2, ["three"]),
                entry("c.jpg", "test", 3, ["four", "five"]),
            ]
        },
    )
    train = ImageCaptionCorpus.from_karpathy_json(path, image_root="/coco", split=("train", "restval"))
    assert train.images == ["/coco/val2014/a.jpg", "/coco/val2014/b.jpg"]
    assert train.caption_image_ids == [1, 1, 2]
    test = ImageCaptionCorpus.from_karpathy_json(path, split="test")
    assert test.captions == ["four", "five"] and test.image_ids == [3]
    assert test.images == [str(tmp_path / "val2014" / "c.jpg")]
    with pytest.raises(ValueError, match="no images in split"):
        ImageCaptionCorpus.from_karpathy_json(path, split="val")


def test_flickr8k_jsonl_languages(tmp_path):
    lines = [
        {"image": "images/1.jpg", "en": ["a", "b"], "de": ["x"]},
        {"image": "images/2.jpg", "en": ["c"]},
    ]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    english = ImageCaptionCorpus.from_flickr8k_jsonl(str(tmp_path))
    assert english.images == [str(tmp_path / "images/1.jpg"), str(tmp_path / "images/2.jpg")]
    assert english.captions == ["a", "b", "c"] and english.caption_image_ids == [0, 0, 1]
    german = ImageCaptionCorpus.from_flickr8k_jsonl(str(tmp_path / "captions.jsonl"), language="de")
    assert german.captions == ["x"] and german.num_images == 1
    with pytest.raises(ValueError, match="no image with captions"):
        ImageCaptionCorpus.from_flickr8k_jsonl(str(tmp_path), language="fr")


def test_dataset_with_caption_lists_or_one_caption_per_row():
    lists = Dataset.from_dict({"image": ["a.jpg", "b.jpg"], "captions": [["1", "2"], ["3"]]})
    corpus = ImageCaptionCorpus.from_dataset(lists, caption_column="captions")
    assert corpus.captions == ["1", "2", "3"] and corpus.caption_image_ids == [0, 0, 1]
    rows = Dataset.from_dict({"image": ["a.jpg", "b.jpg", "a.jpg"], "caption": ["1", "3", "2"]})
    corpus = ImageCaptionCorpus.from_dataset(rows)
    assert corpus.images == ["a.jpg", "b.jpg"] and corpus.caption_image_ids == [0, 1, 0]
    by_id = Dataset.from_dict({"image": ["a.jpg", "a2.jpg"], "caption": ["1", "2"], "img": [5, 5]})
    assert ImageCaptionCorpus.from_dataset(by_id, image_id_column="img").num_images == 1
    with pytest.raises(ValueError, match="no column 'text'"):
        ImageCaptionCorpus.from_dataset(rows, caption_column="text")


def test_dataset_with_pil_images_groups_identical_images():
    red, blue = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")
    features = Features({"image": ImageFeature(), "caption": Value("string")})
    dataset = Dataset.from_dict({"image": [red, blue, red], "caption": ["r1", "b", "r2"]}, features=features)
    corpus = ImageCaptionCorpus.from_dataset(dataset)
    assert corpus.num_images == 2 and corpus.caption_image_ids == [0, 1, 0]
    assert corpus.images[0].getpixel((0, 0)) == (255, 0, 0)


def test_five_captions_of_one_image_share_one_label_and_other_images_never_do():
    corpus = color_swatches(num_images=6, captions_per_image=4)
    dataset = corpus.to_dataset()
    assert len(dataset) == 24
    by_label: dict[int, set] = {}
    for row in dataset:
        by_label.setdefault(row["label"], set()).add(row["image"].tobytes())
    assert len(by_label) == 6
    assert all(len(images) == 1 for images in by_label.values())  # one label = one image
    assert len({next(iter(images)) for images in by_label.values()}) == 6  # different labels = different images


def test_select_images_keeps_their_captions():
    corpus = ImageCaptionCorpus.from_pairs(["a", "b", "c"], [["1", "2"], "3", ["4"]])
    subset = corpus.select_images([2, 0])
    assert subset.images == ["c", "a"] and subset.captions == ["1", "2", "4"]
    assert subset.evaluation_data()[2] == [1, 1, 0]


def test_image_parts_split_the_images_by_name_whatever_their_position_or_folder():
    import hashlib

    names = [f"img_{k}" for k in range(200)]
    corpus = ImageCaptionCorpus.from_pairs(
        [f"photos/{name}.jpg" for name in names], [[name, name + "!"] for name in names]
    )
    first, second = corpus.image_part(1, 2), corpus.image_part(2, 2)
    assert set(first.images) | set(second.images) == set(corpus.images) and not set(first.images) & set(second.images)
    assert 60 < first.num_images < 140  # a hash split, not all in one part
    assert sorted(first.captions) == sorted(c for image in first.images for c in (image[7:-4], image[7:-4] + "!"))
    # The part is a hash of the file name (sha256, first 8 bytes, big-endian), computed here independently.
    expected = [name for name in names if int(hashlib.sha256(name.encode()).hexdigest()[:16], 16) % 2 == 0]
    assert [image[7:-4] for image in first.images] == expected
    # Another folder, extension and order, or the bare store ids: the same images in the same part.
    moved = ImageCaptionCorpus.from_pairs([f"/elsewhere/{name}.png" for name in reversed(names)], ["c"] * 200)
    ids = ImageCaptionCorpus.from_pairs(names, ["c"] * 200)
    assert sorted(image[11:-4] for image in moved.image_part(1, 2).images) == sorted(expected)
    assert sorted(ids.image_part(1, 2).images) == sorted(expected)


def _holds_image(corpus, part):
    try:
        return corpus.image_part(part, 2).num_images == 1
    except ValueError as error:
        assert "holds no image" in str(error)
        return False


def test_an_image_part_outside_the_parts_or_empty_is_refused():
    corpus = ImageCaptionCorpus.from_pairs(["a.jpg"], ["x"])
    for part, parts in ((0, 2), (3, 2), (1, 1)):
        with pytest.raises(ValueError, match=f"between 1 and the number of parts.*{part}/{parts}"):
            corpus.image_part(part, parts)
    holding = [part for part in (1, 2) if _holds_image(corpus, part)]
    assert len(holding) == 1  # one image: one part has it, the other is refused as empty


def test_inconsistent_input_is_rejected():
    with pytest.raises(ValueError, match="2 images but 1 image ids"):
        ImageCaptionCorpus(["a", "b"], [0], [], [])
    with pytest.raises(ValueError, match="not in the corpus"):
        ImageCaptionCorpus(["a"], [0], ["x"], [3])
    with pytest.raises(ValueError, match="distinct"):
        ImageCaptionCorpus(["a", "b"], [0, 0], [], [])


def test_shared_coco_mini_train(shared_data):
    corpus = ImageCaptionCorpus.from_coco_json(str(shared_data / "coco-mini-train" / "captions_train2017.json"))
    assert (corpus.num_images, len(corpus)) == (80, 400)
    assert all(corpus.caption_image_ids.count(image_id) == 5 for image_id in corpus.image_ids)
    assert all(
        (shared_data / "coco-mini-train" / "images").joinpath(p.rsplit("/", 1)[1]).is_file() for p in corpus.images
    )


def test_shared_flickr8k_dev(shared_data):
    corpus = ImageCaptionCorpus.from_flickr8k_jsonl(str(shared_data / "flickr8k" / "dev"))
    assert (corpus.num_images, len(corpus)) == (1000, 5000)
    images, captions, caption_image_ids = corpus.evaluation_data()
    assert max(caption_image_ids) == 999 and caption_image_ids[:5] == [0] * 5
