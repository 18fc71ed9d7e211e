from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from sentence_transformers.util import cos_sim
from torch import Tensor, nn

from mm_sbert.modules.multimodal_transformer import REGION_KEYS, TEXT_KEYS


class CrossEncoderBCELoss(nn.Module):
    """Binary cross-entropy on the cross-encoder logit, with in-batch negatives made by swapping a pair's half.

    For each positive ``(caption_i, image_i)`` of the batch it adds ``negatives_per_positive`` negatives: with
    probability 0.5 ``(caption_i, image_j)`` (the image replaced), otherwise ``(caption_j, image_i)`` (the caption
    replaced), where row ``j`` never shows the same image (``labels``). ``j`` is random, or with
    ``hard_negatives=True`` the most similar wrong image / caption by the bi-encoder's cosine similarity over the
    batch (one extra gradient-free bi-encoder pass over the batch; no pass over the corpus).

    The pairs are built from the already preprocessed columns, without re-tokenizing or re-featurizing: the text
    tensors of the caption row (with the image row's tags, for a model that reads them) and the region tensors of
    the image row. They run through the model's
    ``MultimodalTransformer``, whose head writes ``features["scores"]``; ``L = BCEWithLogits(scores, y)`` with
    ``y = 1`` for positives, ``0`` for negatives. The head lives in the model (not in this loss), so DDP syncs it
    and the saved model has it.

    Inputs: a dataset with the columns ``caption``, ``image`` (in this order) and ``label`` (the image id); without
    a label column every row is its own image.

    Args:
        model: the model being trained: an :class:`~mm_sbert.MMSentenceTransformer` (its ``MultimodalTransformer``
            holds the head) or an :class:`~mm_sbert.MMCrossEncoder`.
        negatives_per_positive: negatives per positive (paper: 1, i.e. 128 positives + 128 negatives).
        hard_negatives: mine the negatives with the bi-encoder similarities instead of drawing them at random.

    Example:
        >>> loss = CrossEncoderBCELoss(model, negatives_per_positive=1, hard_negatives=True)
    """

    def __init__(self, model: nn.Module, negatives_per_positive: int = 1, hard_negatives: bool = False) -> None:
        super().__init__()
        if negatives_per_positive < 0:
            raise ValueError(f"negatives_per_positive must be >= 0, got {negatives_per_positive}")
        self.model = model
        self.negatives_per_positive = int(negatives_per_positive)
        self.hard_negatives = bool(hard_negatives)
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        captions, images, labels = self.columns(sentence_features, labels)
        similarities = self.mine_similarities(captions, images) if self.hard_negatives else None
        caption_index, image_index, targets = self.sample_pairs(labels, similarities)
        pairs = self.pair_features(captions, images, caption_index, image_index)
        logits = self.model(pairs)["scores"].view(-1)
        return self.bce(logits, targets.to(logits.dtype))

    def columns(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
        """The caption and image columns' features, checked, and the image id of every row."""
        sentence_features = list(sentence_features)
        if len(sentence_features) != 2:
            raise ValueError(
                f"{type(self).__name__} takes two input columns (caption, image) plus a label column, got "
                f"{len(sentence_features)} input columns"
            )
        captions, images = sentence_features
        for name, features, keys in (("caption", captions, TEXT_KEYS), ("image", images, REGION_KEYS)):
            missing = [key for key in keys if key != "token_type_ids" and key not in features]
            if missing:
                raise ValueError(
                    f"The {name} column's features lack {missing}; {type(self).__name__} needs a model whose first "
                    "module is mm_sbert's MultimodalTransformer"
                )
        batch_size = captions["input_ids"].size(0)
        device = captions["input_ids"].device
        if labels is None:
            labels = torch.arange(batch_size, device=device)
        return captions, images, labels.to(device).view(-1)

    @staticmethod
    def ranked_candidates(valid: Tensor, similarities: Tensor | None) -> tuple[Tensor, Tensor]:
        """Per row, the other rows in the order negatives are taken: for replacing the image, for the caption.

        A fresh random order per row, or with ``similarities`` the most similar wrong image / caption first;
        ``valid[i, j]`` (row ``j`` shows another image) is checked by the caller.
        """
        batch_size = valid.size(0)
        if similarities is None:
            ranked = torch.rand(batch_size, batch_size).argsort(dim=1)
            return ranked, ranked
        similarities = similarities.detach().float().cpu()
        fill = torch.finfo(similarities.dtype).min
        # Caption i's most similar wrong images; image i's most similar wrong captions.
        ranked_images = similarities.masked_fill(~valid, fill).argsort(dim=1, descending=True)
        ranked_captions = similarities.t().masked_fill(~valid, fill).argsort(dim=1, descending=True)
        return ranked_images, ranked_captions

    @torch.no_grad()
    def mine_similarities(self, captions: dict[str, Tensor], images: dict[str, Tensor]) -> Tensor:
        """Bi-encoder cosine similarities ``[B captions, B images]`` of this batch, without gradients."""
        # The unwrapped model: a gradient-free pass needs no DDP bookkeeping. Copies: forward edits its input.
        model = getattr(self.model, "module", self.model)
        embeddings = [_mean_pooled(model(dict(features))) for features in (captions, images)]
        return cos_sim(*embeddings)

    def sample_pairs(self, labels: Tensor, similarities: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Row indices of the caption and of the image of every pair, and its target (positives first).

        A negative replaces the image (``(i, j)``) or the caption (``(j, i)``) with equal probability, taking row
        ``j`` at random or, given ``similarities``, the hardest one not yet used for row ``i`` in that direction.
        Rows whose image fills the whole batch get no negative.
        """
        batch_size = labels.numel()
        device = labels.device
        caption_rows, image_rows = list(range(batch_size)), list(range(batch_size))
        valid = (labels.unsqueeze(0) != labels.unsqueeze(1)).cpu()  # valid[i, j]: row j shows another image
        num_negatives = self.negatives_per_positive
        if num_negatives and valid.any():
            replace_image = (torch.rand(batch_size, num_negatives) < 0.5).tolist()
            ranked_images, ranked_captions = self.ranked_candidates(valid, similarities)
            valid_rows = valid.tolist()
            for i in range(batch_size):
                pools = {
                    True: [j for j in ranked_images[i].tolist() if valid_rows[i][j]],
                    False: [j for j in ranked_captions[i].tolist() if valid_rows[i][j]],
                }
                used = {True: 0, False: 0}
                for direction in replace_image[i]:
                    pool = pools[direction]
                    if not pool:
                        continue
                    j = pool[used[direction] % len(pool)]
                    used[direction] += 1
                    caption_rows.append(i if direction else j)
                    image_rows.append(j if direction else i)
        targets = torch.zeros(len(caption_rows), device=device)
        targets[:batch_size] = 1.0
        return (
            torch.tensor(caption_rows, device=device),
            torch.tensor(image_rows, device=device),
            targets,
        )

    def pair_features(
        self, captions: dict[str, Tensor], images: dict[str, Tensor], caption_index: Tensor, image_index: Tensor
    ) -> dict[str, Tensor]:
        """Features of ``(caption[caption_index[k]], image[image_index[k]])``, as the model's
        ``MultimodalTransformer`` joins them (:meth:`~mm_sbert.modules.MultimodalTransformer.join_pair_features`:
        the caption's text, the image's tags if it reads them, the image's regions)."""
        model = getattr(self.model, "module", self.model)
        return model[0].join_pair_features(captions, images, caption_index, image_index)

    def get_config_dict(self) -> dict[str, Any]:
        return {"negatives_per_positive": self.negatives_per_positive, "hard_negatives": self.hard_negatives}

    @property
    def citation(self) -> str:
        return """
@article{geigle2022retrieve,
    title={Retrieve Fast, Rerank Smart: Cooperative and Joint Approaches for Improved Cross-Modal Retrieval},
    author={Geigle, Gregor and Pfeiffer, Jonas and Reimers, Nils and Vuli{\\'c}, Ivan and Gurevych, Iryna},
    journal={Transactions of the Association for Computational Linguistics},
    volume={10},
    year={2022},
}
"""


def _mean_pooled(features: dict[str, Tensor]) -> Tensor:
    if "sentence_embedding" in features:
        return features["sentence_embedding"]
    # A cross-encoder view has no Pooling module: the same masked mean the bi-encoder's Pooling(mean) computes.
    mask = features["attention_mask"].unsqueeze(-1).to(features["token_embeddings"].dtype)
    return (features["token_embeddings"] * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
