"""Small re-implementations of the ORIGINAL forward passes, in plain torch ops on the original key names.

- ``oscar_forward``: OSCAR's ``BertImgModel`` (+ ``ImageBertForSequenceClassification``'s 2-way head): BERT
  embeddings on the text, ``img_embedding`` (+ ``bert.LayerNorm``) on the regions, ``[text ; regions]``, the
  extended attention mask ``(1 - mask) * -10000``, post-LN BERT layers, pooler on position 0.
- ``m3p_forward``: M3P's ``TransformerModel.jointfwd`` (``[regions ; text]``, positions 0.. over the joint sequence,
  length masks, embedding LayerNorm after the concatenation, XLM post-LN layers, ``tensor *= mask`` after each
  layer) and the text-only ``crossfwd``; ``m3p_itm_logit``: its image-text matching head
  (``predict(is_relation=True)``: ``pooled_layer`` on position 0 -> ``seq_relationship``).
- ``m3p_trainer_checkpoint``: the dict M3P's trainer saves (``{epoch, n_total_iter, best_metrics,
  best_stopping_criterion, model, model_optimizer, params}``, ``module.`` on every key under DDP).

They deliberately use neither mm_sbert nor HF's BERT/XLM-R modules, so the conversion is checked against an
independent computation. Random checkpoints in the original key layouts are built here too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-12


def _linear(sd: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def _layer_norm(sd: dict, name: str, x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, dim = x.shape
    return x.view(batch, length, heads, dim // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


# ---------------------------------------------------------------------------------------------------- OSCAR


def oscar_config(vocab_size: int, img_feature_dim: int = 22, use_img_layernorm: bool = False, **overrides) -> dict:
    config = {
        "architectures": ["ImageBertForSequenceClassification"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "type_vocab_size": 2,
        "vocab_size": vocab_size,
        "img_feature_dim": img_feature_dim,
        "img_feature_type": "faster_r-cnn",
        "num_labels": 2,
        "loss_type": "sfmx",
    }
    if use_img_layernorm:
        config.update(use_img_layernorm=True, img_layer_norm_eps=1e-12)
    config.update(overrides)
    return config


def _random(shape: tuple[int, ...], generator: torch.Generator, scale: float = 0.2) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * scale


def _random_layer_norm(sd: dict, name: str, dim: int, generator: torch.Generator) -> None:
    sd[f"{name}.weight"] = 1 + _random((dim,), generator, 0.1)
    sd[f"{name}.bias"] = _random((dim,), generator, 0.1)


def _random_linear(sd: dict, name: str, out_dim: int, in_dim: int, generator: torch.Generator) -> None:
    sd[f"{name}.weight"] = _random((out_dim, in_dim), generator, 1 / math.sqrt(in_dim))
    sd[f"{name}.bias"] = _random((out_dim,), generator, 0.1)


def random_oscar_state_dict(
    config: dict, prefix: str = "bert.", classifier: bool = True, pretraining_heads: bool = True, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A random checkpoint in OSCAR's key layout (``ImageBertForSequenceClassification`` with ``prefix="bert."``)."""
    g = torch.Generator().manual_seed(seed)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    sd: dict[str, torch.Tensor] = {}
    e = f"{prefix}embeddings"
    sd[f"{e}.word_embeddings.weight"] = _random((config["vocab_size"], hidden), g, 0.5)
    sd[f"{e}.position_embeddings.weight"] = _random((config["max_position_embeddings"], hidden), g, 0.5)
    sd[f"{e}.token_type_embeddings.weight"] = _random((config["type_vocab_size"], hidden), g, 0.5)
    _random_layer_norm(sd, f"{e}.LayerNorm", hidden, g)
    for i in range(config["num_hidden_layers"]):
        layer = f"{prefix}encoder.layer.{i}"
        for part in ("query", "key", "value"):
            _random_linear(sd, f"{layer}.attention.self.{part}", hidden, hidden, g)
        _random_linear(sd, f"{layer}.attention.output.dense", hidden, hidden, g)
        _random_layer_norm(sd, f"{layer}.attention.output.LayerNorm", hidden, g)
        _random_linear(sd, f"{layer}.intermediate.dense", inter, hidden, g)
        _random_linear(sd, f"{layer}.output.dense", hidden, inter, g)
        _random_layer_norm(sd, f"{layer}.output.LayerNorm", hidden, g)
    _random_linear(sd, f"{prefix}pooler.dense", hidden, hidden, g)
    _random_linear(sd, f"{prefix}img_embedding", hidden, config["img_feature_dim"], g)
    if config.get("use_img_layernorm"):
        _random_layer_norm(sd, f"{prefix}LayerNorm", hidden, g)
    if classifier:
        _random_linear(sd, "classifier", 2, hidden, g)
    if pretraining_heads:
        _random_linear(sd, "cls.predictions.transform.dense", hidden, hidden, g)
        _random_layer_norm(sd, "cls.predictions.transform.LayerNorm", hidden, g)
        sd["cls.predictions.bias"] = _random((config["vocab_size"],), g)
        _random_linear(sd, "cls.seq_relationship", 2, hidden, g)
    return sd


