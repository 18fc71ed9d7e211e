"""OSCAR / VinVL checkpoints (``BertImgModel``, ``ImageBertForSequenceClassification``) -> MultimodalTransformer."""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

import torch
from transformers import BertConfig, BertModel, PreTrainedTokenizerBase

from mm_sbert.convert.checkpoint_converter import (
    CheckpointConverter,
    ConvertedModel,
    load_tokenizer,
    locate_checkpoint,
)
from mm_sbert.convert.state_dict_mapping import (
    CheckpointMismatchError,
    ConversionReport,
    KeyMapper,
    add_classifier_head,
    load_mapped_weights,
    normalise_layer_norm_names,
    read_json,
    read_state_dict,
)
from mm_sbert.modules.multimodal_transformer import MultimodalTransformer

# OSCAR appends x1, y1, x2, y2, w, h to each 2048-d region feature: img_feature_dim 2054.
OSCAR_BOX_NUMBERS = 6

# What OSCAR's run_retrieval.py saves beside each checkpoint: its argparse Namespace (add_od_labels among it).
TRAINING_ARGS_NAME = "training_args.bin"

# The BertConfig fields that shape the backbone; OSCAR's own fields (img_feature_dim ...) are read separately.
_BERT_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
)


class OscarConverter(CheckpointConverter):
    """Convert an original OSCAR checkpoint (a ``checkpoint-*`` folder or its ``pytorch_model.bin`` + config).

    Key layout: ``bert.embeddings.*``, ``bert.encoder.layer.N.*``, ``bert.pooler.dense.*``,
    ``bert.img_embedding.*``, optional ``bert.LayerNorm.*`` (``use_img_layernorm``), and for retrieval fine-tunes
    ``classifier.*`` (a 2-way softmax head, converted exactly into one logit). ``cls.*`` pretraining heads are
    ignored. ``BertImgModel.save_pretrained`` folders without the ``bert.`` prefix (as inside MMT-Retrieval models)
    convert too.

    Args:
        add_od_labels: whether the checkpoint was fine-tuned with object labels as a second text segment (OSCAR's
            ``--add_od_labels``); the converted module then reads image tags the same way
            (:class:`~mm_sbert.MultimodalTransformer`'s ``add_od_labels``). ``None`` (default): read it from the
            ``training_args.bin`` OSCAR saves beside a checkpoint (loaded without unpickling code), else ``False``.
        **kwargs: the options of :class:`~mm_sbert.convert.CheckpointConverter`.

    Example:
        >>> converted = OscarConverter().convert("oscar-base-ir-finetune/checkpoint-29-132780")
        >>> print(converted.report.summary())
        >>> converted.save("oscar-ir-mm-sbert")
    """

    format_name = "oscar"

    def __init__(self, *, add_od_labels: bool | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_od_labels = add_od_labels

    def convert(
        self, checkpoint: str, config: str | None = None, tokenizer: str | PreTrainedTokenizerBase | None = None
    ) -> ConvertedModel:
        folder, weights_path = locate_checkpoint(checkpoint, "OSCAR")
        config_path = config or os.path.join(folder, "config.json")
        config_dict = read_json(config_path)
        tokenizer = load_tokenizer(tokenizer, [folder, os.path.dirname(config_path)], "OSCAR")
        report = ConversionReport(self.format_name)
        add_od_labels = self.add_od_labels
        if add_od_labels is None:
            add_od_labels = _saved_add_od_labels(os.path.join(folder, TRAINING_ARGS_NAME), report)
        return self.convert_state_dict(
            read_state_dict(weights_path, self.trust_pickle),
            config_dict,
            tokenizer,
            report=report,
            add_od_labels=add_od_labels,
        )

    def convert_state_dict(
        self,
        state_dict: dict[str, torch.Tensor],
        config: dict[str, Any],
        tokenizer: PreTrainedTokenizerBase,
        head_state_dict: dict[str, torch.Tensor] | None = None,
        head_source: str = "classifier",
        head_pooler: bool = True,
        max_seq_length: int = 70,
        max_regions: int = 50,
        report: ConversionReport | None = None,
        add_od_labels: bool | None = None,
    ) -> ConvertedModel:
        """Convert an in-memory state dict with its config dict; ``head_state_dict`` adds a separate ``classifier``;
        ``add_od_labels`` ``None`` takes the converter's option (``False`` when that is ``None`` too)."""
        if add_od_labels is None:
            add_od_labels = bool(self.add_od_labels)
        report = report or ConversionReport(self.format_name)
        state_dict = normalise_layer_norm_names(state_dict)
        if any(re.match(r"classifier\.\d+\.", key) for key in [*state_dict, *(head_state_dict or {})]):
            raise CheckpointMismatchError(
                "This checkpoint has an MLP classifier (classifier.0 / classifier.2); only a linear 1-logit or 2-way "
                "head converts into the cross-encoder head"
            )
        prefix = "bert." if any(key.startswith("bert.") for key in state_dict) else ""
        p = re.escape(prefix)
        mapper = KeyMapper(
            rules=[
                (rf"{p}(embeddings|encoder|pooler)\.(.+)", r"backbone.\1.\2"),
                (rf"{p}img_embedding\.(weight|bias)", r"img_embedding.\1"),
                (rf"{p}LayerNorm\.(weight|bias)", r"img_layer_norm.\1"),
                (r"classifier\.(weight|bias)", r"classifier.\1"),
            ],
            ignore=[r"cls\..*", rf"{p}embeddings\.position_ids", rf"{p}embeddings\.token_type_ids"],
        )
        mapped, source_of, ignored, unexpected = mapper.map(state_dict)
        report.ignored.extend(ignored)
        report.unexpected.extend(unexpected)
        add_classifier_head(mapped, source_of, report, head_state_dict, head_source, self.head_score, self.fresh_head)

        img_feature_dim = config.get("img_feature_dim")
        if img_feature_dim is None:
            if "img_embedding.weight" not in mapped:
                raise CheckpointMismatchError(
                    "The OSCAR checkpoint has no img_embedding.weight and no img_feature_dim"
                )
            img_feature_dim = mapped["img_embedding.weight"].shape[1]
            report.notes.append(f"img_feature_dim not in the config; taken from img_embedding: {img_feature_dim}")
        feature_type = config.get("img_feature_type", "faster_r-cnn")
        if isinstance(feature_type, str) and feature_type.startswith("dis_code"):
            raise CheckpointMismatchError(
                f"img_feature_type={feature_type!r} (discrete image codes) is not supported; only region features"
            )
        region_feature_dim = self.check_region_feature_dim(
            int(img_feature_dim) - OSCAR_BOX_NUMBERS, "The OSCAR config (img_feature_dim - 6 box numbers)"
        )

        bert_config = BertConfig(**{key: config[key] for key in _BERT_CONFIG_FIELDS if key in config})
        torch.manual_seed(0)  # the head, when the checkpoint has none, starts the same on every conversion
        module = MultimodalTransformer(
            backbone=BertModel(bert_config),
            tokenizer=tokenizer,
            region_feature_dim=region_feature_dim,
            box_format="oscar",
            use_img_layernorm=bool(config.get("use_img_layernorm", False)),
            img_layer_norm_eps=float(config.get("img_layer_norm_eps", 1e-12)),
            region_order="text_first",
            embedding_mode="separate",
            image_only_text="cls",
            head_pooler=head_pooler,
            add_od_labels=add_od_labels,
            **self.module_kwargs(max_seq_length, max_regions),
        )
        if len(tokenizer) > bert_config.vocab_size:
            raise CheckpointMismatchError(
                f"The tokenizer has {len(tokenizer)} tokens but the checkpoint's vocabulary only "
                f"{bert_config.vocab_size}; this is not the checkpoint's tokenizer"
            )
        load_mapped_weights(module, mapped, report, source_of, allow_unexpected=self.allow_unexpected)
        return ConvertedModel(module.eval(), report)


def _saved_add_od_labels(path: str, report: ConversionReport) -> bool:
    """``add_od_labels`` from OSCAR's ``training_args.bin`` (an argparse Namespace of plain values), else False."""
    if not os.path.isfile(path):
        return False
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            args = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file means "unknown": say so, do not guess True
        report.notes.append(
            f"{path} could not be read without unpickling code ({type(exc).__name__}); add_od_labels=False. Pass "
            "add_od_labels=True (--add-od-labels) if the checkpoint was fine-tuned with object labels"
        )
        return False
    value = bool(getattr(args, "add_od_labels", False))
    report.notes.append(f"add_od_labels={value}, as in {path}")
    return value
