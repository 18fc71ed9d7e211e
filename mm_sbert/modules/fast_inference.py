"""A bfloat16 inference path for the backbone's encoder layers on CPU: oneDNN linears with packed weights.

Eager bfloat16 runs each ``nn.Linear`` through oneDNN with the weight re-laid-out on every call, the three attention
projections as three products, and GELU as a separate pass over the widest activation. Here the weights are packed
once (and again only when they change), the query / key / value projections are one product and GELU runs inside
the intermediate product. Attention is written as two batched products around a float32 softmax (:func:`attention`),
so the layer computes the same function as the backbone's own ``BertLayer`` (post-LayerNorm, absolute positions in
the embeddings), with other rounding only where oneDNN's fused epilogue rounds once instead of twice and where the
attention scores are rounded to bfloat16 before their softmax.

It is used only where it applies: CPU, bfloat16 weights, no gradient, eval mode, a BERT / XLM-R style encoder
layer with an erf GELU, and a PyTorch whose oneDNN computes bfloat16 natively (e.g. AMX). Everything else, training
above all, runs the backbone's own modules.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["PackedEncoder", "attention", "packed_encoder_for"]


def _cpu_packs_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def _erf_gelu(activation: Any) -> bool:
    function = getattr(activation, "act", None) or activation
    if isinstance(activation, nn.GELU):
        return activation.approximate == "none"
    # transformers' GELUActivation wraps nn.functional.gelu (erf); its "gelu_new" / "gelu_fast" are tanh forms.
    return type(activation).__name__ == "GELUActivation" and function is nn.functional.gelu


def _layer_supported(layer: nn.Module) -> bool:
    try:
        attention, self_attention = layer.attention, layer.attention.self
        parts = (
            self_attention.query,
            self_attention.key,
            self_attention.value,
            attention.output.dense,
            attention.output.LayerNorm,
            layer.intermediate.dense,
            layer.output.dense,
            layer.output.LayerNorm,
        )
    except AttributeError:
        return False
    config = getattr(self_attention, "config", None)
    return (
        all(part is not None for part in parts)
        and not getattr(layer, "is_decoder", False)
        and not getattr(layer, "add_cross_attention", False)
        and not getattr(layer, "chunk_size_feed_forward", 0)
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and _erf_gelu(layer.intermediate.intermediate_act_fn)
        and all(isinstance(part, nn.Linear) and part.bias is not None for part in parts[:4] + parts[5:7])
    )


class PackedEncoder:
    """The encoder layers of a backbone with their linear weights packed for oneDNN (bfloat16, CPU).

    Args:
        layers: the backbone's ``encoder.layer`` list.
    """

    def __init__(self, layers: nn.ModuleList) -> None:
        self.key = self.weights_key(layers)
        self.packed = [self._pack_layer(layer) for layer in layers]

    @staticmethod
    def weights_key(layers: nn.ModuleList) -> tuple:
        """Changes whenever a weight the packs hold is replaced or updated in place (an optimizer step,
        ``load_state_dict``). Read by attribute, layer by layer: walking ``parameters()`` on every forward cost a
        millisecond per call."""
        try:
            tensors = [tensor for layer in layers for tensor in _layer_tensors(layer)]
        except AttributeError:
            return ("a layer the packs do not fit",)  # a module replaced since: repacking then falls back
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    @staticmethod
    def _pack(weight: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)

    def _pack_layer(self, layer: nn.Module) -> dict[str, Any]:
        attention = layer.attention.self
        qkv_weight = torch.cat([attention.query.weight, attention.key.weight, attention.value.weight]).detach()
        qkv_bias = torch.cat([attention.query.bias, attention.key.bias, attention.value.bias]).detach()
        return {
            "heads": attention.num_attention_heads,
            "head_size": attention.attention_head_size,
            "qkv": (self._pack(qkv_weight), qkv_bias.contiguous()),
            "attention_out": (self._pack(layer.attention.output.dense.weight), layer.attention.output.dense.bias),
            "attention_norm": layer.attention.output.LayerNorm,
            "intermediate": (self._pack(layer.intermediate.dense.weight), layer.intermediate.dense.bias),
            "output": (self._pack(layer.output.dense.weight), layer.output.dense.bias),
            "output_norm": layer.output.LayerNorm,
        }

    @staticmethod
    def _linear(x: torch.Tensor, packed: tuple[torch.Tensor, torch.Tensor], activation: str = "none") -> torch.Tensor:
        weight, bias = packed
        # The algorithm argument picks GELU's form: "none" is the exact (erf) GELU.
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias.detach(), activation, [], "none")

    def layer(self, index: int, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Encoder layer ``index`` on ``hidden`` ``[B, L, H]``; ``mask`` as the backbone's SDPA attention takes it
        (``None``, a boolean ``[B, 1, L, L]`` mask, or an additive one)."""
        packed = self.packed[index]
        batch, length, width = hidden.shape
        heads, head_size = packed["heads"], packed["head_size"]
        flat = hidden.reshape(batch * length, width)
        qkv = self._linear(flat, packed["qkv"]).view(batch, length, 3, heads, head_size)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        context = attention(query, key, value, mask)
        context = context.transpose(1, 2).reshape(batch * length, heads * head_size)
        norm = packed["attention_norm"]
        attended = norm(self._linear(context, packed["attention_out"]) + flat)
        intermediate = self._linear(attended, packed["intermediate"], "gelu")
        norm = packed["output_norm"]
        return norm(self._linear(intermediate, packed["output"]) + attended).view(batch, length, width)

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for index in range(len(self.packed)):
            hidden = self.layer(index, hidden, mask)
        return hidden


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention of ``[B, heads, L, head_size]`` bfloat16 tensors as two batched products around
    a float32 softmax (the math form of ``scaled_dot_product_attention``); ``mask`` as the backbone passes it:
    ``None``, boolean (True = attend) or additive.

    Sequences here are short (tens of positions) and the heads many, where PyTorch's CPU flash kernel spends more on
    its per-block bookkeeping than on arithmetic; see docs/scale.md for the measurements.
    """
    scores = torch.matmul(query * query.size(-1) ** -0.5, key.transpose(-1, -2)).float()
    if mask is not None:
        if mask.dtype == torch.bool:
            # The float32 minimum, not -inf: a row with every position masked then averages instead of giving NaN.
            scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
        else:
            scores = scores + mask.float()
    return torch.matmul(scores.softmax(dim=-1).to(value.dtype), value)


def _layer_tensors(layer: nn.Module) -> list[torch.Tensor]:
    """The weights and biases of one encoder layer that the packed layer reads."""
    attention = layer.attention
    linears = (
        attention.self.query,
        attention.self.key,
        attention.self.value,
        attention.output.dense,
        layer.intermediate.dense,
        layer.output.dense,
    )
    norms = (attention.output.LayerNorm, layer.output.LayerNorm)
    return [tensor for part in (*linears, *norms) for tensor in (part.weight, part.bias)]


# Packed weights per layer list, outside the modules: a module stays deep-copyable and picklable (oneDNN's packed
# tensors are neither), and a list that is garbage-collected takes its packs along.
_PACKED: weakref.WeakKeyDictionary[nn.ModuleList, PackedEncoder | bool] = weakref.WeakKeyDictionary()


def packed_encoder_for(layers: nn.ModuleList, dtype: torch.dtype, device: torch.device) -> PackedEncoder | None:
    """The :class:`PackedEncoder` of ``layers`` (packed once, again when a weight changed), or ``None`` where the
    packed path does not apply (not bfloat16 on CPU, an unsupported layer, no native bfloat16 in oneDNN)."""
    if dtype != torch.bfloat16 or device.type != "cpu":
        return None
    cached = _PACKED.get(layers)
    if cached is False:
        return None  # checked before: not supported here
    if isinstance(cached, PackedEncoder) and cached.key == PackedEncoder.weights_key(layers):
        return cached
    if cached is None and not (_cpu_packs_bf16() and all(_layer_supported(layer) for layer in layers)):
        _PACKED[layers] = False
        return None
    try:
        packed = PackedEncoder(layers)
    except (RuntimeError, AttributeError) as error:  # a PyTorch build without these oneDNN ops
        logger.info("The packed bfloat16 encoder is not available (%s); using the backbone's layers", error)
        _PACKED[layers] = False
        return None
    _PACKED[layers] = packed
    return packed
