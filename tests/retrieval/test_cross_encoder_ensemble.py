"""CrossEncoderEnsemble: several cross-encoders rerank by their mean logit, on every path one cross-encoder takes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mm_sbert.errors import IncompatibleModelError, InvalidInputError
from mm_sbert.retrieval import CooperativeRetriever, CrossEncoderEnsemble, rerank

CAPTIONS = ["c0", "c1"]
IMAGES = ["i0.jpg", "i1.jpg", "i2.jpg"]
ROWS = torch.tensor([[0, 1, 2], [2, 0, 1]])
BE = torch.tensor([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]])
# Two rerankers that disagree: each alone puts another image first than their mean does.
FIRST = {("c0", "i0.jpg"): 4.0, ("c0", "i1.jpg"): 3.0, ("c0", "i2.jpg"): 0.0}
SECOND = {("c0", "i0.jpg"): -3.0, ("c0", "i1.jpg"): 1.5, ("c0", "i2.jpg"): 2.0}
for table in (FIRST, SECOND):
    table.update({("c1", image): 0.0 for image in IMAGES})


class TableCrossEncoder:
    activation_fn = torch.nn.Sigmoid()

    def __init__(self, logits: dict) -> None:
        self.logits = logits

    def predict(self, pairs, activation_fn=None, convert_to_tensor=False, **kwargs):
        scores = torch.tensor([self.logits[tuple(pair)] for pair in pairs])
        return (activation_fn or self.activation_fn)(scores)


def test_the_ensemble_ranks_by_the_mean_logit_where_each_member_ranks_otherwise():
    members = [TableCrossEncoder(FIRST), TableCrossEncoder(SECOND)]
    alone = [rerank(member, CAPTIONS, IMAGES, ROWS, BE).rows[0].tolist() for member in members]
    result = rerank(CrossEncoderEnsemble(members), CAPTIONS, IMAGES, ROWS, BE)
    assert alone == [[0, 1, 2], [2, 1, 0]]
    assert result.rows[0].tolist() == [1, 2, 0]  # means 2.25, 1.0, 0.5
    assert result.ce_scores[0].tolist() == [2.25, 1.0, 0.5]
    # Combined with the bi-encoder's score like any cross-encoder's logit.
    combined = rerank(CrossEncoderEnsemble(members), CAPTIONS, IMAGES, ROWS, BE, score="combination", lam=0.5)
    assert combined.ce_scores.sort(dim=1).values.tolist() == result.ce_scores.sort(dim=1).values.tolist()


def test_predict_averages_logits_then_applies_the_activation_like_the_host():
    ensemble = CrossEncoderEnsemble([TableCrossEncoder(FIRST), TableCrossEncoder(SECOND)])
    pairs = [("c0", "i0.jpg"), ("c0", "i1.jpg")]
    logits = ensemble.predict(pairs, activation_fn=torch.nn.Identity(), convert_to_tensor=True)
    assert isinstance(logits, torch.Tensor) and logits.tolist() == [0.5, 2.25]
    probabilities = ensemble.predict(pairs)
    assert isinstance(probabilities, np.ndarray)
    np.testing.assert_allclose(probabilities, torch.sigmoid(torch.tensor([0.5, 2.25])).numpy())


@pytest.fixture(scope="module")
def tiny_views():
    from conftest import build_views

    bi_encoder, first = build_views(seed=0)
    _, second = build_views(seed=1)
    for cross_encoder in (first, second):
        with torch.no_grad():  # the fresh heads' logits are ~1e-4 apart: spread them past float noise
            cross_encoder[0].classifier.weight.mul_(500.0)
    return bi_encoder, first, second


def _images() -> list[Image.Image]:
    colors = ["red", "green", "blue", "yellow", "white", "black"]
    return [Image.new("RGB", (32, 32), color) for color in colors]


def _logits_by_pair(result) -> dict[tuple[int, int], float]:
    """``(query, candidate row) -> logit`` of a :class:`Reranked`."""
    return {
        (query, row): logit
        for query, (rows, logits) in enumerate(zip(result.rows.tolist(), result.ce_scores.tolist()))
        for row, logit in zip(rows, logits)
    }


def test_real_cross_encoders_rerank_on_their_fast_path_and_predict_agrees(tiny_views):
    _, first, second = tiny_views
    captions, images = ["a red square", "a blue sky"], _images()
    rows = torch.tensor([[0, 1, 2, 3], [5, 4, 3, 2]])
    ensemble = CrossEncoderEnsemble([first, second])
    together = _logits_by_pair(rerank(ensemble, captions, images, rows))
    alone = [_logits_by_pair(rerank(member, captions, images, rows)) for member in (first, second)]
    # The mean of the members' own rerank logits, bit for bit.
    assert together == {pair: torch.tensor([alone[0][pair], alone[1][pair]]).mean().item() for pair in alone[0]}
    assert together != alone[0] and together != alone[1]
    # predict() goes through the members' predict: the same logits up to float noise.
    pairs = [(captions[query], images[row]) for query, row in together]
    predicted = ensemble.predict(pairs, activation_fn=torch.nn.Identity(), convert_to_tensor=True)
    torch.testing.assert_close(predicted, torch.tensor(list(together.values())), atol=1e-4, rtol=0)
    # One pair in, one score out, as the host's predict.
    single = ensemble.predict(pairs[0], activation_fn=torch.nn.Identity())
    assert np.ndim(single) == 0 and single == pytest.approx(predicted[0].item(), abs=1e-4)


def test_a_cooperative_retriever_reranks_with_the_ensemble(tiny_views):
    bi_encoder, first, second = tiny_views
    images = _images()
    scores = []
    for reranker in (first, second, CrossEncoderEnsemble([first, second])):
        retriever = CooperativeRetriever(bi_encoder, reranker, top_k=6)
        retriever.index(images)
        scores.append({hit.corpus_id: hit.ce_score for hit in retriever.search("a green circle")})
    assert scores[2] == pytest.approx({row: (scores[0][row] + scores[1][row]) / 2 for row in scores[0]}, abs=1e-6)


@pytest.mark.parametrize(
    "members, message",
    [
        ([], "at least two cross-encoders, got 0"),
        ([TableCrossEncoder(FIRST)], "at least two cross-encoders, got 1"),
        ([TableCrossEncoder(FIRST), "runs/ce"], "cross_encoders[1] is a str, not a cross-encoder"),
        ("runs/ce", "must be a list of cross-encoders, got str"),
    ],
)
def test_bad_members_are_refused_naming_them(members, message):
    with pytest.raises(InvalidInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        CrossEncoderEnsemble(members)


def test_names_must_name_every_member():
    with pytest.raises(InvalidInputError, match="Got 1 names for 2 cross-encoders"):
        CrossEncoderEnsemble([TableCrossEncoder(FIRST), TableCrossEncoder(SECOND)], names=["ce_a"])


def test_an_ensemble_inside_an_ensemble_is_refused():
    pair = CrossEncoderEnsemble([TableCrossEncoder(FIRST), TableCrossEncoder(SECOND)])
    with pytest.raises(InvalidInputError, match=r"cross_encoders\[0\] is a CrossEncoderEnsemble"):
        CrossEncoderEnsemble([pair, TableCrossEncoder(FIRST)])


def test_members_that_featurize_images_differently_are_refused(tiny_views):
    from conftest import build_views

    _, first, _ = tiny_views
    _, regions_only = build_views(featurizer=False)
    with pytest.raises(IncompatibleModelError, match=r"cross_encoders\[1\] featurizes images differently"):
        CrossEncoderEnsemble([first, regions_only])
    with pytest.raises(IncompatibleModelError, match="runs/regions featurizes images differently from runs/grid"):
        CrossEncoderEnsemble([first, regions_only], names=["runs/grid", "runs/regions"])


@pytest.mark.parametrize("not_a_reranker", [[TableCrossEncoder(FIRST), TableCrossEncoder(SECOND)], "runs/ce", 3])
def test_what_cannot_rerank_is_refused_where_it_enters(not_a_reranker, tiny_views):
    from mm_sbert import ImageTextRetrievalEvaluator

    bi_encoder, _, _ = tiny_views
    hint = "CrossEncoderEnsemble" if isinstance(not_a_reranker, list) else "not a cross-encoder with predict"
    with pytest.raises(InvalidInputError, match=hint):
        rerank(not_a_reranker, CAPTIONS, IMAGES, ROWS, BE)
    with pytest.raises(InvalidInputError, match=hint):
        CooperativeRetriever(bi_encoder, not_a_reranker)
    with pytest.raises(InvalidInputError, match=hint):
        ImageTextRetrievalEvaluator(_images()[:2], ["a", "b"], [0, 1], cross_encoder=not_a_reranker)
