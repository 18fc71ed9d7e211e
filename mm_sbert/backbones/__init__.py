from __future__ import annotations

from mm_sbert.backbones.offline_backbones import all_minilm_l6_v2_path, multilingual_e5_small_path
from mm_sbert.backbones.q4_checkpoint import Q4Checkpoint, dequantize_q4_0

__all__ = ["Q4Checkpoint", "all_minilm_l6_v2_path", "dequantize_q4_0", "multilingual_e5_small_path"]
