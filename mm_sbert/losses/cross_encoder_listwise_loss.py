from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from mm_sbert.losses.cross_encoder_bce_loss import CrossEncoderBCELoss


class CrossEncoderListwiseLoss(CrossEncoderBCELoss):
    """Softmax cross-entropy of the cross-encoder over short candidate lists: one positive against in-batch negatives.

    For each row ``i`` of the batch it builds a list of ``1 + negatives`` pairs: with probability 0.5 caption ``i``
    with image ``i`` (the positive) and ``negatives`` other images of the batch (image retrieval), otherwise image
    ``i`` with caption ``i`` and ``negatives`` other captions (text retrieval); the loss is
    ``CrossEntropy(logits of the list, target = the positive)``. Negatives never show the row's image (``label``);
    they are random or, with ``hard_negatives=True``, the most similar by the bi-encoder (see
    :class:`CrossEncoderBCELoss`). A row with fewer valid negatives than asked repeats them; a row whose image fills
    the whole batch gets no list.

    Where :class:`CrossEncoderBCELoss` (the paper's loss) judges every pair on its own, this loss makes the positive
    compete with its look-alikes, which is what reranking the bi-encoder's top-k asks of the cross-encoder. With
    batches of look-alike images (:class:`~mm_sbert.training.GroupedBatchSampler`) the lists hold hard negatives.
    The cost per step is ``batch * (1 + negatives)`` cross-encoder pairs (BCE with one negative: ``2 * batch``).

    Inputs: a dataset with the columns ``caption``, ``image`` (in this order) and ``label`` (the image id); without
    a label column every row is its own image.

    Args:
        model: the model being trained (its ``MultimodalTransformer`` holds the head).
        negatives: negatives per list.
        hard_negatives: mine the negatives with the bi-encoder similarities instead of drawing them at random.

    Example:
        >>> loss = CrossEncoderListwiseLoss(model, negatives=3)
    """

    def __init__(self, model: torch.nn.Module, negatives: int = 3, hard_negatives: bool = False) -> None:
        if negatives < 1:
            raise ValueError(f"CrossEncoderListwiseLoss needs negatives >= 1, got {negatives}")
        super().__init__(model, negatives_per_positive=negatives, hard_negatives=hard_negatives)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        captions, images, labels = self.columns(sentence_features, labels)
        similarities = self.mine_similarities(captions, images) if self.hard_negatives else None
        caption_index, image_index = self.sample_lists(labels, similarities)
        if caption_index.numel() == 0:
            # Every row shows the same image: no negatives, nothing to rank (zero loss that keeps the graph).
            return sum(parameter.sum() * 0.0 for parameter in self.model.parameters())
        pairs = self.pair_features(captions, images, caption_index, image_index)
        logits = self.model(pairs)["scores"].view(-1, 1 + self.negatives_per_positive)
        return F.cross_entropy(logits, torch.zeros(logits.size(0), dtype=torch.long, device=logits.device))

    def sample_lists(self, labels: Tensor, similarities: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Row indices of the caption and the image of every pair, list by list, the positive first in each list."""
        batch_size, device = labels.numel(), labels.device
        valid = (labels.unsqueeze(0) != labels.unsqueeze(1)).cpu()  # valid[i, j]: row j shows another image
        replace_image = (torch.rand(batch_size) < 0.5).tolist()
        ranked_images, ranked_captions = self.ranked_candidates(valid, similarities)
        valid_rows = valid.tolist()
        caption_rows: list[int] = []
        image_rows: list[int] = []
        for i in range(batch_size):
            ranked = ranked_images[i] if replace_image[i] else ranked_captions[i]
            pool = [j for j in ranked.tolist() if valid_rows[i][j]]
            if not pool:
                continue
            negatives = [pool[k % len(pool)] for k in range(self.negatives_per_positive)]
            same = [i] * (1 + len(negatives))
            others = [i, *negatives]
            caption_rows += same if replace_image[i] else others
            image_rows += others if replace_image[i] else same
        return torch.tensor(caption_rows, device=device), torch.tensor(image_rows, device=device)

    def get_config_dict(self) -> dict[str, Any]:
        return {"negatives": self.negatives_per_positive, "hard_negatives": self.hard_negatives}
