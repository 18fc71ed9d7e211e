from __future__ import annotations

import pytest
import torch
from conftest import build_module
from PIL import Image

from mm_sbert import ImageLoadError, RegionFeatures


def regions(num: int, dim: int = 16, seed: int = 0) -> RegionFeatures:
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(num, 2, generator=generator) * 0.5
    boxes = torch.cat([corners, corners + 0.4], dim=1)
    return RegionFeatures(torch.randn(num, dim, generator=generator), boxes)


def run(module, inputs):
    with torch.no_grad():
        return module(module.preprocess(inputs))


def mean_pool(features):
    mask = features["attention_mask"].unsqueeze(-1).float()
    return (features["token_embeddings"] * mask).sum(1) / mask.sum(1)


def test_text_only_input_is_exactly_the_backbone(backbone_name):
    """With no regions the module must reduce to the text transformer it wraps."""
    module = build_module(backbone_name, featurizer=False)
    captions = ["a red circle left of two blue squares", "one star"]
    features = run(module, captions)
    encoded = module.tokenizer(captions, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = module.backbone(**encoded).last_hidden_state
    mask = encoded["attention_mask"].bool()
    torch.testing.assert_close(features["token_embeddings"][mask], reference[mask], atol=1e-5, rtol=1e-5)


def test_sequence_layout_follows_region_order(backbone_name):
    module = build_module(backbone_name, featurizer=False)
    features = run(module, [("a red circle", regions(3))])
    text_width = features["text_mask"].shape[1]
    if module.region_order == "text_first":
        assert features["attention_mask"][0].tolist() == [1] * text_width + [1, 1, 1]
    else:
        assert features["attention_mask"][0].tolist() == [1, 1, 1] + [1] * text_width


@pytest.mark.parametrize("backbone", ["bert", "xlmr"])
def test_outputs_do_not_depend_on_batch_neighbours(backbone):
    """Padding (tokens and regions) is masked: an input gives the same vector alone or in any batch."""
    module = build_module(backbone, featurizer=False)
    target = ("two green triangles", regions(4, seed=1))
    alone = run(module, [target])
    neighbours = [("a", regions(1, seed=2)), ("a large purple star above a small orange square", regions(9, seed=3))]
    batched = run(module, [neighbours[0], target, neighbours[1]])
    torch.testing.assert_close(mean_pool(batched)[1], mean_pool(alone)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched["scores"][1], alone["scores"][0], atol=1e-5, rtol=1e-5)

    image_alone = run(module, [regions(4, seed=1)])
    image_batched = run(module, [regions(12, seed=5), regions(4, seed=1), regions(1, seed=6)])
    torch.testing.assert_close(mean_pool(image_batched)[1], mean_pool(image_alone)[0], atol=1e-5, rtol=1e-5)


def test_padded_region_values_cannot_leak():
    module = build_module("bert", featurizer=False)
    features = module.preprocess([("a dog", regions(2)), ("a cat", regions(6))])
    poisoned = {key: value.clone() for key, value in features.items()}
    poisoned["region_features"][0, 2:] = 1e3  # padding slots of the first input
    with torch.no_grad():
        clean, dirty = module(dict(features)), module(poisoned)
    torch.testing.assert_close(mean_pool(clean)[0], mean_pool(dirty)[0], atol=1e-5, rtol=1e-5)


def test_regions_change_the_embedding_and_their_boxes_matter():
    module = build_module("bert", featurizer=False)
    base = regions(3)
    moved = RegionFeatures(base.features, base.boxes.flip(0))
    text_only, with_image, with_moved = (
        mean_pool(run(module, [x])) for x in ["a dog", ("a dog", base), ("a dog", moved)]
    )
    assert not torch.allclose(text_only, with_image, atol=1e-4)
    assert not torch.allclose(with_image, with_moved, atol=1e-4)


def test_pair_order_and_dict_input_are_the_same_input():
    module = build_module("bert")
    image = Image.new("RGB", (32, 32), "red")
    a, b, c = (
        run(module, [x])["scores"]
        for x in [("a red square", image), (image, "a red square"), {"text": "a red square", "image": image}]
    )
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_image_path_and_pil_image_give_the_same_features(tmp_path):
    module = build_module("bert")
    image = Image.new("RGB", (48, 40), (10, 200, 30))
    image.save(tmp_path / "green.png")
    from_path = run(module, [str(tmp_path / "green.png")])
    from_pil = run(module, [image])
    torch.testing.assert_close(mean_pool(from_path), mean_pool(from_pil))


def test_regions_beyond_max_regions_are_dropped():
    module = build_module("bert", featurizer=False, max_regions=5)
    features = module.preprocess([regions(8)])
    assert features["region_features"].shape[1] == 5


def test_clear_errors(tmp_path):
    module = build_module("bert", featurizer=False)
    with pytest.raises(ValueError, match="width 20, but this model expects 16"):
        module.preprocess([regions(3, dim=20)])
    with pytest.raises(ValueError, match="empty list"):
        module.preprocess([])
    with pytest.raises(ValueError, match="two texts"):
        module.preprocess([("a dog", "a cat")])
    with pytest.raises(ValueError, match="two images"):
        module.preprocess([(regions(2), regions(3))])
    with pytest.raises(ValueError, match="no image featurizer"):
        module.preprocess([Image.new("RGB", (8, 8))])
    with pytest.raises(ValueError, match="unsupported input type int"):
        module.preprocess([3])
    with_featurizer = build_module("bert")
    with pytest.raises(ImageLoadError, match="nowhere.jpg"):
        with_featurizer.preprocess([str(tmp_path / "nowhere.jpg")])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    with pytest.raises(ImageLoadError, match="corrupt.png"):
        with_featurizer.preprocess([("a dog", str(corrupt))])


def test_featurizer_width_must_match_the_projection():
    from conftest import tiny_bert

    from mm_sbert import ColorGridFeaturizer, MultimodalTransformer

    backbone, tokenizer = tiny_bert()
    with pytest.raises(ValueError, match="region_feature_dim=19"):
        MultimodalTransformer(
            backbone=backbone, tokenizer=tokenizer, featurizer=ColorGridFeaturizer(), region_feature_dim=2048
        )


def reference_score(module, features):
    """The head written out from the module's token states and weights, one input at a time."""
    states, mask = features["token_embeddings"], features["attention_mask"].bool()
    text_width = features["text_mask"].shape[1]
    pooler = module.backbone.pooler

    def pool(vector):
        return torch.tanh(pooler.dense(vector)) if module.head_pooler else vector

    logits = []
    for row in range(states.shape[0]):
        if module.head_input == "first_token":
            head_in = pool(states[row, 0])
        elif module.head_input == "mean":
            head_in = pool(states[row][mask[row]].mean(0))
        elif module.head_input == "token_match":
            caption = pool(states[row, :text_width][mask[row, :text_width]])
            image = pool(states[row, text_width:][mask[row, text_width:]])
            compared = []
            for token in caption:  # each caption token against the image positions it aligns with
                weights = torch.softmax(image @ token / token.numel() ** 0.5, dim=0)
                aligned = weights @ image
                compared.append(torch.cat([token, aligned, token * aligned, (token - aligned).abs()]))
            compared = torch.stack(compared)
            head_in = torch.cat([compared.mean(0), compared.max(0).values])
        else:
            text = pool(states[row, :text_width][mask[row, :text_width]].mean(0))
            image = pool(states[row, text_width:][mask[row, text_width:]].mean(0))
            if module.head_input == "cosine_match":
                text, image = torch.nn.functional.normalize(text, dim=0), torch.nn.functional.normalize(image, dim=0)
            head_in = torch.cat([text, image, text * image, (text - image).abs()])
        logits.append(module.classifier(head_in))
    return torch.stack(logits)


@pytest.mark.parametrize("head_input", ["first_token", "mean", "text_image_match", "cosine_match", "token_match"])
@pytest.mark.parametrize("head_pooler", [True, False])
def test_cross_encoder_head_reads_what_head_input_names(head_input, head_pooler):
    module = build_module("bert", featurizer=False, head_input=head_input, head_pooler=head_pooler)
    torch.nn.init.normal_(module.classifier.weight, std=0.5)
    inputs = [("a", regions(1, seed=2)), ("two green triangles left of a star", regions(5, seed=1))]
    features = run(module, inputs)
    hidden = module.backbone.config.hidden_size
    widths = {"token_match": 8 * hidden, "text_image_match": 4 * hidden, "cosine_match": 4 * hidden}
    assert module.classifier.in_features == widths.get(head_input, hidden)
    with torch.no_grad():
        expected = reference_score(module, features)
    torch.testing.assert_close(features["scores"], expected, atol=1e-5, rtol=1e-5)
    # The score depends on the regions and, for the matching head, on both halves.
    other = run(module, [("a", regions(1, seed=7)), inputs[1]])
    assert not torch.allclose(other["scores"][0], features["scores"][0])
    torch.testing.assert_close(other["scores"][1], features["scores"][1], atol=1e-5, rtol=1e-5)


def test_unknown_head_input_is_refused():
    with pytest.raises(ValueError, match="head_input must be one of"):
        build_module("bert", featurizer=False, head_input="cls")


def reference_late_fusion(module, inputs):
    """Token states of ``inputs`` with the first layer run on each modality alone, then the rest on the whole."""
    captured = {}

    def capture(layer, args):
        captured["hidden"] = args[0]  # returns None: a pre-hook that returns a value replaces the layer's inputs

    handle = module.backbone.encoder.layer[0].register_forward_pre_hook(capture)
    # With gradients the first layer reads the whole joined sequence (inference runs the two blocks apart).
    with torch.enable_grad():
        features = module(module.preprocess(inputs))
    handle.remove()
    hidden = captured["hidden"].detach()
    mask = features["attention_mask"].bool()
    text_width = features["text_mask"].shape[1]
    text_first = module.region_order == "text_first"
    text_part = slice(0, text_width) if text_first else slice(hidden.shape[1] - text_width, None)
    region_part = slice(text_width, None) if text_first else slice(0, hidden.shape[1] - text_width)
    layers = module.backbone.encoder.layer
    rows = []
    with torch.no_grad():
        for row in range(hidden.shape[0]):
            parts = []
            for part in (text_part, region_part) if text_first else (region_part, text_part):
                states, keep = hidden[row : row + 1, part], mask[row, part]
                out = torch.zeros_like(states)
                if keep.any():
                    out[:, keep] = layers[0](states[:, keep], None)
                parts.append(out)
            states, keep = torch.cat(parts, dim=1), mask[row]
            out = torch.zeros_like(states)
            out[:, keep] = layers[1](states[:, keep], None)
            rows.append(out[0])
    return features, torch.stack(rows), mask


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("backbone", ["bert", "xlmr"])
def test_late_fusion_runs_the_first_layers_on_each_modality_alone(backbone, attention):
    module = build_module(backbone, featurizer=False, fusion_layer=1)
    # sdpa takes a boolean mask, eager an additive one: both must keep the modalities apart.
    module.backbone.set_attn_implementation(attention)
    inputs = [("a", regions(1, seed=2)), ("two green triangles left of a star", regions(5, seed=1))]
    features, expected, mask = reference_late_fusion(module, inputs)
    torch.testing.assert_close(features["token_embeddings"][mask].detach(), expected[mask], atol=1e-5, rtol=1e-5)
    # Inference (the two blocks run apart) computes the same function.
    torch.testing.assert_close(run(module, inputs)["token_embeddings"][mask], expected[mask], atol=1e-5, rtol=1e-5)
    # Single-stream (fusion_layer=0) on the same weights is a different computation for pairs ...
    module.fusion_layer = 0
    assert not torch.allclose(run(module, inputs)["token_embeddings"][mask], expected[mask], atol=1e-4)
    # ... and the same one for captions alone.
    captions = ["a red circle", "one star left of two blue squares"]
    single = run(module, captions)["token_embeddings"]
    module.fusion_layer = 1
    torch.testing.assert_close(run(module, captions)["token_embeddings"], single)


def first_layer_rows(module, inputs, grad: bool = False) -> tuple[list[int], torch.Tensor]:
    """The row counts the first layer was called with, and the scores."""
    rows = []
    handle = module.backbone.encoder.layer[0].register_forward_pre_hook(lambda layer, args: rows.append(len(args[0])))
    try:
        with torch.set_grad_enabled(grad):
            scores = module(module.preprocess(inputs))["scores"].detach()
    finally:
        handle.remove()
    return rows, scores


@pytest.mark.parametrize("backbone,region_order", [("bert", "text_first"), ("xlmr", "regions_first")])
def test_a_query_and_its_candidates_run_the_unfused_layers_once_per_query(backbone, region_order):
    module = build_module(
        backbone, featurizer=False, fusion_layer=1, head_input="text_image_match", region_order=region_order
    )
    caption, image = "two green triangles left of a star", regions(3, seed=9)
    captions = ["a", "a red circle", "one star left of two blue squares", "dogs"]
    text_first = module.region_order == "text_first"
    for inputs, shared_first in (
        ([(caption, regions(2 + i, seed=i)) for i in range(4)], text_first),  # a caption and 4 images
        ([(text, image) for text in captions], not text_first),  # an image and 4 captions
    ):
        rows, scores = first_layer_rows(module, inputs)
        # The shared block once, the other one row per pair, instead of 4 joined rows.
        assert rows == ([1, 4] if shared_first else [4, 1])
        whole_rows, whole = first_layer_rows(module, inputs, grad=True)
        assert whole_rows == [4]
        torch.testing.assert_close(scores, whole, atol=1e-5, rtol=1e-5)
        module.unfused_blocks_apart = False  # the switch: inference on the joined rows, as with gradients
        joined_rows, joined = first_layer_rows(module, inputs)
        module.unfused_blocks_apart = True
        assert joined_rows == [4] and torch.equal(joined, whole)


def test_pairs_without_padding_score_as_they_do_beside_a_padded_pair():
    # With no padding the fused layers attend with no mask at all; beside a longer pair the same rows are masked.
    module = build_module(featurizer=False, fusion_layer=1, head_input="text_image_match")
    caption = "two green triangles left of a star"
    pairs = [(caption, regions(3, seed=i)) for i in range(4)]
    _, alone = first_layer_rows(module, pairs)
    _, beside_longer = first_layer_rows(module, [*pairs, (caption, regions(5, seed=9))])
    torch.testing.assert_close(alone, beside_longer[:4], atol=1e-5, rtol=1e-5)
    _, with_gradients = first_layer_rows(module, pairs, grad=True)  # the joined rows, no mask either
    torch.testing.assert_close(alone, with_gradients, atol=1e-5, rtol=1e-5)


def test_tags_split_from_one_caption_but_not_from_captions_they_follow_at_different_places():
    # Tags sit in the text block but belong to the image side; after one caption they start at one column.
    module = build_module(featurizer=False, fusion_layer=1, add_od_labels=True, head_input="text_image_match")
    dog = RegionFeatures(regions(2).features, regions(2).boxes, tags=["dog", "ball"])
    circle = RegionFeatures(regions(3, seed=4).features, regions(3, seed=4).boxes, tags=["red circle"])
    for inputs, expected_rows in (
        ([("a dog", dog), ("a dog", circle)], [1, 2]),
        ([("a dog", dog), ("two dogs run after a red ball on the grass", circle)], [2]),
    ):
        rows, scores = first_layer_rows(module, inputs)
        assert rows == expected_rows
        torch.testing.assert_close(scores, first_layer_rows(module, inputs, grad=True)[1], atol=1e-5, rtol=1e-5)


def test_late_fusion_needs_a_layer_that_fuses():
    with pytest.raises(ValueError, match="fusion_layer must be between 0 and 1"):
        build_module("bert", featurizer=False, fusion_layer=2)
    with pytest.raises(ValueError, match="fusion_layer must be at least 0, got -1"):
        build_module("bert", featurizer=False, fusion_layer=-1)
