from __future__ import annotations

import copy

import pytest
import torch
from conftest import build_module, random_regions, run_module

from mm_sbert.errors import InvalidInputError
from mm_sbert.modules import MultimodalTransformer


def states(module, inputs) -> torch.Tensor:
    """The token states of the unpadded positions (padded ones hold whatever the attention made of them)."""
    features = run_module(module, inputs)
    return features["token_embeddings"][features["attention_mask"].bool()]


PAIRS = [("a", random_regions(1, seed=2)), ("two green triangles left of a star", random_regions(5, seed=1))]
SINGLES = [
    ["a red circle", "one star left of two blue squares"],
    [random_regions(3, seed=4), random_regions(6, seed=5)],
]


@pytest.mark.parametrize("backbone", ["bert", "xlmr"])
def test_single_inputs_stop_below_the_pair_layers(backbone):
    module = build_module(backbone, featurizer=False, pair_layers=1)
    lower = copy.deepcopy(module)
    lower.pair_layers = 0
    lower.backbone.encoder.layer = lower.backbone.encoder.layer[:1]
    for inputs in SINGLES:
        torch.testing.assert_close(states(module, inputs), states(lower, inputs))
    # Changing the pair layer changes nothing for captions or images alone ...
    before = [states(module, inputs) for inputs in SINGLES]
    pair_scores = run_module(module, PAIRS)["scores"]
    with torch.no_grad():
        for parameter in module.backbone.encoder.layer[1].parameters():
            parameter.add_(0.1)
    for inputs, reference in zip(SINGLES, before):
        torch.testing.assert_close(states(module, inputs), reference)
    # ... and changes every pair's score.
    assert not torch.allclose(run_module(module, PAIRS)["scores"], pair_scores, atol=1e-4)


def test_pairs_run_every_layer_like_late_fusion():
    module = build_module("bert", featurizer=False, fusion_layer=1, pair_layers=1)
    expected = run_module(module, PAIRS)
    module.pair_layers = 0
    actual = run_module(module, PAIRS)
    torch.testing.assert_close(actual["token_embeddings"], expected["token_embeddings"])
    torch.testing.assert_close(actual["scores"], expected["scores"])


def test_a_batch_mixing_pairs_and_single_inputs_is_refused():
    module = build_module("bert", featurizer=False, fusion_layer=1, pair_layers=1)
    with pytest.raises(InvalidInputError, match="cannot mix"):
        run_module(module, [PAIRS[0], "a red circle"])


def test_pair_layers_leave_a_layer_for_single_inputs():
    with pytest.raises(InvalidInputError, match="pair_layers must be between 0 and 1"):
        build_module("bert", featurizer=False, pair_layers=2)


def test_pair_layers_survive_saving(tmp_path):
    module = build_module("bert", featurizer=False, fusion_layer=1, pair_layers=1)
    module.save(str(tmp_path / "module"))
    loaded = MultimodalTransformer.load(str(tmp_path / "module")).eval()
    assert loaded.pair_layers == 1
    for inputs in [PAIRS, *SINGLES]:
        torch.testing.assert_close(states(loaded, inputs), states(module, inputs))