def oscar_forward(
    sd: dict,
    config: dict,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    text_mask: torch.Tensor,
    img_feats: torch.Tensor,
    img_mask: torch.Tensor,
    prefix: str = "bert.",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """OSCAR ``BertImgModel`` in eval mode -> ``(sequence_output, pooled_output, 2-way logits or None)``."""
    e = f"{prefix}embeddings"
    positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
    text = (
        sd[f"{e}.word_embeddings.weight"][input_ids]
        + sd[f"{e}.position_embeddings.weight"][positions]
        + sd[f"{e}.token_type_embeddings.weight"][token_type_ids]
    )
    text = _layer_norm(sd, f"{e}.LayerNorm", text, config.get("layer_norm_eps", EPS))
    regions = _linear(sd, f"{prefix}img_embedding", img_feats)
    if config.get("use_img_layernorm"):
        regions = _layer_norm(sd, f"{prefix}LayerNorm", regions, config.get("img_layer_norm_eps", EPS))
    hidden = torch.cat([text, regions], dim=1)
    mask = torch.cat([text_mask, img_mask], dim=1).float()
    extended = (1.0 - mask[:, None, None, :]) * -10000.0
    heads = config["num_attention_heads"]
    for i in range(config["num_hidden_layers"]):
        layer = f"{prefix}encoder.layer.{i}"
        q = _split_heads(_linear(sd, f"{layer}.attention.self.query", hidden), heads)
        k = _split_heads(_linear(sd, f"{layer}.attention.self.key", hidden), heads)
        v = _split_heads(_linear(sd, f"{layer}.attention.self.value", hidden), heads)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + extended
        context = _merge_heads(F.softmax(scores, dim=-1) @ v)
        attention = _linear(sd, f"{layer}.attention.output.dense", context)
        hidden = _layer_norm(sd, f"{layer}.attention.output.LayerNorm", attention + hidden)
        intermediate = _gelu(_linear(sd, f"{layer}.intermediate.dense", hidden))
        output = _linear(sd, f"{layer}.output.dense", intermediate)
        hidden = _layer_norm(sd, f"{layer}.output.LayerNorm", output + hidden)
    pooled = torch.tanh(_linear(sd, f"{prefix}pooler.dense", hidden[:, 0]))
    logits = _linear(sd, "classifier", pooled) if "classifier.weight" in sd else None
    return hidden, pooled, logits


def oscar_tensorize_example(
    tokenizer,
    text_a: str,
    img_feat: torch.Tensor,
    text_b: str | None = None,
    max_seq_len: int = 70,
    max_img_seq_len: int = 50,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """OSCAR's ``RetrievalDataset.tensorize_example`` (run_retrieval.py, ``att_mask_type="CLR"``): ``[CLS] text_a
    [SEP] (text_b [SEP])`` with segment ids 0 / 1, padded to ``max_seq_len``, then the region vectors padded to
    ``max_img_seq_len``; returns ``(input_ids, attention_mask, segment_ids, img_feat)`` for one example."""
    tokens_a = tokenizer.tokenize(text_a)
    if len(tokens_a) > max_seq_len - 2:
        tokens_a = tokens_a[: max_seq_len - 2]
    tokens = [tokenizer.cls_token] + tokens_a + [tokenizer.sep_token]
    segment_ids = [0] + [0] * (len(tokens_a) + 1)
    if text_b:
        tokens_b = tokenizer.tokenize(text_b)
        if len(tokens_b) > max_seq_len - len(tokens) - 1:
            tokens_b = tokens_b[: (max_seq_len - len(tokens) - 1)]
        tokens += tokens_b + [tokenizer.sep_token]
        segment_ids += [1] * (len(tokens_b) + 1)
    seq_len = len(tokens)
    seq_padding_len = max_seq_len - seq_len
    tokens += [tokenizer.pad_token] * seq_padding_len
    segment_ids += [0] * seq_padding_len
    input_ids = tokenizer.convert_tokens_to_ids(tokens)
    img_len = min(img_feat.shape[0], max_img_seq_len)
    img_feat = img_feat[:img_len]
    img_feat = torch.cat([img_feat, torch.zeros(max_img_seq_len - img_len, img_feat.shape[1])], 0)
    attention_mask = [1] * seq_len + [0] * seq_padding_len + [1] * img_len + [0] * (max_img_seq_len - img_len)
    return torch.tensor(input_ids), torch.tensor(attention_mask), torch.tensor(segment_ids), img_feat


# ---------------------------------------------------------------------------------------------------- M3P


def random_m3p_state_dict(
    n_words: int,
    dim: int = 32,
    n_layers: int = 2,
    n_positions: int = 64,
    feature_dim: int = 16,
    unused_parts: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A random checkpoint in M3P's ``TransformerModel`` key layout (``is_crossModal=True``, ``n_langs=1``).

    ``unused_parts`` adds what M3P's model holds besides the retrieval path, each group with a few of its keys: the
    image-distribution projection, decoder attention, AoA refiner, cross alignment, the matching heads
    (``seq_relationship``, ``pooled_layer2`` / ``seq_relationship2``), MRFR, object and word prediction, the
    latent-space transforms and cross-language embeddings.
    """
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {
        "position_embeddings.weight": _random((n_positions, dim), g, 0.5),
        "embeddings.weight": _random((n_words, dim), g, 0.5),
    }
    _random_layer_norm(sd, "layer_norm_emb", dim, g)
    _random_linear(sd, "image_embeddings.image_embeddings", dim, feature_dim, g)
    _random_linear(sd, "image_embeddings.image_location_embeddings", dim, 5, g)
    _random_layer_norm(sd, "image_embeddings.LayerNorm", dim, g)
    for i in range(n_layers):
        for part in ("q_lin", "k_lin", "v_lin", "out_lin"):
            _random_linear(sd, f"attentions.{i}.{part}", dim, dim, g)
        _random_layer_norm(sd, f"layer_norm1.{i}", dim, g)
        _random_linear(sd, f"ffns.{i}.lin1", 4 * dim, dim, g)
        _random_linear(sd, f"ffns.{i}.lin2", dim, 4 * dim, g)
        _random_layer_norm(sd, f"layer_norm2.{i}", dim, g)
    _random_linear(sd, "pooled_layer.dense", dim, dim, g)
    if unused_parts:
        _random_linear(sd, "image_embeddings.image_distbution_embeddings", dim, 1600, g)
        for i in range(n_layers):
            _random_linear(sd, f"encoder_attn.{i}.q_lin", dim, dim, g)
            _random_layer_norm(sd, f"layer_norm15.{i}", dim, g)
        _random_linear(sd, "refine_embeddings.layers.0.feed_forward.lin1", dim, dim, g)
        _random_linear(sd, "cross_alignment.align_output", dim, dim, g)
        _random_linear(sd, "seq_relationship", 1, dim, g)
        _random_linear(sd, "mrfr_dense", 2048, dim, g)
        _random_linear(sd, "transformer_obj.dense", dim, dim, g)
        _random_layer_norm(sd, "transformer_obj.LayerNorm", dim, g)
        _random_linear(sd, "pooled_layer2.dense", dim, dim, g)
        _random_linear(sd, "seq_relationship2", 1, dim, g)
        for i in range(2):  # VaeEncoder / LatentDecoder per modality
            _random_linear(sd, f"latent_transforms.{i}.x_to_mu", dim, dim, g)
            _random_linear(sd, f"latent_transforms.{i}.x_to_logvar", dim, dim, g)
            _random_linear(sd, f"latent_transforms.{i}.out_dense", dim, 2 * dim, g)
            _random_linear(sd, f"original_transforms.{i}.dense", dim, dim, g)
            _random_linear(sd, f"original_transforms.{i}.dense_mu", dim, dim, g)
            _random_layer_norm(sd, f"original_transforms.{i}.LayerNorm", dim, g)
        sd["pred_layer.proj.weight"] = sd["embeddings.weight"]  # share_inout_emb
        sd["pred_layer.proj.bias"] = _random((n_words,), g, 0.1)
        _random_linear(sd, "pred_obj_layer.proj", 1600, dim, g)
        sd["cross_lang_embeddings.weight"] = _random((2, dim), g, 0.5)
    return sd


def m3p_trainer_checkpoint(state_dict: dict, params: dict, ddp: bool = True) -> dict:
    """What M3P's ``Trainer.save_checkpoint`` writes: metrics (numpy scalars, as its evaluator computes them), the
    model's state dict (``module.`` on every key when trained under DistributedDataParallel), the optimizer state and
    the run's params."""
    import numpy as np

    model = {f"module.{k}" if ddp else k: v for k, v in state_dict.items()}
    optimizer = {
        "state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
        "param_groups": [{"lr": 5e-5, "betas": (0.9, 0.98), "weight_decay": 0.01, "num_updates": 10, "params": [0]}],
    }
    return {
        "epoch": 3,
        "n_total_iter": 12000,
        "best_metrics": {"valid_itm_acc": np.mean([0.5, 0.75]), "valid_r1": np.float32(61.5)},
        "best_stopping_criterion": np.float64(0.625),
        "model": model,
        "model_optimizer": optimizer,
        "params": params,
    }


def m3p_forward(
    sd: dict,
    n_heads: int,
    x: torch.Tensor,
    lengths: torch.Tensor,
    x_img: torch.Tensor | None = None,
    image_loc: torch.Tensor | None = None,
    lengths_img: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """M3P ``jointfwd`` (with an image) or text ``crossfwd`` (without), batch first, eval mode.

    Returns ``(tensor [B, S, dim], mask [B, S])`` with the sequence ``[regions ; text]``; like the original, the
    masks are lengths over the joint sequence, so every image in a batch must have the same number of regions.
    """
    n_layers = len({key.split(".")[1] for key in sd if key.startswith("attentions.")})
    text = sd["embeddings.weight"][x]
    if x_img is not None:
        img = _linear(sd, "image_embeddings.image_embeddings", x_img) + _linear(
            sd, "image_embeddings.image_location_embeddings", image_loc
        )
        img = _layer_norm(sd, "image_embeddings.LayerNorm", img)
        tensor = torch.cat([img, text], dim=1)
        total = lengths_img + lengths
    else:
        tensor = text
        total = lengths
    length = tensor.shape[1]
    mask = torch.arange(length)[None, :] < total[:, None]
    tensor = tensor + sd["position_embeddings.weight"][torch.arange(length)][None]
    if x_img is not None:
        tensor = tensor * mask.unsqueeze(-1).to(tensor.dtype)
        tensor = _layer_norm(sd, "layer_norm_emb", tensor)
    else:
        tensor = _layer_norm(sd, "layer_norm_emb", tensor)
        tensor = tensor * mask.unsqueeze(-1).to(tensor.dtype)
    for i in range(n_layers):
        q = _split_heads(_linear(sd, f"attentions.{i}.q_lin", tensor), n_heads)
        k = _split_heads(_linear(sd, f"attentions.{i}.k_lin", tensor), n_heads)
        v = _split_heads(_linear(sd, f"attentions.{i}.v_lin", tensor), n_heads)
        scores = (q / math.sqrt(q.shape[-1])) @ k.transpose(2, 3)
        scores = scores.masked_fill((mask == 0)[:, None, None, :], -float("inf"))
        context = _merge_heads(F.softmax(scores.float(), dim=-1) @ v)
        tensor = _layer_norm(sd, f"layer_norm1.{i}", tensor + _linear(sd, f"attentions.{i}.out_lin", context))
        ffn = _linear(sd, f"ffns.{i}.lin2", _gelu(_linear(sd, f"ffns.{i}.lin1", tensor)))
        tensor = _layer_norm(sd, f"layer_norm2.{i}", tensor + ffn)
        tensor = tensor * mask.unsqueeze(-1).to(tensor.dtype)
    return tensor, mask


def m3p_pooled(sd: dict, tensor: torch.Tensor) -> torch.Tensor:
    """M3P's ``pooled_layer`` (BertPooler: dense + tanh on position 0)."""
    return torch.tanh(_linear(sd, "pooled_layer.dense", tensor[:, 0]))


def m3p_itm_logit(sd: dict, tensor: torch.Tensor) -> torch.Tensor:
    """M3P's image-text matching score ``predict(tensor, is_relation=True)``: one logit per row, higher = match."""
    return _linear(sd, "seq_relationship", m3p_pooled(sd, tensor))[:, 0]


def linear_head(head: dict, x: torch.Tensor) -> torch.Tensor:
    return _linear(head, "classifier", x)
