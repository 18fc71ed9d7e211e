"""M3P checkpoints (XLM-style post-LN transformer with image embeddings) -> ``MultimodalTransformer`` on XLM-R."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, XLMRobertaConfig, XLMRobertaModel

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
    read_checkpoint,
    read_json,
)
from mm_sbert.modules.multimodal_transformer import MultimodalTransformer

_LAYER = r"backbone.encoder.layer.\1"
M3P_RULES = [
    (r"embeddings\.weight", "backbone.embeddings.word_embeddings.weight"),
    (r"layer_norm_emb\.(weight|bias)", r"backbone.embeddings.LayerNorm.\1"),
    (r"attentions\.(\d+)\.q_lin\.(weight|bias)", _LAYER + r".attention.self.query.\2"),
    (r"attentions\.(\d+)\.k_lin\.(weight|bias)", _LAYER + r".attention.self.key.\2"),
    (r"attentions\.(\d+)\.v_lin\.(weight|bias)", _LAYER + r".attention.self.value.\2"),
    (r"attentions\.(\d+)\.out_lin\.(weight|bias)", _LAYER + r".attention.output.dense.\2"),
    (r"layer_norm1\.(\d+)\.(weight|bias)", _LAYER + r".attention.output.LayerNorm.\2"),
    (r"ffns\.(\d+)\.lin1\.(weight|bias)", _LAYER + r".intermediate.dense.\2"),
    (r"ffns\.(\d+)\.lin2\.(weight|bias)", _LAYER + r".output.dense.\2"),
    (r"layer_norm2\.(\d+)\.(weight|bias)", _LAYER + r".output.LayerNorm.\2"),
    (r"pooled_layer\.dense\.(weight|bias)", r"backbone.pooler.dense.\1"),
    (r"image_embeddings\.LayerNorm\.(weight|bias)", r"img_layer_norm.\1"),
    (r"classifier\.(weight|bias)", r"classifier.\1"),
]
# Parts of M3P that the retrieval forward pass (jointfwd / crossfwd on text) never uses: pretraining heads (MLM,
# object prediction, MRFR, the cross-lingual matching head pooled_layer2 -> seq_relationship2), the decoder-side cross
# attention, the AoA refiner, cross-alignment and latent-space (VAE) modules, language embeddings (n_langs=1).
# seq_relationship (image-text matching) is listed too: it becomes the cross-encoder head unless a fine-tuned head is
# given or fresh_head is asked for.
M3P_IGNORED = [
    r"image_embeddings\.image_distbution_embeddings\..*",
    r"refine_embeddings\..*",
    r"cross_alignment\..*",
    r"encoder_attn\..*",
    r"layer_norm15\..*",
    r"seq_relationship\..*",
    r"mrfr_dense\..*",
    r"transformer_obj\..*",
    r"pred_layer\..*",
    r"pred_obj_layer\..*",
    r"cross_lang_embeddings\..*",
    r"lang_embeddings\..*",
    r"latent_transforms\..*",
    r"original_transforms\..*",
    r"pooled_layer2\..*",
    r"seq_relationship2\..*",
]
_ITM_HEAD = "seq_relationship"
_FEATURE_PROJ = "image_embeddings.image_embeddings"
_BOX_PROJ = "image_embeddings.image_location_embeddings"
M3P_BOX_NUMBERS = 5


class M3PConverter(CheckpointConverter):
    """Convert an original M3P checkpoint (``{"model": state_dict}`` from ``torch.save``) onto an XLM-R backbone.

    What changes on the way, each an exact re-expression of M3P's ``jointfwd`` / text ``crossfwd``:

    - ``attentions.i.{q,k,v,out}_lin``, ``layer_norm1/2.i``, ``ffns.i.lin1/2`` -> ``XLMRobertaModel`` layers (both
      are post-LN with erf-GELU); all LayerNorm epsilons 1e-12.
    - M3P counts positions from 0; HF XLM-R position ids start at ``padding_idx + 1``, so the position table is
      shifted down by ``padding_idx + 1`` rows (rows below are zero and never used).
    - M3P has no token types: XLM-R's single token-type row is zero.
    - The image projection ``Linear(2048) + Linear(5 box numbers)`` folds into one Linear over the concatenation
      (``box_format="m3p"``), followed by the image LayerNorm.
    - Sequence ``[regions ; text]`` with joint positions and the embedding LayerNorm over both
      (``embedding_mode="joint"``, ``region_order="regions_first"``); the CE head reads position 0.
    - M3P's image-text matching head (``pooled_layer.dense`` + tanh on position 0 -> ``seq_relationship``, one
      BCE-trained logit, higher = match) becomes the cross-encoder head, so a pretrained M3P reranks zero-shot;
      ``fresh_head=True`` starts a random head instead, and a fine-tuned head (MMT-Retrieval's) takes precedence.

    The checkpoint may be the file M3P's trainer writes (``{epoch, n_total_iter, best_metrics,
    best_stopping_criterion, model, params}``, with ``module.`` on every key under DDP): its ``params`` supply
    ``n_heads``, ``dropout`` ... unless a config json overrides them.

    Args:
        n_heads: attention heads (not visible in the weights); ``None`` reads ``n_heads`` from the config json or the
            checkpoint's ``params``, else ``hidden / 64`` (12 for M3P-base).
    """

    format_name = "m3p"

    def __init__(self, *, n_heads: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_heads = n_heads

    def convert(
        self, checkpoint: str, config: str | None = None, tokenizer: str | PreTrainedTokenizerBase | None = None
    ) -> ConvertedModel:
        folder, weights_path = locate_checkpoint(checkpoint, "M3P")
        config_params = read_json(config) if config else {}
        tokenizer = load_tokenizer(
            tokenizer, [folder], "M3P (an XLM-R sentencepiece tokenizer, e.g. xlm-roberta-base)"
        )
        state_dict, extras = read_checkpoint(weights_path, self.trust_pickle)
        saved_params = extras.get("params")
        params = dict(saved_params) if isinstance(saved_params, dict) else {}
        return self.convert_state_dict(state_dict, params | config_params, tokenizer)

    def convert_state_dict(
        self,
        state_dict: dict[str, torch.Tensor],
        params: dict[str, Any],
        tokenizer: PreTrainedTokenizerBase,
        head_state_dict: dict[str, torch.Tensor] | None = None,
        head_source: str = "classifier",
        head_pooler: bool = True,
        max_seq_length: int = 70,
        max_regions: int = 50,
        report: ConversionReport | None = None,
    ) -> ConvertedModel:
        """Convert an in-memory M3P state dict; ``params`` are M3P's model params (``n_heads``, ``dropout`` ...)."""
        report = report or ConversionReport(self.format_name)
        state_dict = dict(state_dict)
        needed = [
            "embeddings.weight",
            "position_embeddings.weight",
            f"{_FEATURE_PROJ}.weight",
            f"{_FEATURE_PROJ}.bias",
            f"{_BOX_PROJ}.weight",
            f"{_BOX_PROJ}.bias",
        ]
        absent = [key for key in needed if key not in state_dict]
        if absent:
            raise CheckpointMismatchError(
                f"Refusing to convert this M3P checkpoint; nothing was loaded: missing weights {absent}"
            )
        word = state_dict["embeddings.weight"]
        n_words, dim = word.shape
        n_layers = len({key.split(".")[1] for key in state_dict if key.startswith("attentions.")})
        if n_layers == 0:
            raise CheckpointMismatchError("The M3P checkpoint has no attentions.N.* layers")
        ffn_dim = state_dict["ffns.0.lin1.weight"].shape[0] if "ffns.0.lin1.weight" in state_dict else 4 * dim
        n_heads = self.n_heads or params.get("n_heads") or max(1, dim // 64)
        pad_index = tokenizer.pad_token_id
        if params.get("pad_index") is not None and params["pad_index"] != pad_index:
            raise CheckpointMismatchError(
                f"M3P pad_index={params['pad_index']} but the tokenizer's pad token id is {pad_index}; "
                "this is not the checkpoint's tokenizer"
            )
        if len(tokenizer) > n_words:
            raise CheckpointMismatchError(
                f"The tokenizer has {len(tokenizer)} tokens but the checkpoint's vocabulary only {n_words}; "
                "this is not the checkpoint's tokenizer"
            )
        if params.get("n_words") is not None and params["n_words"] != n_words:
            raise CheckpointMismatchError(
                f"embeddings.weight has {n_words} rows but the config says n_words={params['n_words']}"
            )

        # Positions: M3P row i is HF row padding_idx + 1 + i.
        m3p_positions = state_dict.pop("position_embeddings.weight")
        offset = pad_index + 1
        positions = m3p_positions.new_zeros((m3p_positions.shape[0] + offset, m3p_positions.shape[1]))
        positions[offset:] = m3p_positions
        # Image projection: W_f f + b_f + W_b box + b_b == [W_f | W_b] [f ; box] + (b_f + b_b).
        feature_weight, feature_bias = (
            state_dict.pop(f"{_FEATURE_PROJ}.weight"),
            state_dict.pop(f"{_FEATURE_PROJ}.bias"),
        )
        box_weight, box_bias = state_dict.pop(f"{_BOX_PROJ}.weight"), state_dict.pop(f"{_BOX_PROJ}.bias")
        if box_weight.ndim != 2 or box_weight.shape[1] != M3P_BOX_NUMBERS or box_weight.shape[0] != dim:
            raise CheckpointMismatchError(
                f"{_BOX_PROJ}.weight: expected [{dim}, {M3P_BOX_NUMBERS}] (x1, y1, x2, y2, w*h), "
                f"got {tuple(box_weight.shape)}"
            )
        if feature_weight.ndim != 2 or feature_weight.shape[0] != dim:
            raise CheckpointMismatchError(
                f"{_FEATURE_PROJ}.weight: expected [{dim}, feature_dim], got {tuple(feature_weight.shape)}"
            )
        region_feature_dim = self.check_region_feature_dim(feature_weight.shape[1], f"{_FEATURE_PROJ}.weight")

        mapped, source_of, ignored, unexpected = KeyMapper(M3P_RULES, M3P_IGNORED).map(state_dict)
        report.ignored.extend(ignored)
        report.unexpected.extend(unexpected)
        mapped["backbone.embeddings.position_embeddings.weight"] = positions
        source_of["backbone.embeddings.position_embeddings.weight"] = "position_embeddings.weight"
        mapped["img_embedding.weight"] = torch.cat([feature_weight, box_weight], dim=1)
        mapped["img_embedding.bias"] = feature_bias + box_bias
        source_of["img_embedding.weight"] = f"{_FEATURE_PROJ}.weight + {_BOX_PROJ}.weight"
        source_of["img_embedding.bias"] = f"{_FEATURE_PROJ}.bias + {_BOX_PROJ}.bias"
        mapped["backbone.embeddings.token_type_embeddings.weight"] = word.new_zeros((1, dim))
        report.notes.extend(
            [
                f"position table shifted by padding_idx + 1 = {offset} rows (M3P counts positions from 0)",
                "image feature and box projections folded into one Linear over [feature ; x1,y1,x2,y2,w*h]",
                "token-type embedding set to zero (M3P has no token types)",
            ]
        )
        itm_keys = [f"{_ITM_HEAD}.weight", f"{_ITM_HEAD}.bias"]
        use_itm_head = (
            not self.fresh_head
            and head_state_dict is None
            and "classifier.weight" not in mapped
            and all(key in state_dict for key in itm_keys)
        )
        if use_itm_head:
            for key in itm_keys:
                target = key.replace(_ITM_HEAD, "classifier")
                mapped[target], source_of[target] = state_dict[key], key
            report.ignored[:] = [key for key in report.ignored if key not in itm_keys]
            head_pooler = True  # M3P's matching head reads pooled_layer (dense + tanh) on position 0
        add_classifier_head(mapped, source_of, report, head_state_dict, head_source, self.head_score, self.fresh_head)
        if use_itm_head:
            report.notes.append(
                "M3P's image-text matching head (pooled_layer.dense + tanh on position 0 -> seq_relationship) is the "
                "cross-encoder head: the converted model reranks zero-shot (fresh_head=True / --fresh-head for a "
                "random head)"
            )
            report.score = (
                "sigmoid of M3P's own image-text matching logit (pooled_layer + seq_relationship, one logit trained "
                "with BCE, higher = match), so the pretrained model reranks zero-shot exactly as M3P scores pairs"
            )
        if params.get("refine_image"):
            report.notes.append(
                "the checkpoint's params say refine_image=True: M3P trained it with its AoA refiner over the regions, "
                "which mm_sbert (like MMT-Retrieval) does not run; image-text scores differ from M3P's own"
            )

        dropout = float(params.get("dropout", 0.1))
        backbone_config = XLMRobertaConfig(
            vocab_size=n_words,
            hidden_size=dim,
            num_hidden_layers=n_layers,
            num_attention_heads=int(n_heads),
            intermediate_size=ffn_dim,
            hidden_act="gelu" if params.get("gelu_activation", True) else "relu",
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=float(params.get("attention_dropout", dropout)),
            max_position_embeddings=positions.shape[0],
            type_vocab_size=1,
            layer_norm_eps=1e-12,
            pad_token_id=pad_index,
            bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0,
            eos_token_id=tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 2,
        )
        if dim % int(n_heads):
            raise CheckpointMismatchError(f"hidden size {dim} is not a multiple of n_heads={n_heads}")
        torch.manual_seed(0)  # the head, when the checkpoint has none, starts the same on every conversion
        module = MultimodalTransformer(
            backbone=XLMRobertaModel(backbone_config),
            tokenizer=tokenizer,
            region_feature_dim=region_feature_dim,
            box_format="m3p",
            use_img_layernorm=True,
            img_layer_norm_eps=1e-12,
            region_order="regions_first",
            embedding_mode="joint",
            image_only_text="cls",
            head_pooler=head_pooler,
            **self.module_kwargs(max_seq_length, max_regions),
        )
        load_mapped_weights(module, mapped, report, source_of, allow_unexpected=self.allow_unexpected)
        return ConvertedModel(module.eval(), report)
