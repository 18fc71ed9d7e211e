from __future__ import annotations

from mm_sbert.data.image_caption_corpus import ImageCaptionCorpus
from mm_sbert.data.store_image_resolver import StoreImageResolver

__all__ = ["ImageCaptionCorpus", "StoreImageResolver"]
