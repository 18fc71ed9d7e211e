from __future__ import annotations

import json
import logging

import pytest
from conftest import build_views

from mm_sbert import ColorGridFeaturizer, MMSentenceTransformer
from mm_sbert.errors import IncompatibleModelError, MMSbertError
from mm_sbert.image_features import FeatureStore
from mm_sbert.models import check_reranker, check_view_trained, same_featurizer, trained_views


def test_an_untrained_view_is_refused_naming_it_and_a_trained_one_passes():
    bi_encoder, cross_encoder = build_views()
    bi_encoder[0].trained_views = ["bi_encoder"]
    assert check_view_trained(bi_encoder, "bi_encoder") is True
    with pytest.raises(IncompatibleModelError, match=r"runs/be: its cross-encoder \(score head\) was never trained"):
        check_view_trained(cross_encoder, "cross_encoder", what="runs/be")
    assert check_view_trained(cross_encoder, "cross_encoder", allow_untrained=True) is False
    assert issubclass(IncompatibleModelError, (MMSbertError, ValueError))


def test_a_model_without_the_record_is_allowed_with_a_warning(caplog):
    bi_encoder, _ = build_views()
    assert trained_views(bi_encoder) is None
    with caplog.at_level(logging.WARNING):
        assert check_view_trained(bi_encoder, "cross_encoder") is False
    assert "does not record which of its views were trained" in caplog.text


def test_the_record_is_saved_and_a_new_head_drops_the_cross_encoder(tmp_path):
    bi_encoder, _ = build_views()
    bi_encoder[0].trained_views = ["cross_encoder", "bi_encoder"]
    bi_encoder.save(str(tmp_path / "m"))
    saved = json.loads((tmp_path / "m" / "mm_transformer_config.json").read_text())["trained_views"]
    assert sorted(saved) == ["bi_encoder", "cross_encoder"]
    loaded = MMSentenceTransformer(str(tmp_path / "m"))
    assert loaded[0].trained_views == ["bi_encoder", "cross_encoder"]
    loaded[0].reset_score_head("mean")
    assert loaded[0].trained_views == ["bi_encoder"]


def test_a_record_of_the_wrong_shape_is_refused_naming_the_file(tmp_path):
    bi_encoder, _ = build_views()
    bi_encoder.save(str(tmp_path / "m"))
    config = tmp_path / "m" / "mm_transformer_config.json"
    for bad in ("bi_encoder", ["bi_encoder", "everything"]):
        config.write_text(json.dumps(json.loads(config.read_text()) | {"trained_views": bad}))
        with pytest.raises(ValueError, match="trained_views must be a list of .* in .*mm_transformer_config.json"):
            MMSentenceTransformer(str(tmp_path / "m"))


def test_a_reranker_must_read_the_store_it_is_given(tmp_path):
    _, cross_encoder = build_views()
    cross_encoder[0].trained_views = ["cross_encoder"]
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (16, 16), "red").save(image)
    FeatureStore.build(str(tmp_path / "grid3"), [str(image)], ColorGridFeaturizer(grid_size=3, resize_to=32))
    FeatureStore.build(str(tmp_path / "grid2"), [str(image)], cross_encoder[0].featurizer)
    with pytest.raises(
        IncompatibleModelError,
        match=r"--cross-encoder ce: The feature store .* was built by ColorGridFeaturizer\(\{'grid_size': 3",
    ):
        check_reranker(cross_encoder, store=FeatureStore(str(tmp_path / "grid3")), what="--cross-encoder ce")
    check_reranker(cross_encoder, store=FeatureStore(str(tmp_path / "grid2")))
    check_reranker(cross_encoder)  # image files: its own featurizer reads them
    cross_encoder[0].featurizer = None
    with pytest.raises(IncompatibleModelError, match="has no image featurizer"):
        check_reranker(cross_encoder)


def test_same_featurizer_compares_settings_not_objects():
    first, _ = build_views()
    second, _ = build_views(seed=1)
    assert same_featurizer(first, second)
    second[0].featurizer = ColorGridFeaturizer(grid_size=3, resize_to=32)
    assert not same_featurizer(first, second)
