"""The saved folder: options checked on load, unreadable files named."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import build_module, build_views

from mm_sbert import MMSentenceTransformer, MultimodalTransformer
from mm_sbert.modules.multimodal_transformer_config import MultimodalTransformerConfig


def saved_folder(tmp_path):
    bi_encoder, _ = build_views("bert", featurizer=False)
    bi_encoder.save(str(tmp_path))
    return tmp_path


def edit_config(folder, **values):
    path = folder / "mm_transformer_config.json"
    config = json.loads(path.read_text())
    config.update(values)
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("use_img_layernorm", "false", "use_img_layernorm must be true or false (a boolean, not a string)"),
        ("max_regions", "fifty", "max_regions must be an integer"),
        ("max_seq_length", -1, "max_seq_length must be at least 2"),
        ("region_order", "sideways", "region_order must be one of ('text_first', 'regions_first')"),
        ("img_layer_norm_eps", 0, "img_layer_norm_eps must be greater than 0.0"),
    ],
)
def test_saved_options_of_the_wrong_type_or_range_fail_on_load_naming_key_and_file(tmp_path, key, value, message):
    path = edit_config(saved_folder(tmp_path), **{key: value})
    with pytest.raises(ValueError, match=re.escape(f"{message} in {path}, got {value!r}")):
        MultimodalTransformer.load(str(tmp_path))


def test_unknown_saved_option_is_refused_naming_the_file(tmp_path):
    path = edit_config(saved_folder(tmp_path), use_magic=True)
    with pytest.raises(ValueError, match=re.escape(f"{path} has unknown keys ['use_magic']")):
        MultimodalTransformer.load(str(tmp_path))


def test_config_dataclass_is_what_the_module_saves_and_accepts_numpy_numbers(tmp_path):
    module = build_module("bert", featurizer=False, max_regions=np.int64(7), use_img_layernorm=np.bool_(True))
    module.save(str(tmp_path))
    saved = json.loads((tmp_path / "mm_transformer_config.json").read_text())
    assert saved == MultimodalTransformerConfig(region_feature_dim=16, max_regions=7, use_img_layernorm=True).to_dict()
    assert type(module.max_regions) is int and module.use_img_layernorm is True


@pytest.mark.parametrize("weights", ["model.safetensors", "backbone/model.safetensors"])
def test_truncated_weights_file_is_named(tmp_path, weights):
    folder = saved_folder(tmp_path)
    path = folder / weights
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=re.escape(f"Could not read the weights file {path}: it is truncated")):
        MMSentenceTransformer(str(folder), device="cpu")


def test_config_that_is_not_json_is_named(tmp_path):
    path = saved_folder(tmp_path) / "mm_transformer_config.json"
    path.write_text('{"max_regions": 5')
    with pytest.raises(ValueError, match=re.escape(f"{path} is not valid JSON")):
        MultimodalTransformer.load(str(tmp_path))


def test_a_reload_is_bit_exact_and_loads_the_backbone_with_from_pretrained(tmp_path, monkeypatch):
    module = build_module("xlmr", featurizer=False)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.01)
    module.save(str(tmp_path))
    import transformers

    calls = []
    real = transformers.AutoModel.from_pretrained
    monkeypatch.setattr(
        transformers.AutoModel, "from_pretrained", lambda *a, **k: calls.append((a, k)) or real(*a, **k)
    )
    reloaded = MultimodalTransformer.load(str(tmp_path), model_kwargs={"attn_implementation": "eager"})
    assert calls[0][0] == (str(tmp_path / "backbone"),) and calls[0][1]["attn_implementation"] == "eager"
    for key, value in module.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
