from __future__ import annotations

import pytest
import torch
from conftest import build_views
from training_helpers import (
    one_torch_thread,  # noqa: F401 (autouse fixture)
    swatch_corpus,
)

from mm_sbert.losses import CrossEncoderBCELoss


def columns(bi_encoder, corpus):
    """What the host's collator hands the loss: each column preprocessed on its own."""
    return dict(bi_encoder.preprocess(corpus.captions)), dict(bi_encoder.preprocess(corpus.images))


def test_random_negatives_swap_one_half_and_never_show_the_same_image():
    loss = CrossEncoderBCELoss(model=None, negatives_per_positive=3)
    labels = torch.tensor([0, 0, 1, 2, 2, 3])
    torch.manual_seed(0)
    caption_rows, image_rows, targets = loss.sample_pairs(labels)
    assert caption_rows[:6].tolist() == image_rows[:6].tolist() == list(range(6))
    assert targets.tolist() == [1.0] * 6 + [0.0] * 18
    for k in range(6, 24):
        positive_row = (k - 6) // 3
        c, i = caption_rows[k].item(), image_rows[k].item()
        assert positive_row in (c, i)  # one half of the positive is kept ...
        assert labels[c] != labels[i]  # ... and the other comes from a row showing another image


def test_both_halves_are_replaced_about_equally_often():
    loss = CrossEncoderBCELoss(model=None, negatives_per_positive=1)
    labels = torch.arange(8)
    torch.manual_seed(0)
    replaced_image = 0
    for _ in range(100):
        caption_rows, _, _ = loss.sample_pairs(labels)
        replaced_image += (caption_rows[8:] == torch.arange(8)).sum().item()
    assert 320 < replaced_image < 480  # 800 negatives, half keep the caption


def test_hard_negatives_are_the_most_similar_wrong_rows():
    loss = CrossEncoderBCELoss(model=None, negatives_per_positive=1, hard_negatives=True)
    labels = torch.tensor([0, 1, 2, 0])
    # similarities[caption, image]
    similarities = torch.tensor(
        [
            [0.9, 0.8, 0.1, 0.95],  # caption 0: image 3 shows its own image -> hardest wrong image is 1
            [0.7, 0.9, 0.2, 0.1],  # caption 1: hardest wrong image 0
            [0.3, 0.6, 0.9, 0.5],  # caption 2: hardest wrong image 1
            [0.9, 0.2, 0.4, 0.9],  # caption 3: hardest wrong image 2
        ]
    )
    # hardest wrong caption per image: image 0 -> caption 1 (0.7); 1 -> 0 (0.8); 2 -> 3 (0.4); 3 -> 2 (0.5)
    hardest_image = {0: 1, 1: 0, 2: 1, 3: 2}
    hardest_caption = {0: 1, 1: 0, 2: 3, 3: 2}
    torch.manual_seed(0)
    caption_rows, image_rows, _ = loss.sample_pairs(labels, similarities)
    for row in range(4):
        c, i = caption_rows[4 + row].item(), image_rows[4 + row].item()
        if c == row:
            assert i == hardest_image[row]
        else:
            assert i == row and c == hardest_caption[row]


def test_no_negatives_when_the_batch_shows_one_image():
    loss = CrossEncoderBCELoss(model=None, negatives_per_positive=2)
    caption_rows, image_rows, targets = loss.sample_pairs(torch.tensor([4, 4, 4]))
    assert targets.tolist() == [1.0, 1.0, 1.0]


def test_pair_features_score_like_the_cross_encoder_on_the_same_pairs():
    """No re-tokenizing: the pair built from the two columns is the pair the cross-encoder preprocesses itself."""
    bi_encoder, cross_encoder = build_views("bert")
    corpus = swatch_corpus(num_images=4, captions_per_image=1)
    captions, images = columns(bi_encoder, corpus)
    caption_rows, image_rows = torch.tensor([0, 1, 2, 3, 0, 2]), torch.tensor([0, 1, 2, 3, 3, 1])
    pairs = CrossEncoderBCELoss(bi_encoder).pair_features(captions, images, caption_rows, image_rows)
    with torch.no_grad():
        ours = bi_encoder[0](pairs)["scores"].view(-1)
    reference = cross_encoder.predict(
        [(corpus.captions[c], corpus.images[i]) for c, i in zip(caption_rows.tolist(), image_rows.tolist())],
        activation_fn=torch.nn.Identity(),
        convert_to_tensor=True,
    )
    torch.testing.assert_close(ours, reference.view(-1), atol=1e-5, rtol=1e-4)


