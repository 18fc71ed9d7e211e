from __future__ import annotations

import argparse
import json

import pytest
import torch
from original_models import oscar_config, oscar_forward, oscar_tensorize_example, random_oscar_state_dict
from tiny_models import tiny_bert_tokenizer

from mm_sbert import MMCrossEncoder, MMSentenceTransformer, RegionFeatures
from mm_sbert.convert import CheckpointMismatchError, OscarConverter

FEATURE_DIM = 16  # + 6 OSCAR box numbers = img_feature_dim 22
CAPTIONS = ["a red circle left of a blue square", "two dogs", "the man with a big black dog on the left"]


def regions(count: int, seed: int) -> RegionFeatures:
    g = torch.Generator().manual_seed(seed)
    corners = torch.rand(count, 2, generator=g) * 0.5
    sizes = torch.rand(count, 2, generator=g) * 0.5
    return RegionFeatures(torch.randn(count, FEATURE_DIM, generator=g), torch.cat([corners, corners + sizes], dim=1))


def write_checkpoint(folder, config: dict, state_dict: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(config))
    tiny_bert_tokenizer().save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(params=[False, True], ids=["oscar", "vinvl-img-layernorm"])
def oscar_checkpoint(request, tmp_path):
    config = oscar_config(len(tiny_bert_tokenizer()), use_img_layernorm=request.param)
    state_dict = random_oscar_state_dict(config)
    return write_checkpoint(tmp_path / "checkpoint-29-132780", config, state_dict), config, state_dict


def reference(features: dict, config: dict, state_dict: dict):
    return oscar_forward(
        state_dict,
        config,
        features["input_ids"],
        features["token_type_ids"],
        features["text_mask"],
        features["region_features"],
        features["region_mask"],
    )


