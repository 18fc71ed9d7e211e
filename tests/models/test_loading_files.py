"""Every file a saved model is read from is checked, with the file and the field named (issue 29)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_views

from mm_sbert import MMCrossEncoder, MMSentenceTransformer
from mm_sbert.errors import InvalidFileError, MissingFileError, MMSbertError
from mm_sbert.storage import owned_folder_kind


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    bi_encoder, _ = build_views("bert")
    bi_encoder.save(str(folder))
    return folder


@pytest.fixture
def model(saved: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(saved, tmp_path / "model")
    return tmp_path / "model"


def _module_folder(model: Path) -> Path:
    path = json.loads((model / "modules.json").read_text())[0]["path"]
    return model / path


def _edit(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_a_saved_model_is_an_owned_model_folder_and_a_lookalike_is_not(model: Path, tmp_path: Path) -> None:
    assert owned_folder_kind(model) == "model"
    lookalike = tmp_path / "lookalike"
    lookalike.mkdir()
    (lookalike / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "x.Y"}]))
    (lookalike / "config_sentence_transformers.json").write_text("{}")
    assert owned_folder_kind(lookalike) is None


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda modules: modules[0].update(idx="0"), "0.idx"),
        (lambda modules: modules[0].pop("type"), "0.type"),
        (lambda modules: modules.append(7), "2"),
    ],
)
def test_modules_json_of_the_wrong_shape_names_file_and_field(model: Path, edit, field: str) -> None:
    _edit(model / "modules.json", edit)
    with pytest.raises(InvalidFileError, match=rf"modules.json file '.*modules.json' is invalid: field '{field}'"):
        MMSentenceTransformer(str(model), device="cpu")


def test_modules_json_that_is_not_a_list_or_not_json(model: Path) -> None:
    (model / "modules.json").write_text(json.dumps({"type": "x"}))
    with pytest.raises(InvalidFileError, match="modules.json"):
        MMCrossEncoder(str(model), device="cpu")
    (model / "modules.json").write_text("[{")
    with pytest.raises(InvalidFileError, match="is not valid JSON"):
        MMSentenceTransformer(str(model), device="cpu")


def test_sentence_transformers_config_of_the_wrong_type_names_the_field(model: Path) -> None:
    _edit(model / "config_sentence_transformers.json", lambda config: config.update(prompts=["query: "]))
    with pytest.raises(InvalidFileError, match="config_sentence_transformers.json' is invalid: field 'prompts'"):
        MMSentenceTransformer(str(model), device="cpu")


def test_module_config_with_a_string_for_a_boolean_is_refused(model: Path) -> None:
    config = _module_folder(model) / "mm_transformer_config.json"
    _edit(config, lambda values: values.update(use_img_layernorm="no"))
    with pytest.raises(InvalidFileError, match=r"use_img_layernorm must be true or false .* in .*config"):
        MMSentenceTransformer(str(model), device="cpu")
    config.write_text("[1, 2]")
    with pytest.raises(InvalidFileError, match="must hold a JSON object"):
        MMSentenceTransformer(str(model), device="cpu")


def test_featurizer_config_is_checked(model: Path) -> None:
    config = next(model.rglob("featurizer_config.json"))
    _edit(config, lambda values: values.update(config="grid_size=2"))
    with pytest.raises(InvalidFileError, match=r"featurizer config '.*' is invalid: field 'config'"):
        MMSentenceTransformer(str(model), device="cpu")
    _edit(config, lambda values: values.update(config={"grid_size": 2, "colour": "red"}))
    with pytest.raises(InvalidFileError, match="does not fit ColorGridFeaturizer"):
        MMSentenceTransformer(str(model), device="cpu")


def test_a_backbone_without_its_tokenizer_config_is_named(model: Path) -> None:
    tokenizer_config = next(model.rglob("tokenizer_config.json"))
    tokenizer_config.unlink()
    with pytest.raises(MissingFileError, match=r"tokenizer_config.json missing\); the saved model folder"):
        MMSentenceTransformer(str(model), device="cpu")


def test_a_damaged_backbone_config_is_a_package_error(model: Path) -> None:
    backbone_config = next(path for path in model.rglob("config.json") if path.parent.name == "backbone")
    backbone_config.write_text(json.dumps({"model_type": 5}))
    with pytest.raises(MMSbertError, match="backbone"):
        MMSentenceTransformer(str(model), device="cpu")
