from __future__ import annotations

from mm_sbert.data.synthetic_scenes import SyntheticScenes

__all__ = ["SyntheticScenes"]
