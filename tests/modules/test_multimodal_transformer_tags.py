"""add_od_labels: image tags read as OSCAR reads object labels, [CLS] caption [SEP] tags [SEP] regions."""

from __future__ import annotations

import torch
from conftest import build_module, build_views

from mm_sbert import RegionFeatures

BOXES = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])


def image(tags: list[str] | None, seed: int = 0) -> RegionFeatures:
    g = torch.Generator().manual_seed(seed)
    return RegionFeatures(torch.randn(2, 16, generator=g), BOXES, tags=tags)


def test_tags_are_ignored_unless_the_model_reads_them():
    module = build_module(featurizer=False)
    assert not module.add_od_labels
    with_tags = module.preprocess([("two dogs", image(["dog", "ball"])), image(["dog"])])
    without = module.preprocess([("two dogs", image(None)), image(None)])
    assert with_tags.keys() == without.keys()
    assert all(torch.equal(with_tags[key], without[key]) for key in with_tags)


def test_pair_and_image_alone_follow_oscars_layout():
    module = build_module(featurizer=False, add_od_labels=True)
    tok = module.tokenizer
    cls, sep = tok.cls_token_id, tok.sep_token_id
    features = module.preprocess([("two dogs", image(["dog", "ball"])), image(["dog"]), "two dogs"])
    two_dogs, dog_ball = (
        tok("two dogs", add_special_tokens=False)["input_ids"],
        tok("dog ball", add_special_tokens=False)["input_ids"],
    )
    dog = tok("dog", add_special_tokens=False)["input_ids"]
    pair = [cls, *two_dogs, sep, *dog_ball, sep]
    alone = [cls, sep, *dog, sep]
    caption = [cls, *two_dogs, sep]
    rows = [row[: int(mask.sum())] for row, mask in zip(features["input_ids"].tolist(), features["text_mask"])]
    assert rows == [pair, alone, caption]
    types = features["token_type_ids"]
    assert types[0, : len(pair)].tolist() == [0] * (len(two_dogs) + 2) + [1] * (len(dog_ball) + 1)
    assert types[1, : len(alone)].tolist() == [0, 0] + [1] * (len(dog) + 1)
    assert types[2].sum() == 0
    assert torch.equal(features["tag_mask"], types)  # the tags' segment is the image's side


def test_image_only_cls_mode_keeps_the_tags():
    module = build_module(featurizer=False, add_od_labels=True, image_only_text="cls")
    features = module.preprocess([image(["dog"]), image(None)])
    tok = module.tokenizer
    dog = tok("dog", add_special_tokens=False)["input_ids"]
    assert features["input_ids"][0, : 3 + len(dog)].tolist() == [
        tok.cls_token_id,
        tok.sep_token_id,
        *dog,
        tok.sep_token_id,
    ]
    assert features["text_mask"][1].sum() == 1  # an image without tags: [CLS] alone, as before


def test_dropping_the_tags_changes_the_pair_score_and_the_image_embedding():
    bi_encoder, cross_encoder = build_views(featurizer=False, add_od_labels=True)
    tagged, plain = image(["dog", "ball"], seed=3), image(None, seed=3)
    scores = cross_encoder.predict([("two dogs", tagged), ("two dogs", plain)])
    assert abs(scores[0] - scores[1]) > 1e-6  # a random tiny BERT attends almost uniformly: small, not zero
    same = cross_encoder.predict([("two dogs", tagged), ("two dogs", image(["dog", "ball"], seed=3))])
    assert same[0] == same[1]
    embeddings = bi_encoder.encode([tagged, plain], convert_to_tensor=True)
    assert not torch.allclose(embeddings[0], embeddings[1], atol=1e-4)
    # captions alone never see tags
    caption = bi_encoder.encode(["two dogs"], convert_to_tensor=True)
    bi_encoder[0].add_od_labels = False
    torch.testing.assert_close(bi_encoder.encode(["two dogs"], convert_to_tensor=True), caption)


def test_matching_heads_count_the_tags_with_the_image(monkeypatch):
    module = build_module(featurizer=False, add_od_labels=True, head_input="text_image_match")
    seen = {}
    original = module.score

    def spy(token_embeddings, mask, is_text=None):
        seen["is_text"] = is_text
        return original(token_embeddings, mask, is_text)

    monkeypatch.setattr(module, "score", spy)
    features = module.preprocess([("two dogs", image(["dog", "ball"]))])
    with torch.no_grad():
        module(features)
    caption_length = len(module.tokenizer("two dogs")["input_ids"])
    assert seen["is_text"][0].tolist() == [1] * caption_length + [0] * (seen["is_text"].shape[1] - caption_length)


def test_add_od_labels_is_saved(tmp_path):
    from mm_sbert.modules import MultimodalTransformer

    module = build_module(featurizer=False, add_od_labels=True)
    module.save(str(tmp_path / "module"))
    assert MultimodalTransformer.load(str(tmp_path / "module")).add_od_labels
