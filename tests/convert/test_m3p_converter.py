from __future__ import annotations

import json

import pytest
import torch
from original_models import m3p_forward, m3p_pooled, random_m3p_state_dict
from tiny_models import tiny_xlmr_tokenizer
from transformers import AutoTokenizer

from mm_sbert import MMCrossEncoder, MMSentenceTransformer, RegionFeatures
from mm_sbert.convert import CheckpointMismatchError, M3PConverter

FEATURE_DIM = 16
N_HEADS = 4
CAPTIONS = [
    "a red circle left of a blue square",
    "ein dog und eine cat auf der picture",  # German function words (the tiny vocabulary's), same API
    "un dog et une cat avec la person",  # French
]


def regions(count: int, seed: int) -> RegionFeatures:
    g = torch.Generator().manual_seed(seed)
    corners = torch.rand(count, 2, generator=g) * 0.5
    sizes = torch.rand(count, 2, generator=g) * 0.5
    return RegionFeatures(torch.randn(count, FEATURE_DIM, generator=g), torch.cat([corners, corners + sizes], dim=1))


def write_checkpoint(folder, state_dict: dict, params: dict | None = None) -> tuple[str, str]:
    """M3P saves ``{"model": state_dict}`` (DataParallel adds ``module.``); the tokenizer is XLM-R's."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {f"module.{k}": v for k, v in state_dict.items()}}, folder / "m3p_under_weights.pth")
    (folder / "params.json").write_text(json.dumps(params or {"n_heads": N_HEADS}))
    tiny_xlmr_tokenizer().save_pretrained(str(folder / "tokenizer"))
    return str(folder / "m3p_under_weights.pth"), str(folder / "params.json")


@pytest.fixture
def m3p_checkpoint(tmp_path):
    state_dict = random_m3p_state_dict(len(tiny_xlmr_tokenizer()), feature_dim=FEATURE_DIM)
    path, params = write_checkpoint(tmp_path / "m3p", state_dict)
    return path, params, str(tmp_path / "m3p" / "tokenizer"), state_dict


def reference(features: dict, state_dict: dict) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = features["text_mask"].sum(1)
    if features["region_features"].shape[1] == 0:
        return m3p_forward(state_dict, N_HEADS, features["input_ids"], lengths)
    vectors = features["region_features"]
    return m3p_forward(
        state_dict,
        N_HEADS,
        features["input_ids"],
        lengths,
        x_img=vectors[..., :FEATURE_DIM],
        image_loc=vectors[..., FEATURE_DIM:],
        lengths_img=features["region_mask"].sum(1),
    )


@pytest.mark.parametrize("inputs", ["text", "image", "text+image"])
def test_hidden_states_equal_the_original_forward(m3p_checkpoint, inputs):
    path, params, tokenizer, state_dict = m3p_checkpoint
    module = M3PConverter().convert(path, params, tokenizer).module
    # The original's length masks need every image of a batch to have the same number of regions.
    images = [regions(4, 0), regions(4, 1), regions(4, 2)]
    batch = {"text": CAPTIONS, "image": images, "text+image": list(zip(CAPTIONS, images))}[inputs]
    features = module.preprocess(batch)
    if inputs == "image":
        assert features["input_ids"].tolist() == [[module.tokenizer.cls_token_id]] * 3  # [regions ; <s>]
    with torch.no_grad():
        out = module(dict(features))
        hidden, reference_mask = reference(features, state_dict)
    mask = out["attention_mask"].bool()
    assert torch.equal(mask, reference_mask)
    torch.testing.assert_close(out["token_embeddings"][mask], hidden[mask], atol=1e-5, rtol=1e-5)


def test_regions_counts_differing_in_a_batch_give_each_row_its_own_result(m3p_checkpoint):
    # Where the original's length masks break (images with different region counts), each row must equal the
    # original run on that row alone.
    path, params, tokenizer, state_dict = m3p_checkpoint
    module = M3PConverter().convert(path, params, tokenizer).module
    pairs = [(CAPTIONS[0], regions(5, 0)), (CAPTIONS[1], regions(2, 1))]
    with torch.no_grad():
        batch = module(module.preprocess(pairs))
        for row, pair in enumerate(pairs):
            features = module.preprocess([pair])
            hidden, mask = reference(features, state_dict)
            batch_row = batch["token_embeddings"][row][batch["attention_mask"][row].bool()]
            torch.testing.assert_close(batch_row, hidden[0][mask[0]], atol=1e-5, rtol=1e-5)


def test_mmt_head_on_the_pooled_first_region_equals_the_original_softmax(m3p_checkpoint, tmp_path):
    path, params, tokenizer, state_dict = m3p_checkpoint
    g = torch.Generator().manual_seed(3)
    head = {"classifier.weight": torch.randn(2, 32, generator=g), "classifier.bias": torch.randn(2, generator=g)}
    converter = M3PConverter()
    converted = converter.convert_state_dict(
        state_dict, {"n_heads": N_HEADS}, AutoTokenizer.from_pretrained(tokenizer), head_state_dict=head
    )
    converted.save(str(tmp_path / "converted"))
    cross_encoder = MMCrossEncoder(str(tmp_path / "converted"), device="cpu")
    pairs = [(caption, regions(4, 5)) for caption in CAPTIONS]
    features = cross_encoder[0].preprocess(pairs)
    hidden, _ = reference(features, state_dict)
    expected = (m3p_pooled(state_dict, hidden) @ head["classifier.weight"].T + head["classifier.bias"]).softmax(-1)
    torch.testing.assert_close(torch.as_tensor(cross_encoder.predict(pairs)), expected[:, 1], atol=1e-6, rtol=1e-5)


def test_folder_loads_as_both_views_round_trips_and_encodes_german(m3p_checkpoint, tmp_path):
    path, params, tokenizer, state_dict = m3p_checkpoint
    converted = M3PConverter().convert(path, params, tokenizer)
    converted.save(str(tmp_path / "first"))
    bi_encoder = MMSentenceTransformer(str(tmp_path / "first"), device="cpu")
    bi_encoder.save(str(tmp_path / "second"))
    cross_encoder = MMCrossEncoder(str(tmp_path / "second"), device="cpu")
    original = converted.module.state_dict()
    for loaded in (bi_encoder[0].state_dict(), cross_encoder[0].state_dict()):
        assert loaded.keys() == original.keys()
        assert all(torch.equal(loaded[key], original[key]) for key in original)
    assert cross_encoder[0].embedding_mode == "joint" and cross_encoder[0].region_order == "regions_first"

    features = bi_encoder[0].preprocess([CAPTIONS[1]])
    assert (features["input_ids"] != bi_encoder.tokenizer.unk_token_id).all()  # the German words are in the vocabulary
    hidden, mask = reference(features, state_dict)
    embedding = bi_encoder.encode([CAPTIONS[1]], convert_to_tensor=True)[0]
    torch.testing.assert_close(embedding, hidden[0][mask[0]].mean(0), atol=1e-5, rtol=1e-5)


def test_positions_are_shifted_and_projections_folded(m3p_checkpoint):
    path, params, tokenizer, state_dict = m3p_checkpoint
    converted = M3PConverter().convert(path, params, tokenizer)
    module, report = converted.module, converted.report
    positions = module.backbone.embeddings.position_embeddings.weight
    assert torch.equal(positions[2:], state_dict["position_embeddings.weight"])  # padding_idx 1 -> offset 2
    assert torch.equal(positions[:2], torch.zeros(2, 32))
    weight = module.img_embedding.weight
    assert torch.equal(weight[:, :FEATURE_DIM], state_dict["image_embeddings.image_embeddings.weight"])
    assert torch.equal(weight[:, FEATURE_DIM:], state_dict["image_embeddings.image_location_embeddings.weight"])
    assert "seq_relationship.weight" in report.ignored and "refine_embeddings.layers.0.feed_forward.lin1.weight" in (
        report.ignored
    )
    assert report.unexpected == [] and report.initialized == ["classifier.bias", "classifier.weight"]


def test_mismatching_m3p_checkpoints_are_refused(tmp_path):
    n_words = len(tiny_xlmr_tokenizer())
    state_dict = random_m3p_state_dict(n_words, feature_dim=FEATURE_DIM)
    state_dict["image_embeddings.image_location_embeddings.weight"] = torch.zeros(32, 6)
    path, params = write_checkpoint(tmp_path / "six_box", state_dict)
    with pytest.raises(CheckpointMismatchError, match=r"image_location_embeddings.weight: expected \[32, 5\]"):
        M3PConverter().convert(path, params, str(tmp_path / "six_box" / "tokenizer"))

    state_dict = random_m3p_state_dict(n_words - 10, feature_dim=FEATURE_DIM)
    path, params = write_checkpoint(tmp_path / "small_vocab", state_dict)
    with pytest.raises(CheckpointMismatchError, match="not the checkpoint's tokenizer"):
        M3PConverter().convert(path, params, str(tmp_path / "small_vocab" / "tokenizer"))

    state_dict = random_m3p_state_dict(n_words, feature_dim=FEATURE_DIM)
    state_dict["ffns.1.lin2.weight"] = torch.zeros(32, 64)
    path, params = write_checkpoint(tmp_path / "ffn", state_dict)
    with pytest.raises(CheckpointMismatchError, match=r"ffns.1.lin2.weight -> backbone.encoder.layer.1.output.dense"):
        M3PConverter().convert(path, params, str(tmp_path / "ffn" / "tokenizer"))


def test_checkpoints_that_pickle_python_objects_need_trust(tmp_path):
    import argparse

    state_dict = random_m3p_state_dict(len(tiny_xlmr_tokenizer()), feature_dim=FEATURE_DIM)
    path, params = write_checkpoint(tmp_path / "m3p", state_dict)
    torch.save({"model": state_dict, "params": argparse.Namespace(n_heads=N_HEADS)}, path)
    tokenizer = str(tmp_path / "m3p" / "tokenizer")
    with pytest.raises(CheckpointMismatchError, match="trust_pickle"):
        M3PConverter().convert(path, params, tokenizer)
    module = M3PConverter(trust_pickle=True).convert(path, params, tokenizer).module
    assert torch.equal(module.backbone.embeddings.word_embeddings.weight, state_dict["embeddings.weight"])
