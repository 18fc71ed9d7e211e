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
    the first ``hard_negatives`` of them are the most similar by the bi-encoder (see :class:`CrossEncoderBCELoss`),
    the rest are random. A row with fewer valid negatives than asked repeats them; a row whose image fills the whole
    batch gets no list.

    Where :class:`CrossEncoderBCELoss` (the paper's loss) judges every pair on its own, this loss makes the positive
    compete with its look-alikes, which is what reranking the bi-encoder's top-k asks of the cross-encoder. With
    batches of look-alike images (:class:`~mm_sbert.training.GroupedBatchSampler`) the lists hold hard negatives.
    The cost per step is ``batch * (1 + negatives)`` cross-encoder pairs (BCE with one negative: ``2 * batch``).

    Inputs: a dataset with the columns ``caption``, ``image`` (in this order) and ``label`` (the image id); without
    a label column every row is its own image.

    Args:
        model: the model being trained (its ``MultimodalTransformer`` holds the head).
        negatives: negatives per list.
        hard_negatives: how many of the negatives are mined with the bi-encoder similarities (``0``: all random;
            ``True``: all mined). Mined negatives alone keep a cross-encoder trained from a cold start at chance;
            one mined among random ones adds look-alikes without losing the easy signal.

    Example:
        >>> loss = CrossEncoderListwiseLoss(model, negatives=3)
    """

    def __init__(self, model: torch.nn.Module, negatives: int = 3, hard_negatives: int | bool = 0) -> None:
        if negatives < 1:
            raise ValueError(f"CrossEncoderListwiseLoss needs negatives >= 1, got {negatives}")
        num_hard = negatives if hard_negatives is True else int(hard_negatives)
        if not 0 <= num_hard <= negatives:
            raise ValueError(f"hard_negatives must be between 0 and negatives={negatives}, got {hard_negatives}")
        super().__init__(model, negatives_per_positive=negatives, hard_negatives=num_hard > 0)
        self.num_hard_negatives = num_hard

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
        """Row indices of the caption and the image of every pair, list by list, the positive first in each list.

        Given ``similarities``, the first :attr:`num_hard_negatives` negatives of a list are the hardest valid rows,
        the others random among the rest; without, all are random.
        """
        batch_size, device = labels.numel(), labels.device
        valid = (labels.unsqueeze(0) != labels.unsqueeze(1)).cpu()  # valid[i, j]: row j shows another image
        replace_image = (torch.rand(batch_size) < 0.5).tolist()
        random_images, random_captions = self.ranked_candidates(valid, None)
        if similarities is not None and self.num_hard_negatives:
            hard_images, hard_captions = self.ranked_candidates(valid, similarities)
            num_hard = self.num_hard_negatives
        else:
            hard_images, hard_captions, num_hard = random_images, random_captions, 0
        valid_rows = valid.tolist()
        caption_rows: list[int] = []
        image_rows: list[int] = []
        for i in range(batch_size):
            hard = hard_images[i] if replace_image[i] else hard_captions[i]
            hard = [j for j in hard.tolist() if valid_rows[i][j]][:num_hard]
            rest = random_images[i] if replace_image[i] else random_captions[i]
            pool = hard + [j for j in rest.tolist() if valid_rows[i][j] and j not in hard]
            if not pool:
                continue
            negatives = [pool[k % len(pool)] for k in range(self.negatives_per_positive)]
            same = [i] * (1 + len(negatives))
            others = [i, *negatives]
            caption_rows += same if replace_image[i] else others
            image_rows += others if replace_image[i] else same
        return torch.tensor(caption_rows, device=device), torch.tensor(image_rows, device=device)

    def get_config_dict(self) -> dict[str, Any]:
        return {"negatives": self.negatives_per_positive, "hard_negatives": self.num_hard_negatives}
