from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import build_views
from PIL import Image
from safetensors import safe_open
from sentence_transformers import CrossEncoder, SentenceTransformer

from mm_sbert import MMCrossEncoder, MMSentenceTransformer, RegionFeatures
from mm_sbert.models.views import resolve_views, to_bi_encoder

CAPTIONS = ["a red circle left of a blue square", "two green triangles", "one large yellow star on top"]


def images():
    return [Image.new("RGB", (40, 32), colour) for colour in ("red", "green", "yellow")]


def pairs():
    return [(caption, image) for caption, image in zip(CAPTIONS, images())] + [(images()[0], CAPTIONS[1])]


def encode_both(bi_encoder):
    """Images and captions (the host encodes one modality per call)."""
    return np.concatenate([bi_encoder.encode(images()), bi_encoder.encode(CAPTIONS)])


def perturb(bi_encoder):
    """Move every weight away from its initialisation so a round trip cannot pass by re-initialising."""
    torch.manual_seed(123)
    with torch.no_grad():
        for parameter in bi_encoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)


def test_joint_views_share_one_module():
    bi_encoder, cross_encoder = build_views("bert")
    assert cross_encoder[0] is bi_encoder[0]
    assert bi_encoder.to_cross_encoder()[0] is bi_encoder[0]
    assert cross_encoder.to_bi_encoder()[0] is bi_encoder[0]
    assert bi_encoder.modalities == ["text", "image", ("image", "text")]


def test_round_trip_is_bit_exact_for_both_views(backbone_name, tmp_path):
    bi_encoder, cross_encoder = build_views(backbone_name)
    perturb(bi_encoder)
    embeddings = encode_both(bi_encoder)
    scores = cross_encoder.predict(pairs())

    bi_encoder.save(str(tmp_path / "joint"))
    cross_encoder.save(str(tmp_path / "cross"))
    for folder in ("joint", "cross"):
        path = str(tmp_path / folder)
        np.testing.assert_array_equal(encode_both(MMSentenceTransformer(path, device="cpu")), embeddings)
        np.testing.assert_array_equal(MMCrossEncoder(path, device="cpu").predict(pairs()), scores)
    # The host classes load them too, with trust_remote_code as for any third-party module.
    host_bi = SentenceTransformer(str(tmp_path / "joint"), trust_remote_code=True, device="cpu")
    np.testing.assert_array_equal(encode_both(host_bi), embeddings)
    host_cross = CrossEncoder(str(tmp_path / "cross"), trust_remote_code=True, device="cpu")
    np.testing.assert_array_equal(host_cross.predict(pairs()), scores)


def test_joint_folder_stores_the_transformer_once_in_safetensors(tmp_path):
    bi_encoder, _ = build_views("bert")
    bi_encoder.save(str(tmp_path))
    weight_files = sorted(
        os.path.relpath(os.path.join(root, f), tmp_path)
        for root, _, files in os.walk(tmp_path)
        for f in files
        if f.endswith((".safetensors", ".bin", ".pt"))
    )
    assert weight_files == ["backbone/model.safetensors", "model.safetensors"]
    with safe_open(str(tmp_path / "backbone" / "model.safetensors"), "pt") as f:
        backbone_keys = {f"backbone.{key}" for key in f.keys()}
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        own_keys = set(f.keys())
    assert own_keys == {"img_embedding.weight", "img_embedding.bias", "classifier.weight", "classifier.bias"}
    assert backbone_keys | own_keys == set(bi_encoder[0].state_dict()) and not backbone_keys & own_keys
    # The backbone folder is a plain transformers model, and no config.json sits beside modules.json (the host
    # would rebuild such a folder as a text-only model).
    assert (tmp_path / "backbone" / "config.json").is_file() and not (tmp_path / "config.json").exists()


