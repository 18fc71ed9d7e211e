from __future__ import annotations

import pytest
import torch
from conftest import build_views
from training_helpers import (
    one_torch_thread,  # noqa: F401 (autouse fixture)
    swatch_corpus,
)

from mm_sbert.losses import CrossEncoderListwiseLoss


def columns(bi_encoder, corpus):
    return dict(bi_encoder.preprocess(corpus.captions)), dict(bi_encoder.preprocess(corpus.images))


def lists(loss, labels, similarities=None):
    caption_rows, image_rows = loss.sample_lists(labels, similarities)
    width = 1 + loss.negatives_per_positive
    return caption_rows.view(-1, width), image_rows.view(-1, width)


def test_each_list_is_the_positive_then_negatives_that_keep_one_half():
    loss = CrossEncoderListwiseLoss(model=None, negatives=3)
    labels = torch.tensor([0, 0, 1, 2, 2, 3])
    torch.manual_seed(0)
    caption_lists, image_lists = lists(loss, labels)
    assert caption_lists.shape == (6, 4)
    for row, (captions, images) in enumerate(zip(caption_lists.tolist(), image_lists.tolist())):
        assert captions[0] == images[0] == row
        kept_caption = all(c == row for c in captions)
        kept_image = all(i == row for i in images)
        assert kept_caption != kept_image  # one half is the row's, the other varies
        for c, i in zip(captions[1:], images[1:]):
            assert labels[c] != labels[i]


def test_hard_lists_take_the_most_similar_wrong_rows_in_order():
    loss = CrossEncoderListwiseLoss(model=None, negatives=2, hard_negatives=True)
    labels = torch.arange(4)
    similarities = torch.tensor(
        [
            [0.9, 0.8, 0.1, 0.5],
            [0.7, 0.9, 0.2, 0.1],
            [0.3, 0.6, 0.9, 0.5],
            [0.0, 0.2, 0.4, 0.9],
        ]
    )
    torch.manual_seed(0)
    caption_lists, image_lists = lists(loss, labels, similarities)
    for row in range(4):
        if caption_lists[row].tolist() == [row] * 3:  # image retrieval list: hardest wrong images of the caption
            expected = similarities[row].clone()
        else:  # text retrieval list: hardest wrong captions of the image
            expected = similarities[:, row].clone()
        expected[row] = -1
        assert sorted(
            (image_lists if caption_lists[row].tolist() == [row] * 3 else caption_lists)[row, 1:].tolist()
        ) == sorted(expected.argsort(descending=True)[:2].tolist())


def test_short_pools_repeat_and_single_image_batches_give_no_list():
    loss = CrossEncoderListwiseLoss(model=None, negatives=3)
    caption_lists, image_lists = lists(loss, torch.tensor([0, 1]))
    assert caption_lists.shape == (2, 4)
    caption_rows, _ = loss.sample_lists(torch.tensor([5, 5, 5]))
    assert caption_rows.numel() == 0


def test_loss_is_softmax_cross_entropy_with_the_positive_first():
    bi_encoder, _ = build_views("bert")
    corpus = swatch_corpus(num_images=4, captions_per_image=1)
    captions, images = columns(bi_encoder, corpus)
    loss = CrossEncoderListwiseLoss(bi_encoder, negatives=2)
    torch.manual_seed(3)
    value = loss([dict(captions), dict(images)], torch.arange(4))
    torch.manual_seed(3)
    caption_rows, image_rows = loss.sample_lists(torch.arange(4))
    with torch.no_grad():
        logits = bi_encoder[0](loss.pair_features(captions, images, caption_rows, image_rows))["scores"].view(4, 3)
    expected = -(logits[:, 0] - logits.logsumexp(dim=1)).mean()
    assert value.item() == pytest.approx(expected.item(), abs=1e-5)
    value.backward()
    assert bi_encoder[0].classifier.weight.grad.abs().sum() > 0


def test_one_image_batch_gives_a_zero_loss_that_still_backpropagates():
    bi_encoder, _ = build_views("bert")
    corpus = swatch_corpus(num_images=1, captions_per_image=3)
    value = CrossEncoderListwiseLoss(bi_encoder)([*columns(bi_encoder, corpus)], torch.zeros(3, dtype=torch.long))
    assert value.item() == 0.0
    value.backward()


def test_rejects_bad_arguments_and_columns():
    with pytest.raises(ValueError, match="negatives >= 1"):
        CrossEncoderListwiseLoss(model=None, negatives=0)
    with pytest.raises(ValueError, match="CrossEncoderListwiseLoss needs a model whose first module"):
        CrossEncoderListwiseLoss(model=None)([{"input_ids": torch.zeros(2, 3)}, {"input_ids": torch.zeros(2, 3)}])


def test_one_mined_negative_leads_the_list_and_random_ones_follow():
    loss = CrossEncoderListwiseLoss(model=None, negatives=3, hard_negatives=1)
    labels = torch.arange(6)
    generator = torch.Generator().manual_seed(0)
    similarities = torch.rand(6, 6, generator=generator)
    seen_random = set()
    for seed in range(20):
        torch.manual_seed(seed)
        caption_lists, image_lists = lists(loss, labels, similarities)
        for row in range(6):
            image_list = caption_lists[row].tolist() == [row] * 4
            negatives = (image_lists if image_list else caption_lists)[row, 1:].tolist()
            scores = (similarities[row] if image_list else similarities[:, row]).clone()
            scores[row] = -1
            assert negatives[0] == scores.argmax().item()
            assert row not in negatives and len(set(negatives)) == 3
            seen_random.add(tuple(negatives[1:]))
    assert len(seen_random) > 10  # the rest of the list is drawn, not fixed


def test_hard_negatives_must_fit_the_list():
    with pytest.raises(ValueError, match="between 0 and negatives=2"):
        CrossEncoderListwiseLoss(model=None, negatives=2, hard_negatives=3)
    assert CrossEncoderListwiseLoss(model=None, negatives=2, hard_negatives=True).num_hard_negatives == 2
