from __future__ import annotations

import json

import pytest
import torch
from original_models import (
    linear_head,
    m3p_forward,
    oscar_config,
    oscar_forward,
    random_m3p_state_dict,
    random_oscar_state_dict,
)
from tiny_models import tiny_bert_tokenizer, tiny_xlmr_tokenizer

from mm_sbert import MMCrossEncoder, MMSentenceTransformer, RegionFeatures
from mm_sbert.convert import CheckpointMismatchError, MMTRetrievalConverter

FEATURE_DIM = 16
CAPTIONS = ["a red circle left of a blue square", "two dogs on the left"]


def regions(count: int, seed: int) -> RegionFeatures:
    g = torch.Generator().manual_seed(seed)
    corners = torch.rand(count, 2, generator=g) * 0.5
    return RegionFeatures(torch.randn(count, FEATURE_DIM, generator=g), torch.cat([corners, corners + 0.4], dim=1))


def random_head(seed: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"classifier.weight": torch.randn(2, 32, generator=g), "classifier.bias": torch.randn(2, generator=g)}


def write_mmt_folder(root, transformer: str, head: dict, input_key: str = "pooled_cls_token_embeddings") -> None:
    """The layout sentence-transformers <= 1.2.1 wrote for MMT-Retrieval's joint models."""
    classes = [transformer, "ClassificationHead", "Pooling"]
    paths = [f"0_{transformer}", "1_ClassificationHead", "2_Pooling"]
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"mmt_retrieval.model.models.{name}"}
        for i, (name, path) in enumerate(zip(classes, paths))
    ]
    root.mkdir(parents=True)
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "config.json").write_text(json.dumps({"__version__": "1.2.1"}))
    (root / f"0_{transformer}").mkdir()
    (root / f"0_{transformer}" / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 70, "max_image_seq_len": 50})
    )
    (root / "1_ClassificationHead").mkdir()
    torch.save(head, root / "1_ClassificationHead" / "class_head.pt")
    head_config = {"num_labels": 2, "input_key": input_key, "input_dim": 32, "classifier_type": "linear"}
    (root / "1_ClassificationHead" / "sentence_bert_config.json").write_text(
        json.dumps(head_config | {"scaling_factor": 2, "dropout": 0.1})
    )
    (root / "2_Pooling").mkdir()
    pooling = {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_max_tokens": False}
    pooling |= {"pooling_mode_mean_tokens": True, "pooling_mode_mean_sqrt_len_tokens": False}
    (root / "2_Pooling" / "config.json").write_text(json.dumps(pooling | {"pooling_key": "multimodal_embedding"}))


@pytest.fixture
def oscar_join(tmp_path):
    """Like oscar_join_flickr30k: BertImgModel.save_pretrained (no ``bert.`` prefix) + tokenizer + head + pooling."""
    config = oscar_config(len(tiny_bert_tokenizer()))
    state_dict = random_oscar_state_dict(config, prefix="", classifier=False, pretraining_heads=False)
    head = random_head()
    write_mmt_folder(tmp_path / "oscar_join", "OSCAR", head)
    torch.save(state_dict, tmp_path / "oscar_join" / "0_OSCAR" / "pytorch_model.bin")
    (tmp_path / "oscar_join" / "0_OSCAR" / "config.json").write_text(json.dumps(config))
    tiny_bert_tokenizer().save_pretrained(str(tmp_path / "oscar_join" / "0_OSCAR"))
    return str(tmp_path / "oscar_join"), config, state_dict, head


def test_released_oscar_model_converts_with_its_head_and_pooling(oscar_join, tmp_path):
    path, config, state_dict, head = oscar_join
    converted = MMTRetrievalConverter().convert(path)
    assert converted.module.max_seq_length == 72 and converted.module.max_regions == 50
    assert converted.report.unexpected == [] and converted.report.initialized == []
    converted.save(str(tmp_path / "converted"))
    bi_encoder = MMSentenceTransformer(str(tmp_path / "converted"), device="cpu")
    cross_encoder = MMCrossEncoder(str(tmp_path / "converted"), device="cpu")

    pairs = [(caption, regions(3, i)) for i, caption in enumerate(CAPTIONS)]
    features = cross_encoder[0].preprocess(pairs)
    args = [features[k] for k in ("input_ids", "token_type_ids", "text_mask", "region_features", "region_mask")]
    hidden, pooled, _ = oscar_forward(state_dict, config, *args, prefix="")
    expected = linear_head(head, pooled).softmax(-1)[:, 1]
    torch.testing.assert_close(torch.as_tensor(cross_encoder.predict(pairs)), expected, atol=1e-6, rtol=1e-5)

    image = regions(4, 9)
    features = bi_encoder[0].preprocess([image])
    args = [features[k] for k in ("input_ids", "token_type_ids", "text_mask", "region_features", "region_mask")]
    hidden, _, _ = oscar_forward(state_dict, config, *args, prefix="")
    torch.testing.assert_close(
        bi_encoder.encode([image], convert_to_tensor=True)[0], hidden[0].mean(0), atol=1e-5, rtol=1e-5
    )


def test_released_m3p_model_with_a_head_on_the_raw_first_token(tmp_path):
    n_words = len(tiny_xlmr_tokenizer())
    state_dict = random_m3p_state_dict(n_words, feature_dim=FEATURE_DIM)
    head = random_head(7)
    root = tmp_path / "m3p_join"
    write_mmt_folder(root, "M3P", head, input_key="cls_token_embeddings")
    torch.save({"model": state_dict}, root / "0_M3P" / "m3p_under_weights.pth")
    # M3P's model params (not visible in the weights) travel in the module config's model_args.
    module_config = {"max_seq_length": 70, "max_image_seq_len": 50, "model_args": {"n_heads": 4}}
    (root / "0_M3P" / "sentence_bert_config.json").write_text(json.dumps(module_config))
    tiny_xlmr_tokenizer().save_pretrained(str(tmp_path / "xlmr"))

    with pytest.raises(FileNotFoundError, match="xlm-roberta-base"):
        MMTRetrievalConverter().convert(str(root))  # M3P folders carry no tokenizer
    converted = MMTRetrievalConverter().convert(str(root), tokenizer=str(tmp_path / "xlmr"))
    module = converted.module
    assert module.head_pooler is False
    pairs = [(caption, regions(3, i)) for i, caption in enumerate(["ein dog und eine cat", "un dog et une cat"])]
    features = module.preprocess(pairs)
    vectors = features["region_features"]
    with torch.no_grad():
        scores = module(dict(features))["scores"][:, 0]
    hidden, _ = m3p_forward(
        state_dict,
        4,
        features["input_ids"],
        features["text_mask"].sum(1),
        vectors[..., :FEATURE_DIM],
        vectors[..., FEATURE_DIM:],
        features["region_mask"].sum(1),
    )
    expected = linear_head(head, hidden[:, 0]).softmax(-1)[:, 1]
    torch.testing.assert_close(torch.sigmoid(scores), expected, atol=1e-6, rtol=1e-5)


def test_mlp_heads_and_missing_transformers_are_refused(oscar_join, tmp_path):
    path, _, _, _ = oscar_join
    head_config_path = f"{path}/1_ClassificationHead/sentence_bert_config.json"
    with open(head_config_path) as f:
        head_config = json.load(f)
    with open(head_config_path, "w") as f:
        json.dump(head_config | {"classifier_type": "mlp"}, f)
    with pytest.raises(CheckpointMismatchError, match="only a linear head"):
        MMTRetrievalConverter().convert(path)

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointMismatchError, match="no OSCAR or M3P module"):
        MMTRetrievalConverter().convert(str(tmp_path / "empty"))


