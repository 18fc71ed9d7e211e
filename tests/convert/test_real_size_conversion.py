"""Base-size (768 hidden, 12 layers, 2048-d regions) conversions against the original forward passes.

Random weights, the small test vocabularies; run with ``pytest -m slow tests/convert``.
"""

from __future__ import annotations

import pytest
import torch
from original_models import (
    m3p_forward,
    m3p_itm_logit,
    oscar_config,
    oscar_forward,
    random_m3p_state_dict,
    random_oscar_state_dict,
)
from tiny_models import tiny_bert_tokenizer, tiny_xlmr_tokenizer

from mm_sbert import RegionFeatures
from mm_sbert.convert import M3PConverter, OscarConverter

pytestmark = pytest.mark.slow

CAPTIONS = ["a man with a big black dog on the left", "two red circles"]


def regions(count: int, seed: int) -> RegionFeatures:
    g = torch.Generator().manual_seed(seed)
    corners = torch.rand(count, 2, generator=g) * 0.5
    return RegionFeatures(torch.rand(count, 2048, generator=g) * 4, torch.cat([corners, corners + 0.3], dim=1))


def test_oscar_base_with_img_layernorm():
    tokenizer = tiny_bert_tokenizer()
    config = oscar_config(
        len(tokenizer),
        img_feature_dim=2054,
        use_img_layernorm=True,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    )
    state_dict = random_oscar_state_dict(config)
    converted = OscarConverter(region_feature_dim=2048).convert_state_dict(state_dict, config, tokenizer)
    module = converted.module
    batch = [(caption, regions(36 - 10 * i, i)) for i, caption in enumerate(CAPTIONS)]
    features = module.preprocess(batch)
    with torch.no_grad():
        out = module(dict(features))
        hidden, _, logits = oscar_forward(
            state_dict,
            config,
            *[features[k] for k in ("input_ids", "token_type_ids", "text_mask", "region_features", "region_mask")],
        )
    mask = out["attention_mask"].bool()
    torch.testing.assert_close(out["token_embeddings"][mask], hidden[mask], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.sigmoid(out["scores"][:, 0]), logits.softmax(-1)[:, 1], atol=1e-5, rtol=1e-4)


def test_m3p_base_with_default_heads():
    tokenizer = tiny_xlmr_tokenizer()
    state_dict = random_m3p_state_dict(len(tokenizer), dim=768, n_layers=12, n_positions=514, feature_dim=2048)
    module = M3PConverter().convert_state_dict(state_dict, {}, tokenizer).module  # 768 / 64 = 12 heads
    assert module.backbone.config.num_attention_heads == 12
    batch = [(caption, regions(50, i)) for i, caption in enumerate(CAPTIONS)]
    features = module.preprocess(batch)
    vectors = features["region_features"]
    with torch.no_grad():
        out = module(dict(features))
        hidden, mask = m3p_forward(
            state_dict,
            12,
            features["input_ids"],
            features["text_mask"].sum(1),
            vectors[..., :2048],
            vectors[..., 2048:],
            features["region_mask"].sum(1),
        )
    assert torch.equal(out["attention_mask"].bool(), mask)
    torch.testing.assert_close(out["token_embeddings"][mask], hidden[mask], atol=1e-4, rtol=1e-4)
    # M3P's image-text matching head is the cross-encoder head (all images here have 50 regions, as M3P needs)
    torch.testing.assert_close(out["scores"][:, 0], m3p_itm_logit(state_dict, hidden), atol=1e-4, rtol=1e-4)
