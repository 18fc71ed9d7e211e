"""model_kwargs reach the backbone's from_pretrained, and a float16 model runs end to end."""

from __future__ import annotations

import numpy as np
import torch
from conftest import build_views
from PIL import Image
from tiny_models import tiny_bert

from mm_sbert import ColorGridFeaturizer, MMCrossEncoder, MMSentenceTransformer, RegionFeatures

CAPTIONS = ["a red circle", "two green triangles"]


def inputs():
    return [
        Image.new("RGB", (24, 16), "red"),
        RegionFeatures(torch.linspace(0, 1, 57).reshape(3, 19), torch.tensor([[0.1, 0.1, 0.5, 0.5]] * 3)),
    ]


def test_saved_folder_loads_in_float16_with_eager_attention(tmp_path):
    bi_encoder, cross_encoder = build_views("bert")
    bi_encoder.save(str(tmp_path))
    expected = bi_encoder.encode(inputs())
    fp16 = {"torch_dtype": torch.float16, "attn_implementation": "eager"}
    loaded = MMSentenceTransformer(str(tmp_path), device="cpu", model_kwargs=fp16)
    module = loaded[0]
    assert {parameter.dtype for parameter in module.parameters()} == {torch.float16}
    assert module.backbone.config._attn_implementation == "eager"
    np.testing.assert_allclose(loaded.encode(inputs()).astype(np.float32), expected, atol=2e-2)
    scores = MMCrossEncoder(str(tmp_path), device="cpu", model_kwargs=fp16).predict([(CAPTIONS[0], inputs()[0])])
    np.testing.assert_allclose(scores, cross_encoder.predict([(CAPTIONS[0], inputs()[0])]), atol=2e-2)


def test_from_backbone_in_float16_encodes_images_and_captions(tmp_path):
    backbone, tokenizer = tiny_bert()
    backbone.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    grid = ColorGridFeaturizer(grid_size=2, resize_to=32)
    kwargs = {"region_feature_dim": grid.feature_dim, "featurizer": grid}
    torch.manual_seed(0)
    full = MMSentenceTransformer.from_backbone(str(tmp_path), device="cpu", **kwargs)
    torch.manual_seed(0)
    half = MMSentenceTransformer.from_backbone(
        str(tmp_path), device="cpu", model_kwargs={"torch_dtype": torch.float16}, **kwargs
    )
    assert {parameter.dtype for parameter in half[0].parameters()} == {torch.float16}
    for batch in (inputs(), CAPTIONS):
        np.testing.assert_allclose(half.encode(batch).astype(np.float32), full.encode(batch), atol=2e-2)
