"""Which class loads which folder: the host classes on our folders, our classes on the host's folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_views
from PIL import Image
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from tiny_models import tiny_bert

from mm_sbert import MMCrossEncoder, MMSentenceTransformer, MultimodalTransformer, RegionFeatures

CAPTIONS = ["a red circle", "two green triangles"]


def images():
    return [Image.new("RGB", (24, 16), colour) for colour in ("red", "green")]


def pairs():
    return list(zip(CAPTIONS, images()))


def plain_backbone_folder(path):
    backbone, tokenizer = tiny_bert()
    backbone.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def saved(tmp_path):
    bi_encoder, cross_encoder = build_views("bert")
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in bi_encoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    bi_encoder.save(str(tmp_path / "joint"))
    cross_encoder.save(str(tmp_path / "cross"))
    return tmp_path, bi_encoder.encode(images()), cross_encoder.predict(pairs())


def test_each_host_class_loads_the_folder_of_its_own_view_with_trust_remote_code(saved):
    tmp_path, embeddings, scores = saved
    host_bi = SentenceTransformer(str(tmp_path / "joint"), trust_remote_code=True, device="cpu")
    np.testing.assert_array_equal(host_bi.encode(images()), embeddings)
    host_cross = CrossEncoder(str(tmp_path / "cross"), trust_remote_code=True, device="cpu")
    np.testing.assert_array_equal(host_cross.predict(pairs()), scores)


def test_a_host_class_cannot_load_the_other_views_folder_and_mm_classes_can(saved, monkeypatch):
    """Why one folder cannot serve both plain host classes.

    The host reads one ``model_type`` from ``config_sentence_transformers.json`` ("SentenceTransformer" for a joint
    folder saved as a bi-encoder). A class of another type does not read ``modules.json`` at all: it calls
    ``_load_converted_modules``, which rebuilds its own default modules from a transformers ``config.json`` at the
    root. A joint folder keeps none there (its backbone lives in ``backbone/``): one there would be rebuilt as a
    text-only classifier with a random head. So the host refuses, and MMCrossEncoder / MMSentenceTransformer,
    which accept every mm_sbert folder, are the answer.
    """
    tmp_path, embeddings, scores = saved
    converted = []
    real = CrossEncoder._load_converted_modules
    monkeypatch.setattr(
        CrossEncoder,
        "_load_converted_modules",
        lambda self, *args, **kwargs: converted.append(kwargs["model_type"]) or real(self, *args, **kwargs),
    )
    with pytest.raises(ValueError, match="Unrecognized model in .*joint"):
        CrossEncoder(str(tmp_path / "joint"), trust_remote_code=True, device="cpu")
    assert converted == ["SentenceTransformer"]
    with pytest.raises(ValueError, match="Unrecognized model in .*cross"):
        SentenceTransformer(str(tmp_path / "cross"), trust_remote_code=True, device="cpu")

    np.testing.assert_array_equal(MMCrossEncoder(str(tmp_path / "joint"), device="cpu").predict(pairs()), scores)
    np.testing.assert_array_equal(
        MMSentenceTransformer(str(tmp_path / "cross"), device="cpu").encode(images()), embeddings
    )


@pytest.mark.parametrize("mm_class", [MMSentenceTransformer, MMCrossEncoder])
def test_a_plain_sentence_transformers_folder_is_refused_as_not_an_mm_sbert_model(tmp_path, mm_class):
    transformer = Transformer(plain_backbone_folder(tmp_path / "bert"))
    text_model = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension())], device="cpu"
    )
    text_model.save(str(tmp_path / "text-model"))
    message = r"'.*text-model' is not an mm_sbert model: .* first module is sentence_transformers\..*Transformer"
    with pytest.raises(ValueError, match=message) as error:
        mm_class(str(tmp_path / "text-model"), device="cpu")
    assert "MMSentenceTransformer.from_backbone(" in str(error.value)


def test_mm_cross_encoder_on_a_plain_checkpoint_starts_a_multimodal_model_not_a_text_classifier(tmp_path):
    cross_encoder = MMCrossEncoder(plain_backbone_folder(tmp_path), device="cpu")
    assert [type(module) for module in cross_encoder] == [MultimodalTransformer]
    regions = RegionFeatures(torch.ones(2, 2048), torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2))
    assert cross_encoder.predict([(CAPTIONS[0], regions)]).shape == (1,)
