"""The packed bfloat16 inference path of the encoder layers: the backbone's function, used only for inference."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import build_module

from mm_sbert import RegionFeatures
from mm_sbert.modules import fast_inference
from mm_sbert.modules.fast_inference import packed_encoder_for

needs_bf16 = pytest.mark.skipif(not fast_inference._cpu_packs_bf16(), reason="oneDNN has no native bfloat16 here")


def pairs(count: int = 5) -> list:
    generator = torch.Generator().manual_seed(1)
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0]])
    captions = ["a red square", "two blue circles on a green field", "a dog"]
    return [
        (captions[i % 3], RegionFeatures(torch.rand(3 - i % 2, 16, generator=generator), boxes[: 3 - i % 2]))
        for i in range(count)
    ]


def scores(module, inputs, fast: bool, grad: bool = False) -> torch.Tensor:
    """The token embeddings of the valid positions and the scores, flattened (float32)."""
    features = module.preprocess(inputs)
    type(module).fast_inference = fast
    try:
        with torch.set_grad_enabled(grad):
            out = module(features)
        valid = out["token_embeddings"][out["attention_mask"].bool()]
        return torch.cat([valid.reshape(-1), out["scores"].reshape(-1)]).float().detach()
    finally:
        type(module).fast_inference = True


@needs_bf16
@pytest.mark.parametrize("backbone", ["bert", "xlmr"])
@pytest.mark.parametrize("options", [{}, {"fusion_layer": 1, "cross_modal_bias": -2.0}])
def test_packed_layers_compute_the_backbone_function(backbone, options):
    reference = build_module(backbone, featurizer=False, **options)
    module = copy.deepcopy(reference).to(torch.bfloat16)
    assert packed_encoder_for(module.backbone.encoder.layer, torch.bfloat16, torch.device("cpu")) is not None
    inputs = pairs()  # padded text and regions: the boolean mask path
    exact = scores(reference, inputs, fast=False)
    eager, packed = scores(module, inputs, fast=False), scores(module, inputs, fast=True)
    assert not torch.equal(eager, packed)  # the packed path ran
    # bfloat16 rounding: packed is as close to float32 as the eager bfloat16 layers are.
    assert (packed - exact).abs().max() <= 2 * (eager - exact).abs().max() + 2e-2


@needs_bf16
def test_packs_follow_weight_updates():
    module = build_module(featurizer=False).to(torch.bfloat16)
    inputs = pairs()
    before = scores(module, inputs, fast=True)
    with torch.no_grad():
        module.backbone.encoder.layer[0].intermediate.dense.weight.mul_(-1.5)
    after, eager = scores(module, inputs, fast=True), scores(module, inputs, fast=False)
    assert not torch.allclose(before, after, atol=1e-3)
    assert torch.allclose(after, eager, atol=5e-2)


def test_training_and_float32_run_the_backbone_layers():
    module = build_module(featurizer=False)
    assert packed_encoder_for(module.backbone.encoder.layer, torch.float32, torch.device("cpu")) is None
    module = module.to(torch.bfloat16)
    inputs = pairs()
    # With gradients (training) the result is bit for bit the backbone's own.
    assert torch.equal(scores(module, inputs, fast=True, grad=True), scores(module, inputs, fast=False, grad=True))
    module.train()
    torch.manual_seed(0)
    first = scores(module, inputs, fast=True)
    torch.manual_seed(0)
    assert torch.equal(first, scores(module, inputs, fast=False))


def test_a_packed_module_still_deep_copies():
    module = build_module(featurizer=False).to(torch.bfloat16)
    scores(module, pairs(), fast=True)
    copy.deepcopy(module)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_attention_matches_float32_sdpa_and_ignores_masked_keys(mask_kind):
    generator = torch.Generator().manual_seed(3)
    query, key, value = (torch.randn(4, 3, 9, 8, generator=generator) for _ in range(3))
    allowed = torch.ones(4, 1, 9, 9, dtype=torch.bool)
    allowed[1, :, :, 6:] = False  # row 1 is padded from position 6 on
    allowed[3, :, :, :2] = False
    mask = {"none": None, "bool": allowed, "additive": torch.zeros(allowed.shape).masked_fill(~allowed, -1e30)}[
        mask_kind
    ]
    exact = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    bf16 = [tensor.to(torch.bfloat16) for tensor in (query, key, value)]
    packed_mask = mask.to(torch.bfloat16) if mask_kind == "additive" else mask
    out = fast_inference.attention(*bf16, packed_mask)
    assert out.dtype == torch.bfloat16 and out.shape == exact.shape
    assert (out.float() - exact).abs().max() < 5e-2
    if mask is not None:
        # A masked key's value cannot reach the output.
        changed = bf16[2].clone()
        changed[1, :, 6:] = 1e3
        changed[3, :, :2] = -1e3
        assert torch.equal(fast_inference.attention(bf16[0], bf16[1], changed, packed_mask), out)
