"""Cross-encoder logits of (caption, image) pairs, kept so a pair scored once is never cross-encoded again."""

from __future__ import annotations

from collections.abc import Hashable, Iterable


class PairScoreCache:
    """Cross-encoder logits keyed by ``(caption id, image id)``, each with the seconds it cost to compute.

    :func:`~mm_sbert.retrieval.rerank` fills it and reads it: an evaluation that reranks both directions, several
    top-k values, or Coop and full cross-encoding, scores each pair once. The key is oriented (caption first), so a
    pair met in text -> image and in image -> text retrieval is the same entry. The seconds of a pair are its share
    of the ``predict`` call that computed it; a cache hit is charged that cost again, so the time reported for a
    ranking is what it would have cost on its own, whatever was cached before.

    A cache holds the scores of one model state: start a new one after training steps or for another model.

    Example:
        >>> cache = PairScoreCache()
        >>> t2i = rerank(cross_encoder, captions, images, rows, be_scores, query_ids=caption_ids, cache=cache)
        >>> i2t = rerank(cross_encoder, images, captions, rows2, be2, query_ids=image_ids, cache=cache)  # reuses pairs
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[Hashable, Hashable], tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple[Hashable, Hashable]) -> bool:
        return key in self._entries

    def get(self, key: tuple[Hashable, Hashable]) -> tuple[float, float]:
        """``(logit, seconds)`` of the pair ``key = (caption id, image id)``; ``KeyError`` when it was never scored."""
        return self._entries[key]

    def put(self, keys: Iterable[tuple[Hashable, Hashable]], logits: Iterable[float], seconds_per_pair: float) -> None:
        """Store the logits of ``keys``, each charged ``seconds_per_pair``."""
        for key, logit in zip(keys, logits, strict=True):
            self._entries[key] = (float(logit), seconds_per_pair)

    def seconds_of(self, keys: Iterable[tuple[Hashable, Hashable]]) -> float:
        """The measured cost of scoring the distinct pairs ``keys`` once (``KeyError`` for a pair never scored)."""
        return sum(self._entries[key][1] for key in set(keys))

    @property
    def seconds_per_pair(self) -> float:
        """The mean measured cost of one pair over the cache (0 when empty)."""
        if not self._entries:
            return 0.0
        return sum(seconds for _, seconds in self._entries.values()) / len(self._entries)
