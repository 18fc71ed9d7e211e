from __future__ import annotations

import pytest
import torch
from conftest import build_module

from mm_sbert import MultimodalTransformer, RegionFeatures


def regions(num: int, seed: int) -> RegionFeatures:
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(num, 2, generator=generator) * 0.5
    return RegionFeatures(torch.randn(num, 16, generator=generator), torch.cat([corners, corners + 0.4], dim=1))


def run(module, inputs):
    with torch.no_grad():
        return module(module.preprocess(inputs))


PAIR = [("two green triangles left of a star", regions(5, seed=1))]


def halves(features):
    """The masked means of the text and the region states of each row (text first)."""
    states, mask = features["token_embeddings"], features["attention_mask"].unsqueeze(-1).float()
    width = features["text_mask"].shape[1]
    text = (states[:, :width] * mask[:, :width]).sum(1) / mask[:, :width].sum(1)
    image = (states[:, width:] * mask[:, width:]).sum(1) / mask[:, width:].sum(1)
    return text, image


def test_start_cross_encoder_scores_the_scaled_cosine_of_the_pair_halves():
    module = build_module("bert", featurizer=False, head_input="text_image_match", fusion_layer=1)
    module.start_cross_encoder(cross_modal_bias=-2.0, similarity_scale=20.0)
    assert (module.head_input, module.head_pooler, module.cross_modal_bias) == ("cosine_match", False, -2.0)
    inputs = [("a", regions(1, seed=2)), *PAIR]
    features = run(module, inputs)
    text, image = halves(features)
    expected = 20.0 * torch.nn.functional.cosine_similarity(text, image, dim=-1)
    torch.testing.assert_close(features["scores"][:, 0], expected, atol=1e-5, rtol=1e-5)


def test_a_strongly_negative_bias_closes_attention_across_the_pair():
    module = build_module("bert", featurizer=False, cross_modal_bias=-1e4)
    caption, image = PAIR[0]
    pair = run(module, PAIR)
    width = pair["text_mask"].shape[1]
    alone = run(module, [caption])["token_embeddings"][:, :width]
    torch.testing.assert_close(pair["token_embeddings"][:, :width], alone, atol=1e-5, rtol=1e-5)
    # Opened, the caption's states read the regions.
    with torch.no_grad():
        module.cross_modal_attention_bias.fill_(0.0)
    opened = run(module, PAIR)["token_embeddings"][:, :width]
    assert not torch.allclose(opened, alone, atol=1e-3)


def test_the_bias_leaves_captions_and_images_alone_unchanged():
    plain = build_module("bert", featurizer=False)
    gated = build_module("bert", featurizer=False, cross_modal_bias=-3.0)
    gated.load_state_dict(plain.state_dict() | {"cross_modal_attention_bias": gated.cross_modal_attention_bias})
    inputs = ["a red circle", regions(4, seed=3), "one star left of two blue squares", regions(2, seed=4)]
    torch.testing.assert_close(run(gated, inputs)["token_embeddings"], run(plain, inputs)["token_embeddings"])
    # ... but not pairs.
    assert not torch.allclose(run(gated, PAIR)["token_embeddings"], run(plain, PAIR)["token_embeddings"], atol=1e-4)


def test_the_bias_is_learned_one_per_fused_layer():
    module = build_module("bert", featurizer=False, fusion_layer=1, cross_modal_bias=2).train()  # an int start too
    layers = len(module.backbone.encoder.layer)
    assert module.cross_modal_attention_bias.shape == (layers - 1,)
    assert module.cross_modal_attention_bias.dtype == torch.float32 and module.cross_modal_attention_bias[0] == 2.0
    module(module.preprocess(PAIR))["scores"].sum().backward()
    assert module.cross_modal_attention_bias.grad.abs().min() > 0


def test_a_started_cross_encoder_saves_and_reloads_bit_identically(tmp_path):
    module = build_module("bert", featurizer=False, head_input="text_image_match")
    module.start_cross_encoder(cross_modal_bias=-4.0)
    bias = module.cross_modal_attention_bias
    with torch.no_grad():
        bias.copy_(torch.linspace(-1.25, -3.5, bias.numel()))
        module.classifier.weight.normal_()
    module.save(str(tmp_path))
    loaded = MultimodalTransformer.load(str(tmp_path)).eval()
    torch.testing.assert_close(loaded.cross_modal_attention_bias, module.cross_modal_attention_bias, rtol=0, atol=0)
    assert (loaded.head_input, loaded.head_pooler) == ("cosine_match", False)
    assert torch.equal(run(loaded, PAIR)["scores"], run(module, PAIR)["scores"])


def test_start_cross_encoder_needs_a_score_head():
    module = build_module("bert", featurizer=False, score_head=False)
    with pytest.raises(ValueError, match="no score head to replace"):
        module.start_cross_encoder()


@pytest.mark.parametrize(
    "head_input, width", [("first_token", 1), ("mean", 1), ("text_image_match", 4), ("token_match", 8)]
)
def test_reset_score_head_builds_a_new_head_of_the_named_kind(head_input, width):
    module = build_module("bert", featurizer=False, head_input="cosine_match")
    old = module.classifier
    module.reset_score_head(head_input)
    assert module.head_input == head_input and module.classifier is not old
    assert module.classifier.in_features == width * module.backbone.config.hidden_size
    assert run(module, PAIR)["scores"].shape == (1, 1)
    with pytest.raises(ValueError, match="head_input must be one of"):
        module.reset_score_head("cls")
