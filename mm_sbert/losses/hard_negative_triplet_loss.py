from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from sentence_transformers.util import cos_sim
from torch import Tensor, nn


class HardNegativeTripletLoss(nn.Module):
    """The bi-encoder's triplet loss with in-batch hardest negatives (VSE++ "max violation"), both directions.

    For a batch of ``(caption_i, image_i)`` pairs with cosine similarities ``s[i, j] = cos(caption_i, image_j)``:

    ``L = mean_i( [m - s[i, i] + max_j s[i, j]]_+  +  [m - s[i, i] + max_j s[j, i]]_+ )``

    the first term pushing each caption's hardest wrong image, the second each image's hardest wrong caption
    below the positive by the margin ``m``. Pairs whose images share an id (``labels``) are never negatives, so
    several captions of one image in a batch do no harm. This is the reference's (MMT-Retrieval) loss: mean over
    the batch, distance ``1 - cos``. With ``hardest=False`` every in-batch negative counts (the sum of the hinge
    terms, VSE loss), an ablation in the VSE++ paper.

    Inputs: a dataset with the columns ``caption``, ``image`` (in this order) and ``label`` (the image id); without
    a label column every row is its own image.

    Args:
        model: the bi-encoder (an :class:`~mm_sbert.MMSentenceTransformer`).
        margin: the margin ``m`` (the reference configs use 0.1; the reference class default is 0.2).
        hardest: hardest negative only (VSE++) or the sum over all negatives (VSE).

    Example:
        >>> loss = HardNegativeTripletLoss(model, margin=0.1)
        >>> trainer = SentenceTransformerTrainer(model=model, train_dataset=dataset, loss=loss)
    """

    def __init__(self, model: nn.Module, margin: float = 0.2, hardest: bool = True) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.model = model
        self.margin = float(margin)
        self.hardest = bool(hardest)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        sentence_features = list(sentence_features)
        if len(sentence_features) != 2:
            raise ValueError(
                f"HardNegativeTripletLoss takes two input columns (caption, image) plus a label column, got "
                f"{len(sentence_features)} input columns"
            )
        captions, images = (self.model(features)["sentence_embedding"] for features in sentence_features)
        return self.compute_loss_from_embeddings(captions, images, labels)

    def compute_loss_from_embeddings(
        self, caption_embeddings: Tensor, image_embeddings: Tensor, labels: Tensor | None = None
    ) -> Tensor:
        """The loss for row-aligned caption and image embeddings ``[B, d]`` and image ids ``labels`` ``[B]``."""
        scores = cos_sim(caption_embeddings, image_embeddings)
        batch_size = scores.size(0)
        if labels is None:
            labels = torch.arange(batch_size, device=scores.device)
        labels = labels.to(scores.device).view(-1)
        if labels.numel() != batch_size:
            raise ValueError(f"Got {labels.numel()} labels for a batch of {batch_size} pairs")
        positives = scores.diagonal()
        same_image = labels.unsqueeze(0) == labels.unsqueeze(1)
        # Row i: caption i against every image (caption -> image); column j: image j against every caption.
        cost_caption = (self.margin - positives.unsqueeze(1) + scores).clamp(min=0).masked_fill(same_image, 0)
        cost_image = (self.margin - positives.unsqueeze(0) + scores).clamp(min=0).masked_fill(same_image, 0)
        if self.hardest:
            # The hinge is monotone in s_neg, so the hardest negative's hinge is the row/column max of the hinges;
            # a row with no negative at all (every pair the same image) contributes 0.
            return cost_caption.max(dim=1).values.mean() + cost_image.max(dim=0).values.mean()
        return cost_caption.sum(dim=1).mean() + cost_image.sum(dim=0).mean()

    def get_config_dict(self) -> dict[str, Any]:
        return {"margin": self.margin, "hardest": self.hardest}

    @property
    def citation(self) -> str:
        return """
@inproceedings{faghri2018vse++,
    title={VSE++: Improving Visual-Semantic Embeddings with Hard Negatives},
    author={Faghri, Fartash and Fleet, David J. and Kiros, Jamie Ryan and Fidler, Sanja},
    booktitle={BMVC},
    year={2018},
}
"""