def test_hub_cache_layout_loads_offline(tmp_path, monkeypatch):
    bi_encoder, cross_encoder = build_views("xlmr")
    perturb(bi_encoder)
    embeddings, scores = encode_both(bi_encoder), cross_encoder.predict(pairs())
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--mm-sbert--tiny-joint"
    bi_encoder.save(str(repo / "snapshots" / revision))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import time; without this the loaders first wait on the network.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = str(tmp_path / "cache")
    loaded_bi = MMSentenceTransformer("mm-sbert/tiny-joint", cache_folder=cache, device="cpu")
    loaded_cross = MMCrossEncoder("mm-sbert/tiny-joint", cache_folder=cache, device="cpu")
    np.testing.assert_array_equal(encode_both(loaded_bi), embeddings)
    np.testing.assert_array_equal(loaded_cross.predict(pairs()), scores)


def test_saved_config_names_the_requirement_and_missing_package_says_pip_install(tmp_path, monkeypatch):
    bi_encoder, _ = build_views("bert")
    bi_encoder.save(str(tmp_path))
    config = json.loads((tmp_path / "config_sentence_transformers.json").read_text())
    assert "mm_sbert" in config["requirements"]

    import sentence_transformers.util.environment as environment

    real = environment.get_installed_version
    monkeypatch.setattr(environment, "get_installed_version", lambda name: None if name == "mm_sbert" else real(name))
    with pytest.raises(ImportError, match="pip install"):
        SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu")


def test_other_third_party_modules_still_need_trust_remote_code(tmp_path):
    bi_encoder, _ = build_views("bert")
    bi_encoder.save(str(tmp_path))
    modules = json.loads((tmp_path / "modules.json").read_text())
    modules[1]["type"] = "some_other_package.Pooling"
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="trust_remote_code"):
        MMSentenceTransformer(str(tmp_path), device="cpu")


def test_mismatched_checkpoint_is_refused(tmp_path):
    bi_encoder, _ = build_views("bert")
    bi_encoder.save(str(tmp_path))
    config_path = tmp_path / "mm_transformer_config.json"
    config = json.loads(config_path.read_text())
    config["region_feature_dim"] = 99
    config_path.write_text(json.dumps(config))
    shutil.rmtree(tmp_path / "image_featurizer")
    with pytest.raises(ValueError, match="img_embedding.weight"):
        MMSentenceTransformer(str(tmp_path), device="cpu")


def test_resolve_views_pairs_either_view_with_its_partner_on_the_same_module():
    bi_encoder, cross_encoder = build_views("bert")
    perturb(bi_encoder)
    embeddings, scores = encode_both(bi_encoder), cross_encoder.predict(pairs())

    retriever, reranker = resolve_views(bi_encoder)
    assert retriever is bi_encoder and isinstance(reranker, MMCrossEncoder) and reranker[0] is bi_encoder[0]
    np.testing.assert_array_equal(reranker.predict(pairs()), scores)
    # A joint model handed over as its cross-encoder view: its bi-encoder view retrieves, the model reranks.
    retriever, reranker = resolve_views(cross_encoder)
    assert reranker is cross_encoder and isinstance(retriever, MMSentenceTransformer)
    assert retriever[0] is bi_encoder[0]
    np.testing.assert_array_equal(encode_both(retriever), embeddings)
    # An explicit cross-encoder always reranks.
    explicit = MMCrossEncoder(modules=[build_views("bert", seed=1)[0][0]], device="cpu")
    assert resolve_views(bi_encoder, explicit)[1] is explicit


def test_a_bi_encoder_without_score_head_has_no_cross_encoder_view():
    from conftest import build_module
    from sentence_transformers.sentence_transformer.modules import Pooling

    module = build_module("bert", score_head=False)
    bi_encoder = MMSentenceTransformer(modules=[module, Pooling(module.get_embedding_dimension())], device="cpu")
    assert resolve_views(bi_encoder) == (bi_encoder, None)
    with pytest.raises(ValueError, match="score_head=False"):
        bi_encoder.to_cross_encoder()
    plain = SentenceTransformer(modules=[Pooling(4)], device="cpu")
    with pytest.raises(ValueError, match="no MultimodalTransformer as its first module"):
        to_bi_encoder(plain)


