from __future__ import annotations

from mm_sbert.backbones.offline_backbones import (
    DEFAULT_BACKBONE,
    OFFLINE_BACKBONES,
    all_minilm_l6_v2_path,
    multilingual_e5_small_path,
    resolve_backbone,
)
from mm_sbert.backbones.q4_checkpoint import Q4Checkpoint, dequantize_q4_0

__all__ = [
    "DEFAULT_BACKBONE",
    "OFFLINE_BACKBONES",
    "Q4Checkpoint",
    "all_minilm_l6_v2_path",
    "dequantize_q4_0",
    "multilingual_e5_small_path",
    "resolve_backbone",
]
