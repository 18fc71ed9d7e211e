from __future__ import annotations

import pytest
import torch
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from torch import nn
from training_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

from mm_sbert.losses import HardNegativeTripletLoss

# cos(caption_i, image_j) for these unit vectors:
#   c0 = (1, 0): [1.0, 0.6, 0.0]
#   c1 = (0, 1): [0.0, 0.8, 1.0]
#   c2 = (1, 0): [1.0, 0.6, 0.0]
CAPTIONS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
IMAGES = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])


class FixedEmbeddings(nn.Module):
    """A stand-in bi-encoder: each column's features carry their embeddings already."""

    def forward(self, features):
        return {"sentence_embedding": features["embedding"]}


def loss_value(margin=0.2, hardest=True, labels=(0, 1, 2), captions=CAPTIONS, images=IMAGES) -> float:
    loss = HardNegativeTripletLoss(FixedEmbeddings(), margin=margin, hardest=hardest)
    features = [{"embedding": captions}, {"embedding": images}]
    return loss(features, torch.tensor(labels)).item()


def test_hardest_negative_both_directions_by_hand():
    # caption -> image, hardest wrong image per row: [.2-1+.6]+=0, [.2-.8+1]+=.4, [.2-0+1]+=1.2  -> mean 1.6/3
    # image -> caption, hardest wrong caption per column: [.2-1+1]+=.2, [.2-.8+.6]+=0, [.2-0+1]+=1.2 -> 1.4/3
    assert loss_value() == pytest.approx(3.0 / 3, abs=1e-6)


def test_margin_enters_every_hinge():
    # margin 0: rows 0, .2, 1 -> .4; columns 0, 0, 1 -> 1/3
    assert loss_value(margin=0.0) == pytest.approx(0.4 + 1 / 3, abs=1e-6)


def test_duplicate_images_are_not_negatives():
    # Rows 0 and 2 show the same image (label 0): pairs (0, 2) and (2, 0) are masked.
    # rows: 0, .4, [.2-0+.6]+=.8 -> 1.2/3; columns: [.2-1+0]+=0, 0, 1.2 -> 1.2/3
    assert loss_value(labels=(0, 1, 0)) == pytest.approx(0.8, abs=1e-6)


def test_all_negatives_sum_vse_ablation():
    # rows: 0 + 0, 0 + .4, 1.2 + .8 -> 2.4/3; columns: 0 + .2, 0 + 0, .2 + 1.2 -> 1.6/3
    assert loss_value(hardest=False) == pytest.approx(4.0 / 3, abs=1e-6)


def test_batch_of_one_image_has_no_negatives():
    assert loss_value(labels=(5, 5, 5)) == 0.0


def test_rejects_wrong_number_of_columns():
    loss = HardNegativeTripletLoss(FixedEmbeddings())
    with pytest.raises(ValueError, match="two input columns"):
        loss([{"embedding": CAPTIONS}], None)


def test_multiple_negatives_ranking_loss_is_the_infonce_baseline_on_our_columns():
    """The host's MNRL runs on our (caption, image) columns: symmetric InfoNCE over the batch's cosine scores."""
    from conftest import build_views
    from training_helpers import swatch_corpus

    bi_encoder, _ = build_views("bert")
    corpus = swatch_corpus(num_images=4, captions_per_image=1)
    captions = bi_encoder.preprocess(corpus.captions)
    images = bi_encoder.preprocess(corpus.images)
    loss = MultipleNegativesRankingLoss(
        bi_encoder, directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"
    )
    value = loss([dict(captions), dict(images)], torch.arange(4)).item()
    with torch.no_grad():
        a = nn.functional.normalize(bi_encoder(dict(captions))["sentence_embedding"], dim=-1)
        b = nn.functional.normalize(bi_encoder(dict(images))["sentence_embedding"], dim=-1)
    logits = 20.0 * a @ b.T
    targets = torch.arange(4)
    expected = (nn.functional.cross_entropy(logits, targets) + nn.functional.cross_entropy(logits.T, targets)) / 2
    assert value == pytest.approx(expected.item(), abs=1e-5)