@pytest.mark.parametrize("inputs", ["text", "image", "text+image"])
def test_hidden_states_and_score_equal_the_original_forward(oscar_checkpoint, inputs):
    path, config, state_dict = oscar_checkpoint
    module = OscarConverter().convert(path).module
    images = [regions(5, 0), regions(2, 1), regions(4, 2)]  # different region counts: padding must be masked
    batch = {"text": CAPTIONS, "image": images, "text+image": list(zip(CAPTIONS, images))}[inputs]
    features = module.preprocess(batch)
    if inputs == "image":
        # MMT-Retrieval feeds an image alone as [CLS] + regions.
        assert features["input_ids"].tolist() == [[module.tokenizer.cls_token_id]] * 3
    with torch.no_grad():
        out = module(dict(features))
        hidden, _, logits = reference(features, config, state_dict)
    mask = out["attention_mask"].bool()
    assert mask.sum() > 6
    torch.testing.assert_close(out["token_embeddings"][mask], hidden[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.sigmoid(out["scores"][:, 0]), logits.softmax(-1)[:, 1], atol=1e-6, rtol=1e-5)


def test_converted_folder_loads_as_both_views_and_matches_the_original(oscar_checkpoint, tmp_path):
    path, config, state_dict = oscar_checkpoint
    converted = OscarConverter().convert(path)
    converted.save(str(tmp_path / "converted"))
    bi_encoder = MMSentenceTransformer(str(tmp_path / "converted"), device="cpu")
    cross_encoder = MMCrossEncoder(str(tmp_path / "converted"), device="cpu")

    image = regions(3, 7)
    module = bi_encoder[0]
    for item in (CAPTIONS[0], image):
        features = module.preprocess([item])
        hidden, _, _ = reference(features, config, state_dict)
        mask = torch.cat([features["text_mask"], features["region_mask"]], dim=1).bool()
        expected = hidden[0][mask[0]].mean(0)
        embedding = bi_encoder.encode([item], convert_to_tensor=True)[0]
        torch.testing.assert_close(embedding, expected, atol=1e-5, rtol=1e-5)

    pairs = [(CAPTIONS[0], image), (CAPTIONS[1], image)]
    features = module.preprocess(pairs)
    _, _, logits = reference(features, config, state_dict)
    scores = torch.as_tensor(cross_encoder.predict(pairs))
    torch.testing.assert_close(scores, logits.softmax(-1)[:, 1], atol=1e-6, rtol=1e-5)


def test_converted_folder_round_trips_bit_exactly(oscar_checkpoint, tmp_path):
    path, _, _ = oscar_checkpoint
    converted = OscarConverter().convert(path)
    converted.save(str(tmp_path / "first"))
    first = MMSentenceTransformer(str(tmp_path / "first"), device="cpu")
    first.save(str(tmp_path / "second"))
    second = MMCrossEncoder(str(tmp_path / "second"), device="cpu")
    original = converted.module.state_dict()
    for loaded in (first[0].state_dict(), second[0].state_dict()):
        assert loaded.keys() == original.keys()
        for key in original:
            assert torch.equal(loaded[key], original[key]), key
    for key in ("embedding_mode", "image_only_text", "head_pooler", "box_format", "use_img_layernorm"):
        assert getattr(second[0], key) == getattr(converted.module, key)


def test_report_lists_ignored_pretraining_heads_and_the_head_conversion(oscar_checkpoint):
    path, _, state_dict = oscar_checkpoint
    report = OscarConverter().convert(path).report
    assert report.ignored == sorted(key for key in state_dict if key.startswith("cls."))
    assert report.unexpected == [] and report.initialized == []
    assert any("w1 - w0" in note for note in report.notes)
    assert len(report.loaded) == len(state_dict) - len(report.ignored)


def test_pretraining_checkpoint_without_classifier_gets_a_fresh_head(tmp_path):
    config = oscar_config(len(tiny_bert_tokenizer()))
    path = write_checkpoint(tmp_path / "pretrained", config, random_oscar_state_dict(config, classifier=False))
    converted = OscarConverter().convert(path)
    assert converted.report.initialized == ["classifier.bias", "classifier.weight"]
    assert torch.equal(converted.module.classifier.bias, torch.zeros(1))


def test_shape_mismatch_is_refused_with_the_offending_keys(tmp_path):
    config = oscar_config(len(tiny_bert_tokenizer()))
    state_dict = random_oscar_state_dict(config)
    state_dict["bert.encoder.layer.1.intermediate.dense.weight"] = torch.zeros(48, 32)
    path = write_checkpoint(tmp_path / "bad", config, state_dict)
    with pytest.raises(CheckpointMismatchError) as error:
        OscarConverter().convert(path)
    message = str(error.value)
    assert "bert.encoder.layer.1.intermediate.dense.weight" in message and "(48, 32)" in message
    assert "nothing was loaded" in message


def test_region_feature_width_mismatch_is_refused(tmp_path):
    config = oscar_config(len(tiny_bert_tokenizer()))
    path = write_checkpoint(tmp_path / "ckpt", config, random_oscar_state_dict(config))
    with pytest.raises(CheckpointMismatchError, match="region_feature_dim=2048"):
        OscarConverter(region_feature_dim=2048).convert(path)
    config_2054 = dict(config, img_feature_dim=2054)  # the config disagrees with the weights
    path = write_checkpoint(tmp_path / "ckpt2", config_2054, random_oscar_state_dict(config))
    with pytest.raises(CheckpointMismatchError, match=r"bert.img_embedding.weight -> img_embedding.weight"):
        OscarConverter().convert(path)


def test_unexpected_and_missing_keys_are_refused_unless_allowed(tmp_path):
    config = oscar_config(len(tiny_bert_tokenizer()))
    state_dict = random_oscar_state_dict(config)
    state_dict["bert.code_embeddings.weight"] = torch.zeros(3, 32)
    path = write_checkpoint(tmp_path / "extra", config, state_dict)
    with pytest.raises(CheckpointMismatchError, match="bert.code_embeddings.weight"):
        OscarConverter().convert(path)
    report = OscarConverter(allow_unexpected=True).convert(path).report
    assert report.unexpected == ["bert.code_embeddings.weight"]
    assert "unexpected, dropped (1): bert.code_embeddings.weight" in report.summary()

    del state_dict["bert.code_embeddings.weight"], state_dict["bert.encoder.layer.0.output.LayerNorm.bias"]
    path = write_checkpoint(tmp_path / "missing", config, state_dict)
    with pytest.raises(CheckpointMismatchError, match=r"missing weights \(1\): backbone.encoder.layer.0.output"):
        OscarConverter(allow_unexpected=True).convert(path)


def test_heads_that_are_not_a_relevance_score_are_refused(tmp_path):
    config = oscar_config(len(tiny_bert_tokenizer()))
    state_dict = random_oscar_state_dict(config)
    state_dict["classifier.weight"], state_dict["classifier.bias"] = torch.zeros(3, 32), torch.zeros(3)
    with pytest.raises(CheckpointMismatchError, match="3-way"):
        OscarConverter().convert(write_checkpoint(tmp_path / "vqa", config, state_dict))


def test_old_checkpoint_folders_with_only_vocab_txt_get_a_bert_tokenizer(tmp_path):
    # pytorch_transformers-era OSCAR folders: config.json without model_type, vocab.txt, no tokenizer config.
    by_id = {index: token for token, index in tiny_bert_tokenizer().get_vocab().items()}
    config = oscar_config(max(by_id) + 1)
    folder = tmp_path / "checkpoint-0"
    write_checkpoint(folder, config, random_oscar_state_dict(config))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    lines = [by_id.get(index, f"[unused{index}]") for index in range(max(by_id) + 1)]  # the tiny vocab has gaps
    (folder / "vocab.txt").write_text("\n".join(lines) + "\n")
    module = OscarConverter().convert(str(folder)).module
    assert module.tokenizer("two dogs")["input_ids"] == tiny_bert_tokenizer()("two dogs")["input_ids"]


def test_a_featurizer_can_be_attached_when_its_width_fits(tmp_path):
    from PIL import Image

    from mm_sbert import ColorGridFeaturizer

    featurizer = ColorGridFeaturizer(grid_size=2, resize_to=32)
    config = oscar_config(len(tiny_bert_tokenizer()), img_feature_dim=featurizer.feature_dim + 6)
    path = write_checkpoint(tmp_path / "ckpt", config, random_oscar_state_dict(config))
    converted = OscarConverter(featurizer=featurizer).convert(path)
    converted.save(str(tmp_path / "converted"))
    bi_encoder = MMSentenceTransformer(str(tmp_path / "converted"), device="cpu")
    image = Image.new("RGB", (40, 40), "red")
    from_pixels = bi_encoder.encode([image], convert_to_tensor=True)  # the saved folder kept the featurizer
    from_regions = bi_encoder.encode([featurizer.featurize([image])[0]], convert_to_tensor=True)
    torch.testing.assert_close(from_pixels, from_regions)

    config = oscar_config(len(tiny_bert_tokenizer()))  # 16-d regions
    path = write_checkpoint(tmp_path / "wide", config, random_oscar_state_dict(config))
    with pytest.raises(CheckpointMismatchError, match="the featurizer ColorGridFeaturizer yields 19-d"):
        OscarConverter(featurizer=featurizer).convert(path)


def test_checkpoint_saved_under_ddp_converts_to_the_same_model(tmp_path):
    config = oscar_config(len(tiny_bert_tokenizer()))
    state_dict = random_oscar_state_dict(config)
    plain = OscarConverter().convert(write_checkpoint(tmp_path / "plain", config, state_dict))
    ddp_state_dict = {f"module.{key}": value for key, value in state_dict.items()}
    ddp = OscarConverter().convert(write_checkpoint(tmp_path / "ddp", config, ddp_state_dict))
    assert ddp.report.loaded == plain.report.loaded and ddp.report.ignored == plain.report.ignored
    expected = plain.module.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in ddp.module.state_dict().items())


