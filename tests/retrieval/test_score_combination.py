from __future__ import annotations

import pytest
import torch

from mm_sbert.retrieval import combine_scores, min_max_normalize

BE = torch.tensor([[0.2, 0.5, 0.9]])
CE = torch.tensor([[0.0, 2.0, -2.0]])  # logits: sigmoid = 0.5, 0.880797, 0.119203


def test_ce_and_be_modes_pass_scores_through():
    assert torch.equal(combine_scores(BE, CE, "ce"), CE)
    assert torch.equal(combine_scores(BE, None, "be"), BE)


def test_combination_is_lambda_weighted_sum_with_sigmoid_of_the_logit():
    # 0.5 * be + 0.5 * sigmoid(ce), by hand
    expected = torch.tensor([[0.5 * 0.2 + 0.5 * 0.5, 0.5 * 0.5 + 0.5 * 0.880797, 0.5 * 0.9 + 0.5 * 0.119203]])
    torch.testing.assert_close(combine_scores(BE, CE, "combination", lam=0.5), expected, atol=1e-6, rtol=0)
    # lam = 0.25 weights the cross-encoder 3:1
    expected = torch.tensor([[0.25 * 0.2 + 0.75 * 0.5, 0.25 * 0.5 + 0.75 * 0.880797, 0.25 * 0.9 + 0.75 * 0.119203]])
    torch.testing.assert_close(combine_scores(BE, CE, "combination", lam=0.25), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(combine_scores(BE, CE, "combination", lam=1.0), BE)


def test_combination_normalized_min_max_scales_both_over_the_candidates():
    # be -> [0, 0.3/0.7, 1]; sigmoid(ce) -> [(0.5-0.119203)/0.761594, 1, 0] = [0.5, 1, 0]
    expected = torch.tensor([[0.5 * 0 + 0.5 * 0.5, 0.5 * (0.3 / 0.7) + 0.5 * 1.0, 0.5 * 1.0 + 0.5 * 0.0]])
    torch.testing.assert_close(combine_scores(BE, CE, "combination_normalized"), expected, atol=1e-6, rtol=0)
    # The normalised variant reorders the candidates here: plain CE ranks 1 > 0 > 2, normalised 1 > 2 > 0.
    assert combine_scores(BE, CE, "ce").argsort(descending=True).tolist() == [[1, 0, 2]]
    assert combine_scores(BE, CE, "combination_normalized").argsort(descending=True).tolist() == [[1, 2, 0]]


def test_combination_normalized_keeps_confident_logits_apart():
    # float32 sigmoids of these logits collapse onto fewer values; the combination must not tie them
    be = torch.zeros(1, 4)
    ce = torch.tensor([[15.5, 15.8, 16.1, 16.4]])
    probs = torch.sigmoid(ce.double())
    expected = ((probs - probs.min()) / (probs.max() - probs.min())).float()
    assert len(set(torch.sigmoid(ce)[0].tolist())) < 4, "the float32 sigmoid really does tie them"
    torch.testing.assert_close(combine_scores(be, ce, "combination_normalized", lam=0.0), expected, atol=1e-6, rtol=0)


def test_min_max_normalize_rows_independently_and_constant_rows_become_zero():
    scores = torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])
    assert min_max_normalize(scores).tolist() == [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="Unknown score mode 'rank'"):
        combine_scores(BE, CE, "rank")
    with pytest.raises(ValueError, match="lam must be in"):
        combine_scores(BE, CE, "combination", lam=1.5)
    with pytest.raises(ValueError, match="needs cross-encoder scores"):
        combine_scores(BE, None, "combination")


def test_saturated_share_counts_the_queries_whose_probabilities_all_round_alike():
    import torch

    from mm_sbert.retrieval.score_combination import saturated_share

    logits = torch.tensor([[10.2, 11.0, 12.1], [-1.0, 0.0, 2.0], [15.0, 15.0, 16.0], [0.0, 0.0, 0.0]])
    assert saturated_share(logits) == 0.75  # rows 0, 2 (sigmoid ~1) and 3 (equal logits)
    assert saturated_share(torch.empty(0, 3)) == 0.0