def test_pairs_of_a_model_reading_tags_carry_the_image_tags_as_the_cross_encoder_reads_them():
    """A model with add_od_labels reads a pair as [CLS] caption [SEP] tags [SEP]: the training pairs must too (they
    were once the caption and the regions alone, so the cross-encoder was used with words it never saw in training),
    tags cut to the caption's leftover room exactly as preprocess cuts them."""
    # (The tiny XLM-R test tokenizer has no pair template, so it marks no tags' part: BERT's layout only.)
    bi_encoder, cross_encoder = build_views("bert", add_od_labels=True, max_seq_length=14)
    module = bi_encoder[0]
    corpus = swatch_corpus(num_images=4, captions_per_image=1)
    regions = module.featurizer.featurize(corpus.images)
    tag_lists = [["red", "square"], ["blue circle", "green", "star shape", "dog"], None, ["a"] * 12]
    for region, tags in zip(regions, tag_lists):
        region.tags = tags
    # Short, long (tags cut) and overlong (no room left for a tag) captions.
    texts = ["a red square", "a small blue circle beside a green star and a dog", "x " * 30, "one"]
    captions, images = dict(module.preprocess(texts)), dict(module.preprocess(regions))
    caption_rows = torch.tensor([0, 1, 2, 3, 0, 1, 3, 2])
    image_rows = torch.tensor([0, 1, 2, 3, 3, 0, 1, 1])
    pairs = CrossEncoderBCELoss(bi_encoder).pair_features(captions, images, caption_rows, image_rows)
    reference = module.preprocess([(texts[c], regions[i]) for c, i in zip(caption_rows.tolist(), image_rows.tolist())])
    assert int(reference["tag_mask"].sum(dim=1).min()) == 0 and int(reference["tag_mask"].sum(dim=1).max()) > 3
    for key in ("input_ids", "text_mask", "tag_mask", "token_type_ids", "region_features", "region_mask"):
        if key in reference:
            assert torch.equal(pairs[key], reference[key]), key
    with torch.no_grad():
        ours = module(pairs)["scores"].view(-1)
    scores = cross_encoder.predict(
        [(texts[c], regions[i]) for c, i in zip(caption_rows.tolist(), image_rows.tolist())],
        activation_fn=torch.nn.Identity(),
        convert_to_tensor=True,
    )
    torch.testing.assert_close(ours, scores.view(-1), atol=1e-5, rtol=1e-4)


def test_loss_is_bce_over_positives_and_negatives():
    bi_encoder, _ = build_views("bert")
    corpus = swatch_corpus(num_images=4, captions_per_image=1)
    captions, images = columns(bi_encoder, corpus)
    loss = CrossEncoderBCELoss(bi_encoder, negatives_per_positive=1)
    torch.manual_seed(3)
    value = loss([dict(captions), dict(images)], torch.arange(4))
    torch.manual_seed(3)
    caption_rows, image_rows, targets = loss.sample_pairs(torch.arange(4))
    with torch.no_grad():
        logits = bi_encoder[0](loss.pair_features(captions, images, caption_rows, image_rows))["scores"].view(-1)
    probabilities = torch.sigmoid(logits)
    expected = -(targets * probabilities.log() + (1 - targets) * (1 - probabilities).log()).mean()
    assert value.item() == pytest.approx(expected.item(), abs=1e-5)
    value.backward()
    assert bi_encoder[0].classifier.weight.grad.abs().sum() > 0


def test_hard_mining_uses_the_bi_encoder_and_accepts_the_cross_encoder_view():
    bi_encoder, cross_encoder = build_views("bert")
    corpus = swatch_corpus(num_images=4, captions_per_image=1)
    captions, images = columns(bi_encoder, corpus)
    from_bi_encoder = CrossEncoderBCELoss(bi_encoder, hard_negatives=True).mine_similarities(captions, images)
    from_cross_encoder = CrossEncoderBCELoss(cross_encoder, hard_negatives=True).mine_similarities(captions, images)
    with torch.no_grad():
        a = bi_encoder.encode(corpus.captions, convert_to_tensor=True, normalize_embeddings=True)
        b = bi_encoder.encode(corpus.images, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(from_bi_encoder, a @ b.T, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(from_cross_encoder, a @ b.T, atol=1e-5, rtol=1e-4)
    # The whole loss runs with mined negatives, and captions keep their own input columns untouched.
    CrossEncoderBCELoss(bi_encoder, hard_negatives=True)([captions, images], torch.arange(4)).backward()
    assert "token_embeddings" not in captions


def test_rejects_columns_without_multimodal_features():
    loss = CrossEncoderBCELoss(model=None)
    with pytest.raises(ValueError, match="MultimodalTransformer"):
        loss([{"input_ids": torch.zeros(2, 3)}, {"input_ids": torch.zeros(2, 3)}], None)
