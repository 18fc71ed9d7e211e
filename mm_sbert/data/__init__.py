from __future__ import annotations

from mm_sbert.data.color_swatches import color_swatches
from mm_sbert.data.image_caption_corpus import ImageCaptionCorpus
from mm_sbert.data.store_image_resolver import StoreImageResolver
from mm_sbert.data.synthetic_scenes import SyntheticScenes

__all__ = ["ImageCaptionCorpus", "StoreImageResolver", "SyntheticScenes", "color_swatches"]