def test_head_score_and_fresh_head_options(tmp_path):
    config = oscar_config(len(tiny_bert_tokenizer()))
    state_dict = random_oscar_state_dict(config)
    path = write_checkpoint(tmp_path / "fine-tuned", config, state_dict)
    class1 = OscarConverter(head_score="class1-logit").convert(path).module
    assert torch.equal(class1.classifier.weight[0], state_dict["classifier.weight"][1])
    assert torch.equal(class1.classifier.bias, state_dict["classifier.bias"][1:])

    fresh = OscarConverter(fresh_head=True).convert(path)
    assert fresh.report.initialized == ["classifier.bias", "classifier.weight"]
    assert {"classifier.weight", "classifier.bias"} <= set(fresh.report.ignored)
    assert fresh.report.score.startswith("none yet")
    with pytest.raises(ValueError, match=r"head_score must be one of \('softmax', 'class1-logit'\), got 'logit'"):
        OscarConverter(head_score="logit")


# ---------------------------------------------------------------------------------------------------- object tags

MAX_SEQ, MAX_IMG = 16, 8
TAGS = [["dog", "man"], ["ball"], ["car", "red", "big", "dog", "man"]]


def tagged(count: int, seed: int, tags: list[str]) -> RegionFeatures:
    plain = regions(count, seed)
    return RegionFeatures(plain.features, plain.boxes, tags=tags, tag_scores=[0.5] * len(tags))


@pytest.fixture
def oscar_labels_checkpoint(tmp_path):
    """A retrieval fine-tune saved as OSCAR's run_retrieval.py saves it with --add_od_labels (training_args.bin)."""
    config = oscar_config(len(tiny_bert_tokenizer()))
    state_dict = random_oscar_state_dict(config, seed=3)
    path = write_checkpoint(tmp_path / "checkpoint-9-1000", config, state_dict)
    args = argparse.Namespace(add_od_labels=True, od_label_type="vg", max_seq_length=MAX_SEQ, att_mask_type="CLR")
    torch.save(args, tmp_path / "checkpoint-9-1000" / "training_args.bin")
    return path, config, state_dict


