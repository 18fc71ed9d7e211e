from __future__ import annotations

from mm_sbert.modules.multimodal_transformer import MultimodalTransformer

__all__ = ["MultimodalTransformer"]
