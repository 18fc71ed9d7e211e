from __future__ import annotations

import json

import pytest
import torch
from original_models import m3p_forward, m3p_itm_logit, m3p_pooled, m3p_trainer_checkpoint, random_m3p_state_dict
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
    assert "refine_embeddings.layers.0.feed_forward.lin1.weight" in report.ignored
    # M3P's image-text matching head is the cross-encoder head: nothing starts random.
    assert "seq_relationship.weight" in report.loaded or "seq_relationship.weight" not in report.ignored
    assert torch.equal(module.classifier.weight, state_dict["seq_relationship.weight"])
    assert report.unexpected == [] and report.initialized == []


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


# ------------------------------------------------------------------ checkpoints as M3P's own trainer writes them

TRAINER_PARAMS = {
    "emb_dim": 32,
    "n_layers": 2,
    "n_heads": N_HEADS,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "gelu_activation": True,
    "pad_index": 1,
    "refine_image": False,
    "lang2id": {"en": 0},
    "id2lang": {0: "en"},
    "langs": ["en"],
    "max_region_num": 100,
}


@pytest.fixture
def trainer_checkpoint(tmp_path):
    """``checkpoint.pth`` as M3P's trainer saves it under DDP, no separate config: n_heads comes from its params."""
    tokenizer = tiny_xlmr_tokenizer()
    state_dict = random_m3p_state_dict(len(tokenizer), feature_dim=FEATURE_DIM)
    folder = tmp_path / "m3p_run"
    folder.mkdir()
    params = TRAINER_PARAMS | {"n_words": len(tokenizer)}
    torch.save(m3p_trainer_checkpoint(state_dict, params), folder / "checkpoint.pth")
    tokenizer.save_pretrained(str(folder))
    return str(folder / "checkpoint.pth"), state_dict


def test_a_checkpoint_written_by_m3ps_trainer_converts(trainer_checkpoint):
    path, state_dict = trainer_checkpoint
    converted = M3PConverter().convert(path)  # params (n_heads=4, not hidden/64) from the checkpoint itself
    report = converted.report
    for group in ("latent_transforms.", "original_transforms.", "pooled_layer2.", "seq_relationship2."):
        dropped = [key for key in state_dict if key.startswith(group)]
        assert dropped and set(dropped) <= set(report.ignored), group
    assert report.unexpected == [] and report.initialized == []
    summary = report.summary()  # the dropped groups are reported by name
    assert all(f"{group}* (" in summary for group in ("latent_transforms.", "pooled_layer2.", "seq_relationship2."))
    module = converted.module
    assert module.backbone.config.num_attention_heads == N_HEADS
    pairs = list(zip(CAPTIONS, [regions(4, 0), regions(4, 1), regions(4, 2)]))
    features = module.preprocess(pairs)
    with torch.no_grad():
        out = module(dict(features))
        hidden, mask = reference(features, state_dict)
    torch.testing.assert_close(out["token_embeddings"][mask], hidden[mask], atol=1e-5, rtol=1e-5)


def test_m3ps_image_text_matching_head_becomes_the_cross_encoder_head(trainer_checkpoint, tmp_path):
    path, state_dict = trainer_checkpoint
    converted = M3PConverter().convert(path)
    assert any("reranks zero-shot" in note for note in converted.report.notes)
    assert "image-text matching logit" in converted.report.score
    converted.save(str(tmp_path / "converted"))
    assert "M3P's own image-text matching logit" in (tmp_path / "converted" / "README.md").read_text()
    cross_encoder = MMCrossEncoder(str(tmp_path / "converted"), device="cpu").eval()

    pairs = [(caption, regions(4, 10 + i)) for i, caption in enumerate(CAPTIONS)]
    pairs += [(CAPTIONS[0], regions(4, 20)), (CAPTIONS[2], regions(4, 10))]
    features = cross_encoder[0].preprocess(pairs)
    with torch.no_grad():
        logits = cross_encoder[0](dict(features))["scores"][:, 0]
        hidden, _ = reference(features, state_dict)
    expected = m3p_itm_logit(state_dict, hidden)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        torch.as_tensor(cross_encoder.predict(pairs)), torch.sigmoid(expected), atol=1e-5, rtol=1e-5
    )

    fresh = M3PConverter(fresh_head=True).convert(path)
    assert fresh.report.initialized == ["classifier.bias", "classifier.weight"]
    assert {"seq_relationship.weight", "seq_relationship.bias"} <= set(fresh.report.ignored)
    assert fresh.report.score.startswith("none yet: the cross-encoder head is freshly initialised")
    assert not torch.equal(fresh.module.classifier.weight, state_dict["seq_relationship.weight"])


def test_batching_never_changes_an_items_output_with_differing_region_counts(trainer_checkpoint, tmp_path):
    # M3P's jointfwd masks the first regions + tokens positions of each row, so in a batch with a 6-region and a
    # 2-region image the short image's padded region slots count as real. mm_sbert gives every item the output it
    # gets alone, which is what M3P computes for that item on its own.
    path, state_dict = trainer_checkpoint
    converted = M3PConverter().convert(path)
    converted.save(str(tmp_path / "converted"))
    cross_encoder = MMCrossEncoder(str(tmp_path / "converted"), device="cpu")
    bi_encoder = MMSentenceTransformer(str(tmp_path / "converted"), device="cpu")
    images = [regions(6, 0), regions(2, 1), regions(4, 2)]
    pairs = list(zip(CAPTIONS, images))

    alone = []
    for pair in pairs:
        features = cross_encoder[0].preprocess([pair])
        with torch.no_grad():
            hidden, _ = reference(features, state_dict)
        alone.append(m3p_itm_logit(state_dict, hidden)[0])
    alone = torch.stack(alone)
    mixed_features = cross_encoder[0].preprocess(pairs)
    with torch.no_grad():
        mixed_reference = m3p_itm_logit(state_dict, reference(mixed_features, state_dict)[0])
    assert not torch.allclose(mixed_reference, alone, atol=1e-3)  # the original's batching changes the scores

    batch_scores = torch.as_tensor(cross_encoder.predict(pairs))
    torch.testing.assert_close(batch_scores, torch.sigmoid(alone), atol=1e-5, rtol=1e-5)
    one_by_one = torch.tensor([float(cross_encoder.predict([pair])[0]) for pair in pairs])
    torch.testing.assert_close(batch_scores, one_by_one, atol=1e-6, rtol=1e-5)

    batch_embeddings = bi_encoder.encode(images, convert_to_tensor=True)
    single_embeddings = torch.stack([bi_encoder.encode([image], convert_to_tensor=True)[0] for image in images])
    torch.testing.assert_close(batch_embeddings, single_embeddings, atol=1e-5, rtol=1e-5)