def oscar_layout_forward(config, state_dict, captions, images):
    """The original's outputs on inputs laid out by OSCAR's own tensorize_example (caption '' = image alone)."""
    examples = [
        oscar_tensorize_example(
            tiny_bert_tokenizer(), caption, image.region_vectors("oscar"), image.tag_text, MAX_SEQ, MAX_IMG
        )
        for caption, image in zip(captions, images)
    ]
    input_ids, mask, segments, img_feats = (torch.stack(parts) for parts in zip(*examples))
    hidden, _, logits = oscar_forward(
        state_dict, config, input_ids, segments, mask[:, :MAX_SEQ], img_feats, mask[:, MAX_SEQ:]
    )
    return hidden[mask.bool()].split(mask.sum(1).tolist()), logits


def test_a_checkpoint_fine_tuned_with_labels_reproduces_the_original_with_tags(oscar_labels_checkpoint):
    path, config, state_dict = oscar_labels_checkpoint
    converted = OscarConverter(max_seq_length=MAX_SEQ, max_regions=MAX_IMG).convert(path)
    module = converted.module
    assert module.add_od_labels and any("add_od_labels=True" in note for note in converted.report.notes)
    images = [tagged(5, 0, TAGS[0]), tagged(2, 1, TAGS[1]), tagged(9, 2, TAGS[2])]  # 9 > MAX_IMG: truncated
    captions = CAPTIONS  # the third leaves room for 3 of its image's 5 tag tokens: OSCAR cuts the tags
    expected_states, expected_logits = oscar_layout_forward(config, state_dict, captions, images)

    features = module.preprocess(list(zip(captions, images)))
    with torch.no_grad():
        out = module(dict(features))
    states = out["token_embeddings"][out["attention_mask"].bool()].split(out["attention_mask"].sum(1).tolist())
    for ours, theirs in zip(states, expected_states):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        torch.sigmoid(out["scores"][:, 0]), expected_logits.softmax(-1)[:, 1], atol=1e-6, rtol=1e-5
    )

    assert features["text_mask"][2].sum() == MAX_SEQ and features["token_type_ids"][2].sum() == 4

    # A caption that fills the text part leaves no room for tags (where OSCAR's own slicing would overrun).
    long_caption = "the man with a big black dog on the left of a red car and a ball"
    assert module.preprocess([(long_caption, images[0])])["input_ids"].shape[1] == MAX_SEQ

    # An image alone: OSCAR's layout with an empty caption, [CLS] [SEP] tags [SEP] regions.
    expected_states, _ = oscar_layout_forward(config, state_dict, ["", ""], images[:2])
    with torch.no_grad():
        out = module(module.preprocess(images[:2]))
    states = out["token_embeddings"][out["attention_mask"].bool()].split(out["attention_mask"].sum(1).tolist())
    for ours, theirs in zip(states, expected_states):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_tags_change_the_scores_only_when_the_model_reads_them(oscar_labels_checkpoint):
    path, _, _ = oscar_labels_checkpoint
    with_labels = OscarConverter().convert(path).module
    without_labels = OscarConverter(add_od_labels=False).convert(path).module
    image, plain = tagged(4, 5, ["dog", "ball"]), regions(4, 5)

    def score(module, image):
        with torch.no_grad():
            return module(module.preprocess([(CAPTIONS[1], image)]))["scores"].item()

    assert abs(score(with_labels, image) - score(with_labels, plain)) > 1e-4  # dropping the tags changes the score
    assert score(without_labels, image) == score(without_labels, plain)  # a model without labels ignores them


def test_add_od_labels_survives_save_and_load(oscar_labels_checkpoint, tmp_path):
    path, config, state_dict = oscar_labels_checkpoint
    OscarConverter(max_seq_length=MAX_SEQ, max_regions=MAX_IMG).convert(path).save(str(tmp_path / "converted"))
    cross_encoder = MMCrossEncoder(str(tmp_path / "converted"), device="cpu")
    assert cross_encoder[0].add_od_labels
    image = tagged(3, 4, TAGS[2])
    _, logits = oscar_layout_forward(config, state_dict, [CAPTIONS[0]], [image])
    scores = torch.as_tensor(cross_encoder.predict([(CAPTIONS[0], image)]))
    torch.testing.assert_close(scores, logits.softmax(-1)[:, 1], atol=1e-6, rtol=1e-5)
