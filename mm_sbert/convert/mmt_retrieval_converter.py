"""Models released with the paper (UKPLab/MMT-Retrieval, sentence-transformers <= 1.2.1 folders) -> mm_sbert."""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import PreTrainedTokenizerBase

from mm_sbert.convert.checkpoint_converter import CheckpointConverter, ConvertedModel, load_tokenizer
from mm_sbert.convert.m3p_converter import M3PConverter
from mm_sbert.convert.oscar_converter import OscarConverter
from mm_sbert.convert.state_dict_mapping import (
    CheckpointMismatchError,
    ConversionReport,
    find_weights_file,
    read_json,
    read_state_dict,
)
from mm_sbert.storage import lies_inside

# Old sentence-transformers modules wrote their config under any of these names.
_MODULE_CONFIG_NAMES = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_xlm-roberta_config.json",
    "config.json",
)
_OSCAR_TYPES = {"OSCAR", "JointOSCAR", "DoubleOSCAR"}
_M3P_TYPES = {"M3P", "JointM3P"}
_HEAD_FILE = "class_head.pt"


class MMTRetrievalConverter(CheckpointConverter):
    """Convert a model folder released by MMT-Retrieval (e.g. ``oscar_join_flickr30k``, ``m3p_join_multi30k``).

    Layout read (``modules.json`` names the modules; without it the numbered sub-folders are scanned):

    - ``0_OSCAR/``: ``BertImgModel.save_pretrained`` (``pytorch_model.bin`` with keys without ``bert.``,
      ``config.json``, the BERT tokenizer files) + ``sentence_bert_config.json`` (``max_seq_length``,
      ``max_image_seq_len``); or ``0_M3P/m3p_under_weights.pth`` (tokenizer: xlm-roberta-base, pass it).
    - ``1_ClassificationHead/``: ``class_head.pt`` (``classifier.{weight,bias}``, 2-way) + its config
      (``input_key``: pooled or raw ``[CLS]``; ``classifier_type`` must be ``linear``).
    - ``2_Pooling/config.json``: the bi-encoder pooling (mean in every released model).

    The legacy ``JointOSCAR`` / ``DoubleOSCAR`` / ``JointM3P`` modules convert as well. MMT-Retrieval's
    ``max_seq_length`` counts word pieces without ``[CLS]`` / ``[SEP]``; mm_sbert's counts them, so 2 is added.
    """

    format_name = "mmt-retrieval"

    def convert(
        self, checkpoint: str, config: str | None = None, tokenizer: str | PreTrainedTokenizerBase | None = None
    ) -> ConvertedModel:
        if not os.path.isdir(checkpoint):
            raise FileNotFoundError(
                f"{checkpoint} is not a folder; an MMT-Retrieval model is a folder with modules.json, 0_OSCAR/ or "
                "0_M3P/, 1_ClassificationHead/ and 2_Pooling/ (unzip the download first)"
            )
        modules = self._modules(checkpoint)
        transformer = next((m for m in modules if m["kind"] in _OSCAR_TYPES | _M3P_TYPES), None)
        if transformer is None:
            raise CheckpointMismatchError(
                f"{checkpoint} holds no OSCAR or M3P module (found {[m['type'] for m in modules]}); "
                "only OSCAR and M3P models convert"
            )
        transformer_dir = os.path.join(checkpoint, transformer["path"])
        module_config = _read_module_config(transformer_dir)
        report = ConversionReport(f"{self.format_name} ({transformer['kind']})")
        report.ignored.extend(
            f"{m['path']} ({m['type']})"
            for m in modules
            if m["kind"] not in {transformer["kind"], "Pooling"} and m["kind"] != "ClassificationHead"
        )

        head_state_dict, head_source, head_pooler = None, "classifier", True
        head = next((m for m in modules if m["kind"] == "ClassificationHead"), None)
        if head is not None:
            head_dir = os.path.join(checkpoint, head["path"])
            head_config = _read_module_config(head_dir)
            if head_config.get("classifier_type", "linear") != "linear":
                raise CheckpointMismatchError(
                    f"{head['path']}: classifier_type={head_config['classifier_type']!r}; only a linear head converts"
                )
            head_pooler = head_config.get("input_key", "cls_token_embeddings") == "pooled_cls_token_embeddings"
            head_state_dict = read_state_dict(os.path.join(head_dir, _HEAD_FILE), self.trust_pickle)
            head_source = f"{head['path']}/{_HEAD_FILE}"
        elif transformer["kind"] in {"DoubleOSCAR", "JointM3P"}:
            # Legacy joint modules keep the head next to the transformer weights.
            head_path = os.path.join(transformer_dir, _HEAD_FILE)
            if os.path.isfile(head_path):
                head_state_dict = read_state_dict(head_path, self.trust_pickle)
                head_source = f"{transformer['path']}/{_HEAD_FILE}"
            head_pooler = transformer["kind"] == "DoubleOSCAR"
            model_args = module_config.get("model_args") or {}
            if model_args.get("classifier", "linear") != "linear":
                raise CheckpointMismatchError(f"{transformer['path']}: only a linear classifier converts")
        if head_state_dict is not None and not self.fresh_head:
            report.notes.append(
                "cross-encoder head on the " + ("pooled [CLS] (pooler dense + tanh)" if head_pooler else "raw [CLS]")
            )

        pooling = next((m for m in modules if m["kind"] == "Pooling"), None)
        pooling_mode = _pooling_mode(os.path.join(checkpoint, pooling["path"])) if pooling else "mean"
        common: dict[str, Any] = {
            "head_state_dict": head_state_dict,
            "head_source": head_source,
            "head_pooler": head_pooler,
            "max_seq_length": int(module_config.get("max_seq_length", 128)) + 2,
            "max_regions": int(module_config.get("max_image_seq_len", 50)),
            "report": report,
        }
        options = self.options()
        if transformer["kind"] in _OSCAR_TYPES:
            weights = read_state_dict(find_weights_file(transformer_dir), self.trust_pickle)
            oscar_config = read_json(config or os.path.join(transformer_dir, "config.json"))
            tokenizer = load_tokenizer(tokenizer, [transformer_dir], "OSCAR")
            converted = OscarConverter(**options).convert_state_dict(weights, oscar_config, tokenizer, **common)
        else:
            weights = read_state_dict(
                find_weights_file(transformer_dir, ("m3p_under_weights.pth",)), self.trust_pickle
            )
            params = dict(module_config.get("model_args") or {})
            if config:
                params.update(read_json(config))
            tokenizer = load_tokenizer(tokenizer, [transformer_dir], "M3P (xlm-roberta-base tokenizer)")
            converted = M3PConverter(**options).convert_state_dict(weights, params, tokenizer, **common)
        converted.pooling_mode = pooling_mode
        return converted

    @staticmethod
    def _modules(folder: str) -> list[dict[str, str]]:
        modules_path = os.path.join(folder, "modules.json")
        if os.path.isfile(modules_path):
            with open(modules_path, encoding="utf-8") as f:
                try:
                    entries = json.load(f)
                except json.JSONDecodeError as exc:
                    raise CheckpointMismatchError(f"{modules_path} is not valid JSON ({exc})") from exc
            if not isinstance(entries, list) or not all(isinstance(e, dict) and "path" in e for e in entries):
                raise CheckpointMismatchError(
                    f"{modules_path} must hold a JSON list of modules, each with a 'path' (as sentence-transformers "
                    "writes it)"
                )
            modules = [{"path": str(e["path"]), "type": str(e.get("type", e["path"]))} for e in entries]
            root = os.path.realpath(folder)
            for module in modules:
                # modules.json names sub-folders; a path leading out of the model folder is not one
                if not lies_inside(os.path.join(root, module["path"]), root):
                    raise CheckpointMismatchError(
                        f"{modules_path} names the module path {module['path']!r}, which is outside {folder}"
                    )
        else:
            # Without modules.json, the sub-folders are named "<idx>_<ClassName>".
            names = sorted(
                (n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n)) and "_" in n),
                key=lambda n: int(n.split("_", 1)[0]) if n.split("_", 1)[0].isdigit() else 1_000,
            )
            modules = [{"path": n, "type": n.split("_", 1)[1]} for n in names]
        for module in modules:
            module["kind"] = module["type"].rsplit(".", 1)[-1]
        return modules


def _read_module_config(folder: str) -> dict[str, Any]:
    for name in _MODULE_CONFIG_NAMES[:-1]:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return read_json(path)
    return {}


def _pooling_mode(folder: str) -> str:
    config = read_json(os.path.join(folder, "config.json"))
    modes = [
        mode
        for mode, key in (
            ("cls", "pooling_mode_cls_token"),
            ("max", "pooling_mode_max_tokens"),
            ("mean", "pooling_mode_mean_tokens"),
            ("mean_sqrt_len_tokens", "pooling_mode_mean_sqrt_len_tokens"),
        )
        if config.get(key)
    ]
    if len(modes) != 1:
        raise CheckpointMismatchError(f"{folder}: expected exactly one pooling mode, found {modes or 'none'}")
    return modes[0]
