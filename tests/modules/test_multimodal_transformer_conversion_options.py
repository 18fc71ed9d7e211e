"""The options converted OSCAR / M3P checkpoints need: joint embeddings, [CLS]-only images, pooler-free head."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_module, build_views

from mm_sbert import MMSentenceTransformer, RegionFeatures

CAPTIONS = ["a red circle left of a blue square", "two dogs"]


def regions(count: int, seed: int = 0) -> RegionFeatures:
    g = torch.Generator().manual_seed(seed)
    return RegionFeatures(torch.randn(count, 16, generator=g), torch.tensor([[0.1, 0.2, 0.6, 0.9]] * count))


def test_image_only_text_defaults_to_cls_sep_and_cls_keeps_only_cls(backbone_name):
    default = build_module(backbone_name, featurizer=False)
    cls_only = build_module(backbone_name, featurizer=False, image_only_text="cls")
    batch = [regions(3), CAPTIONS[0], (CAPTIONS[1], regions(2))]
    tokenizer = default.tokenizer
    default_features, cls_features = default.preprocess(batch), cls_only.preprocess(batch)
    image_row = default_features["input_ids"][0][default_features["text_mask"][0].bool()].tolist()
    assert image_row == [tokenizer.cls_token_id, tokenizer.sep_token_id]
    assert cls_features["input_ids"][0][cls_features["text_mask"][0].bool()].tolist() == [tokenizer.cls_token_id]
    for key in ("input_ids", "text_mask"):  # rows with a caption are untouched
        assert torch.equal(cls_features[key][1:], default_features[key][1:])
    only_images = cls_only.preprocess([regions(3), regions(1)])
    assert only_images["input_ids"].tolist() == [[tokenizer.cls_token_id]] * 2  # trimmed to one column


def test_joint_embeddings_on_text_alone_equal_the_backbones_own_embeddings(backbone_name):
    # With no regions, one position run from the first token and type 0 is exactly what BERT / XLM-R do.
    separate = build_module(backbone_name, featurizer=False)
    joint = build_module(backbone_name, featurizer=False, embedding_mode="joint")
    joint.load_state_dict(separate.state_dict())
    features = separate.preprocess(CAPTIONS)
    with torch.no_grad():
        expected = separate(dict(features))
        got = joint(dict(features))
    mask = expected["attention_mask"].bool()
    torch.testing.assert_close(got["token_embeddings"][mask], expected["token_embeddings"][mask])


def test_joint_embeddings_give_regions_positions_and_text_the_following_ones():
    module = build_module("xlmr", featurizer=False, embedding_mode="joint", region_order="regions_first")
    seen = {}
    original = module.backbone.embeddings.forward

    def spy(**kwargs):
        seen.update(kwargs)
        return original(**kwargs)

    module.backbone.embeddings.forward = spy
    with torch.no_grad():
        module(module.preprocess([(CAPTIONS[1], regions(3)), (CAPTIONS[1], regions(1))]))
    offset = module.backbone.embeddings.padding_idx + 1
    pad = module.backbone.embeddings.padding_idx
    # row 0: 3 regions then 4 text tokens; row 1: 1 region, 2 padded region slots, then the same 4 text tokens
    assert seen["position_ids"][0].tolist() == [offset + i for i in range(7)]
    assert seen["position_ids"][1].tolist() == [offset, pad, pad, *[offset + 1 + i for i in range(4)]]
    assert torch.equal(seen["token_type_ids"], torch.zeros_like(seen["token_type_ids"]))


def test_head_without_pooler_reads_the_raw_first_token():
    module = build_module("bert", featurizer=False, head_pooler=False)
    with torch.no_grad():
        out = module(module.preprocess([(CAPTIONS[0], regions(2))]))
        expected = module.classifier(out["token_embeddings"][:, 0])
    torch.testing.assert_close(out["scores"], expected)


def test_folders_saved_before_these_options_load_with_the_old_behaviour(tmp_path):
    bi_encoder, _ = build_views("bert", featurizer=False)
    bi_encoder.save(str(tmp_path / "model"))
    config_path = tmp_path / "model" / "mm_transformer_config.json"
    config = json.loads(config_path.read_text())
    for key in ("embedding_mode", "image_only_text", "head_pooler"):
        config.pop(key)
    config_path.write_text(json.dumps(config))
    module = MMSentenceTransformer(str(tmp_path / "model"), device="cpu")[0]
    assert (module.embedding_mode, module.image_only_text, module.head_pooler) == ("separate", "cls_sep", True)


@pytest.mark.parametrize(
    "kwargs", [{"embedding_mode": "fused"}, {"image_only_text": "sep"}], ids=["embedding_mode", "image_only_text"]
)
def test_unknown_option_values_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        build_module("bert", featurizer=False, **kwargs)
