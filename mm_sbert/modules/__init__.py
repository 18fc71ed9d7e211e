from __future__ import annotations

from mm_sbert.modules.multimodal_transformer import MultimodalTransformer
from mm_sbert.modules.multimodal_transformer_config import MultimodalTransformerConfig

__all__ = ["MultimodalTransformer", "MultimodalTransformerConfig"]