def test_host_sentence_transformer_over_our_module_gets_the_cross_encoder_view(tmp_path):
    bi_encoder, cross_encoder = build_views("bert")
    perturb(bi_encoder)
    bi_encoder.save(str(tmp_path))
    host = SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu")
    reranker = resolve_views(host)[1]
    assert isinstance(reranker, MMCrossEncoder) and reranker[0] is host[0]
    np.testing.assert_array_equal(reranker.predict(pairs()), cross_encoder.predict(pairs()))


def test_cross_encoder_rank_and_scores_are_probabilities():
    bi_encoder, cross_encoder = build_views("bert")
    perturb(bi_encoder)
    scores = cross_encoder.predict([(CAPTIONS[0], image) for image in images()])
    logits = torch.cat(
        [bi_encoder[0](bi_encoder[0].preprocess([(CAPTIONS[0], image)]))["scores"] for image in images()]
    )
    np.testing.assert_allclose(scores, torch.sigmoid(logits).squeeze(1).detach().numpy(), atol=1e-6)
    ranking = cross_encoder.rank(CAPTIONS[0], images())
    assert [entry["corpus_id"] for entry in ranking] == list(np.argsort(-scores))


def test_region_features_and_dict_inputs_encode(tmp_path):
    bi_encoder, _ = build_views("bert", featurizer=False)
    region_input = RegionFeatures(torch.rand(5, 16), torch.tensor([[0.1, 0.1, 0.5, 0.5]] * 5))
    one = bi_encoder.encode(region_input)
    as_dict = bi_encoder.encode([{"image": region_input}])[0]
    with_caption = bi_encoder.encode([{"text": "a dog", "image": region_input}])[0]
    np.testing.assert_allclose(one, as_dict, atol=1e-6)
    assert not np.allclose(one, with_caption, atol=1e-4)


def test_empty_inputs_are_refused():
    bi_encoder, cross_encoder = build_views("bert")
    with pytest.raises(ValueError, match="empty list"):
        bi_encoder.encode([])
    with pytest.raises(ValueError, match="empty list"):
        cross_encoder.predict([])


@pytest.mark.parametrize("view", ["bi_encoder", "cross_encoder"])
def test_model_card_usage_snippet_runs(view, tmp_path):
    bi_encoder, cross_encoder = build_views("bert")
    model = bi_encoder if view == "bi_encoder" else cross_encoder
    model.save(str(tmp_path))
    card = (tmp_path / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert "mm_sbert" in snippet
    namespace: dict = {}
    exec(snippet.replace("mm_sbert_model_id", str(tmp_path)), namespace)  # noqa: S102
    result = namespace["hits"] if view == "bi_encoder" else namespace["scores"]
    assert len(result) == (2 if view == "bi_encoder" else 4)


@pytest.mark.parametrize("head_input", ["mean", "text_image_match"])
def test_round_trip_keeps_the_head_input(head_input, tmp_path):
    bi_encoder, cross_encoder = build_views("bert", head_input=head_input)
    perturb(bi_encoder)
    scores = cross_encoder.predict(pairs())
    cross_encoder.save(str(tmp_path))
    reloaded = MMCrossEncoder(str(tmp_path), device="cpu")
    assert reloaded[0].head_input == head_input
    np.testing.assert_array_equal(reloaded.predict(pairs()), scores)


def test_round_trip_keeps_late_fusion(tmp_path):
    bi_encoder, cross_encoder = build_views("bert", fusion_layer=1)
    perturb(bi_encoder)
    scores = cross_encoder.predict(pairs())
    cross_encoder.save(str(tmp_path))
    reloaded = MMCrossEncoder(str(tmp_path), device="cpu")
    assert reloaded[0].fusion_layer == 1
    np.testing.assert_array_equal(reloaded.predict(pairs()), scores)
    # Without late fusion the same weights score the pairs differently: the setting is really read back.
    reloaded[0].fusion_layer = 0
    assert not np.allclose(reloaded.predict(pairs()), scores)