def test_class1_logit_head_reproduces_mmt_retrievals_ranking(oscar_join, tmp_path):
    # MMT-Retrieval ranks by the raw logits[:, 1]; the softmax probability (w1 - w0) can order pairs differently.
    path, config, state_dict, head = oscar_join
    pairs = [(caption, regions(3 + i % 3, i)) for i, caption in enumerate(CAPTIONS * 4)]
    default = MMTRetrievalConverter().convert(path)
    features = default.module.preprocess(pairs)
    args = [features[k] for k in ("input_ids", "token_type_ids", "text_mask", "region_features", "region_mask")]
    _, pooled, _ = oscar_forward(state_dict, config, *args, prefix="")
    logits = linear_head(head, pooled)
    reference_order = logits[:, 1].argsort(descending=True)
    assert not torch.equal(logits.softmax(-1)[:, 1].argsort(descending=True), reference_order)  # they differ here

    converted = MMTRetrievalConverter(head_score="class1-logit").convert(path)
    assert "MMT-Retrieval's evaluators" in converted.report.score and "converted as w1, b1" in converted.report.score
    converted.save(str(tmp_path / "converted"))
    readme = (tmp_path / "converted" / "README.md").read_text()
    assert "**Cross-encoder score**" in readme and "sigmoid(logits[:, 1])" in readme
    scores = torch.as_tensor(MMCrossEncoder(str(tmp_path / "converted"), device="cpu").predict(pairs))
    assert torch.equal(scores.argsort(descending=True), reference_order)
    torch.testing.assert_close(scores, torch.sigmoid(logits[:, 1]), atol=1e-6, rtol=1e-5)
    # The default keeps the softmax probability and says how to get the original ranking.
    assert "head_score='class1-logit'" in default.report.score


def test_fresh_head_drops_the_released_head(oscar_join):
    path, _, _, head = oscar_join
    converted = MMTRetrievalConverter(fresh_head=True).convert(path)
    assert converted.report.initialized == ["classifier.bias", "classifier.weight"]
    assert "1_ClassificationHead/class_head.pt:classifier.weight" in converted.report.ignored
    assert not torch.equal(converted.module.classifier.weight[0], head["classifier.weight"][1])


def test_released_folders_saved_under_ddp_convert(oscar_join, tmp_path):
    path, config, state_dict, head = oscar_join
    weights = f"{path}/0_OSCAR/pytorch_model.bin"
    torch.save({f"module.{key}": value for key, value in state_dict.items()}, weights)
    torch.save({f"module.{key}": value for key, value in head.items()}, f"{path}/1_ClassificationHead/class_head.pt")
    converted = MMTRetrievalConverter().convert(path)
    assert converted.report.unexpected == [] and converted.report.initialized == []
    module = converted.module
    assert torch.equal(
        module.backbone.embeddings.word_embeddings.weight, state_dict["embeddings.word_embeddings.weight"]
    )
    torch.testing.assert_close(
        module.classifier.weight[0], head["classifier.weight"][1] - head["classifier.weight"][0], atol=0, rtol=0
    )


def test_a_modules_json_that_is_not_a_list_of_modules_inside_the_folder_is_refused(oscar_join):
    path, _, _, _ = oscar_join
    with open(f"{path}/modules.json", "w") as f:
        json.dump({"0": "0_OSCAR"}, f)
    with pytest.raises(CheckpointMismatchError, match=r"modules.json must hold a JSON list of modules"):
        MMTRetrievalConverter().convert(path)
    with open(f"{path}/modules.json", "w") as f:
        json.dump([{"idx": 0, "name": "0", "path": "../elsewhere", "type": "mmt_retrieval.model.models.OSCAR"}], f)
    with pytest.raises(CheckpointMismatchError, match=r"names the module path '../elsewhere', which is outside"):
        MMTRetrievalConverter().convert(path)
