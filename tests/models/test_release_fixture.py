"""Folders saved by mm_sbert 0.1.0 (backbone config inside mm_transformer_config.json) still load to the same model.

The expected outputs were recorded on another CPU; float32 kernels of other CPUs round differently (1 ulp, ~2e-7
here), so the comparison allows float32 rounding. A wrong load (a weight missed, a LayerNorm dropped) moves outputs
by ~1e-1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.numpy import load_file

from mm_sbert import MMCrossEncoder, MMSentenceTransformer, RegionFeatures

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "release_0_1_0_joint"
CAPTIONS = ["a red circle left of a blue square", "two green triangles", "one large yellow star on top"]


def images() -> list[Image.Image]:
    out = []
    for colour, other in (("red", "blue"), ("green", "white"), ("yellow", "black")):
        image = Image.new("RGB", (24, 16), colour)
        ImageDraw.Draw(image).rectangle((2, 3, 10, 12), fill=other)
        out.append(image)
    return out


# Float32 rounding of a 2-layer model across CPUs, with room: observed 2.4e-7.
ATOL = 1e-5


def assert_same(actual, expected) -> None:
    np.testing.assert_allclose(actual, expected, atol=ATOL, rtol=0)


def test_a_folder_saved_by_release_0_1_0_encodes_and_predicts_as_it_did():
    expected = load_file(str(FIXTURE / "expected_outputs.safetensors"))
    regions = [
        RegionFeatures(torch.from_numpy(f), torch.from_numpy(b))
        for f, b in zip(expected["region_features"], expected["boxes"])
    ]
    bi_encoder = MMSentenceTransformer(str(FIXTURE / "model"), device="cpu")
    assert_same(bi_encoder.encode(images()), expected["image_embeddings"])
    assert_same(bi_encoder.encode(regions), expected["region_embeddings"])
    assert_same(bi_encoder.encode(CAPTIONS), expected["caption_embeddings"])

    cross_encoder = MMCrossEncoder(str(FIXTURE / "model"), device="cpu")
    pairs = [(c, im) for c in CAPTIONS for im in images()] + [(CAPTIONS[0], regions[0]), (regions[1], CAPTIONS[2])]
    assert_same(cross_encoder.predict(pairs), expected["scores"])
    assert_same(cross_encoder.predict(pairs, activation_fn=torch.nn.Identity()), expected["logits"])
