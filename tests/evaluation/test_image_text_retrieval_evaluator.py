from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from sentence_transformers.base.evaluation.evaluator import SentenceEvaluator

from mm_sbert.errors import InvalidInputError
from mm_sbert.evaluation import ImageTextRetrievalEvaluator, image_retrieval_recall, text_retrieval_recall

# ---------------------------------------------------------------- recall against hand-made rankings


def test_image_retrieval_recall_by_hand():
    ranked = [[0, 1, 2], [2, 0, 1], [1, 2, 0], [2, 1, 0]]
    gold = [0, 0, 1, 1]
    # R@1: queries 0 and 2 hit; R@2: all four (query 1 finds image 0 second, query 3 image 1 second)
    assert image_retrieval_recall(ranked, gold, at=(1, 2, 3)) == {1: 0.5, 2: 1.0, 3: 1.0}


def test_text_retrieval_recall_with_five_captions_per_image():
    caption_image_ids = [0] * 5 + [1] * 5 + [2] * 5  # captions 0-4 describe image 0, 5-9 image 1, 10-14 image 2
    ranked = [
        [7, 12, 3, 0, 1, 2, 4, 5, 6, 8],  # image 0: first own caption (3) at rank 3
        [5, 0, 1, 2, 3, 4, 6, 7, 8, 9],  # image 1: own caption at rank 1
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],  # image 2: none of its captions 10-14 in the top 10
    ]
    recall = text_retrieval_recall(ranked, caption_image_ids, query_images=[0, 1, 2], at=(1, 2, 3, 10))
    assert recall == {1: 1 / 3, 2: 1 / 3, 3: 2 / 3, 10: 2 / 3}


def test_text_retrieval_recall_never_counts_distractor_captions():
    caption_image_ids = [0, 1, -1]  # caption 2 is a distractor
    assert text_retrieval_recall([[2, 0], [2, 1]], caption_image_ids, [0, 1], at=(1, 2)) == {1: 0.0, 2: 1.0}


# ---------------------------------------------------------------- evaluator with controlled scores


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


ANGLES = {"i0.jpg": 0, "i1.jpg": 120, "i2.jpg": 240, "c0": 2, "c1": 130, "c2": 125, "c3": 250, "c4": 240, "c5": 10}
IMAGES = ["i0.jpg", "i1.jpg", "i2.jpg"]
CAPTIONS = ["c0", "c1", "c2", "c3", "c4", "c5"]
GOLD = [0, 0, 1, 1, 2, 2]


class StubBiEncoder:
    """Encodes each input to a fixed 2-d direction, so the bi-encoder ranking is known by construction."""

    def __init__(self, angles: dict[str, float]) -> None:
        self.angles = angles

    def encode(self, inputs, normalize_embeddings=False, convert_to_tensor=False, **kwargs):
        return torch.tensor([unit(self.angles[item]) for item in inputs])


class StubCrossEncoder:
    """A perfect cross-encoder: logit 5 for a caption with its own image, 0 otherwise; records its pairs."""

    def __init__(self, pairs_of: dict[str, str]) -> None:
        self.pairs_of, self.pairs = pairs_of, []

    def predict(self, pairs, activation_fn=None, convert_to_tensor=False, **kwargs):
        self.pairs.extend(pairs)
        return torch.tensor([5.0 if self.pairs_of.get(caption) == image else 0.0 for caption, image in pairs])


PERFECT = StubCrossEncoder({caption: IMAGES[image] for caption, image in zip(CAPTIONS, GOLD)})


def evaluator(**kwargs) -> ImageTextRetrievalEvaluator:
    return ImageTextRetrievalEvaluator(IMAGES, CAPTIONS, GOLD, cross_encoder=PERFECT, **kwargs)


def test_be_recall_follows_the_embedding_geometry():
    metrics = evaluator(modes=("be",))(StubBiEncoder(ANGLES))
    # t2i: c0 -> i0, c2 -> i1, c4 -> i2 are right at rank 1; c1 (130°), c3 (250°), c5 (10°) find a wrong image first
    assert metrics["be_t2i_r@1"] == 0.5
    assert metrics["be_t2i_r@5"] == metrics["be_t2i_r@10"] == 1.0  # only 3 images
    # i2t: i0's nearest caption is c0, i1's is c2, i2's is c4: all their own
    assert metrics["be_i2t_r@1"] == 1.0
    assert metrics["be_mean_recall"] == pytest.approx((0.5 + 1 + 1 + 1 + 1 + 1) / 6)


class SlowStubBiEncoder(StubBiEncoder):
    def encode(self, inputs, **kwargs):
        time.sleep(0.05)
        return super().encode(inputs, **kwargs)


class SlowStubCrossEncoder(StubCrossEncoder):
    def predict(self, pairs, **kwargs):
        time.sleep(0.05)
        return super().predict(pairs, **kwargs)


def test_seconds_count_encoding_and_the_cross_encoder_time_of_each_k():
    bi_encoder, cross_encoder = SlowStubBiEncoder(ANGLES), SlowStubCrossEncoder(PERFECT.pairs_of)
    evaluation = ImageTextRetrievalEvaluator(IMAGES, CAPTIONS, GOLD, cross_encoder=cross_encoder, modes=("be",))
    assert 0.1 <= evaluation(bi_encoder)["be_seconds"] < 1.0  # two encode calls (images, captions) of 50 ms
    evaluation.modes = ("coop",)
    results = evaluation.evaluate_top_k(bi_encoder, ks=(1, 3))
    # k=1: encoding (0.1 s) + at least one predict call (0.05 s). k=3 reuses k=1's pairs from the cache and is
    # charged their measured cost again plus its own new pairs: never less than k=1.
    assert 0.15 <= results[1]["coop_seconds"] <= results[3]["coop_seconds"] < 2.0
    assert len(cross_encoder.pairs) == len(set(cross_encoder.pairs)) == 6 * 3


def test_coop_with_a_perfect_reranker_fixes_every_candidate_it_sees():
    metrics = evaluator(modes=("be", "coop"), top_k=3)(StubBiEncoder(ANGLES))
    assert metrics["coop_t2i_r@1"] == 1.0  # all 3 images are candidates and the CE knows the answer
    assert metrics["coop_i2t_r@1"] == 1.0
    # With k = 1 there is nothing to rerank: Coop equals the bi-encoder.
    single = evaluator(modes=("be", "coop"), top_k=1)(StubBiEncoder(ANGLES))
    assert single["coop_t2i_r@1"] == single["be_t2i_r@1"] == 0.5


def test_coop_and_ce_send_caption_image_pairs():
    cross_encoder = StubCrossEncoder(PERFECT.pairs_of)
    ImageTextRetrievalEvaluator(IMAGES, CAPTIONS, GOLD, cross_encoder=cross_encoder, modes=("coop", "ce"), top_k=2)(
        StubBiEncoder(ANGLES)
    )
    assert cross_encoder.pairs and all(
        caption.startswith("c") and image.endswith(".jpg") for caption, image in cross_encoder.pairs
    )
    # coop (6 caption queries x 2 + 3 image queries x 2) and ce (6 x 3) share one pair cache: every one of the
    # 6 x 3 pairs is cross-encoded exactly once (before the cache: 36 predictions for 18 pairs).
    assert len(cross_encoder.pairs) == len(set(cross_encoder.pairs)) == 6 * 3


def test_a_shared_pair_cache_scores_each_pair_once_across_score_modes():
    from mm_sbert.retrieval import PairScoreCache

    cross_encoder, cache = StubCrossEncoder(PERFECT.pairs_of), PairScoreCache()
    results = {}
    for score in ("ce", "combination", "combination_normalized"):
        evaluation = ImageTextRetrievalEvaluator(
            IMAGES,
            CAPTIONS,
            GOLD,
            cross_encoder=cross_encoder,
            modes=("coop",),
            top_k=3,
            score=score,
            pair_score_cache=cache,
        )
        results[score] = evaluation(StubBiEncoder(ANGLES))
    assert len(cross_encoder.pairs) == len(set(cross_encoder.pairs)) == 6 * 3  # the later modes re-used the cache
    assert results["ce"]["coop_t2i_r@1"] == 1.0
    # lam 0.5: for c1 (130°, gold i0) the cosine gap to i1 (0.98 vs -0.64) outweighs the CE's (sigmoid 0.99 vs 0.5),
    # so the combination keeps the bi-encoder's three misses.
    assert results["combination"]["coop_t2i_r@1"] == 0.5
    # Without a shared cache every call scores its pairs again.
    fresh = StubCrossEncoder(PERFECT.pairs_of)
    for _ in range(2):
        ImageTextRetrievalEvaluator(IMAGES, CAPTIONS, GOLD, cross_encoder=fresh, modes=("coop",), top_k=3)(
            StubBiEncoder(ANGLES)
        )
    assert len(fresh.pairs) == 2 * 6 * 3


def test_distractors_enlarge_the_search_space_only():
    angles = ANGLES | {"d0.jpg": 126, "dc": 0}
    metrics = evaluator(modes=("be", "ce"), distractor_images=["d0.jpg"], distractor_captions=["dc"])(
        StubBiEncoder(angles)
    )
    # c2 (125°) now finds the distractor image (126°) before i1 (120°): one more t2i miss, 2 of 6 hit
    assert metrics["be_t2i_r@1"] == pytest.approx(2 / 6)
    # i0 (0°) now finds the distractor caption (0°) before c0 (2°)
    assert metrics["be_i2t_r@1"] == pytest.approx(2 / 3)
    # the queries did not change: still 6 caption queries and 3 image queries, the CE still gets all right
    assert metrics["ce_t2i_r@1"] == metrics["ce_i2t_r@1"] == 1.0


def test_metric_names_primary_metric_and_csv(tmp_path):
    evaluation = evaluator(modes=("be", "coop"), name="toy")
    metrics = evaluation(StubBiEncoder(ANGLES), output_path=str(tmp_path), epoch=1, steps=10)
    assert isinstance(evaluation, SentenceEvaluator)
    assert evaluation.primary_metric == "toy_coop_mean_recall"
    expected = {f"toy_{mode}_{d}_r@{m}" for mode in ("be", "coop") for d in ("t2i", "i2t") for m in (1, 5, 10)}
    expected |= {f"toy_{mode}_{key}" for mode in ("be", "coop") for key in ("mean_recall", "seconds")}
    assert set(metrics) == expected
    lines = (tmp_path / "image_text_retrieval_evaluation_toy_results.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,steps,be_t2i_r@1") and lines[1].startswith("1,10,0.5,")


def test_top_k_ablation_reports_each_k():
    results = evaluator(modes=("coop",)).evaluate_top_k(StubBiEncoder(ANGLES), ks=(1, 2, 3))
    assert sorted(results) == [1, 2, 3]
    assert results[1]["coop_t2i_r@1"] == 0.5  # nothing reranked
    assert results[3]["coop_t2i_r@1"] == 1.0  # every image a candidate
    assert all(result["coop_seconds"] > 0 for result in results.values())


def test_bad_arguments_are_named():
    # InvalidInputError is a ValueError: callers that caught ValueError still do.
    with pytest.raises(InvalidInputError, match="5 caption_image_ids for 6 captions"):
        ImageTextRetrievalEvaluator(IMAGES, CAPTIONS, GOLD[:5])
    with pytest.raises(InvalidInputError, match="not positions in images"):
        ImageTextRetrievalEvaluator(IMAGES, CAPTIONS, [0, 0, 1, 1, 2, 3])
    with pytest.raises(InvalidInputError, match="Unknown modes"):
        ImageTextRetrievalEvaluator(IMAGES, CAPTIONS, GOLD, modes=("bm25",))
    with pytest.raises(InvalidInputError, match="need a cross-encoder"):
        ImageTextRetrievalEvaluator(IMAGES, CAPTIONS, GOLD, modes=("coop",))(StubBiEncoder(ANGLES))
    for recall_at in ((0, -1), (1, 0), (), (1.5,), (True,)):
        with pytest.raises(InvalidInputError, match="recall_at must be integers >= 1"):
            ImageTextRetrievalEvaluator(IMAGES, CAPTIONS, GOLD, recall_at=recall_at)
    for top_k in (0, "3", 2.5):
        with pytest.raises(InvalidInputError, match="top_k must be an integer >= 1"):
            ImageTextRetrievalEvaluator(IMAGES, CAPTIONS, GOLD, top_k=top_k)
    ids = ImageTextRetrievalEvaluator(IMAGES, CAPTIONS, ["a", "a", "b", "b", "c", "c"], image_ids=["a", "b", "c"])
    assert ids.caption_image_ids == GOLD


@pytest.mark.parametrize(
    ("caption_image_ids", "image_ids", "message"),
    [
        (["a", "a", "b", "b", "c", "x"], ["a", "b", "c"], r"caption_image_ids \['x'\] are not in image_ids"),
        # Ids without image_ids= were cast with int(): "a" failed with a bare ValueError, "2" and 1.5 became images.
        (["a", "a", "b", "b", "c", "c"], None, r"\['a', 'a', 'b', 'b', 'c'\] are not positions in images"),
        ([0, 0, 1, 1, "2", 2], None, r"\['2'\] are not positions"),
        ([0, 0, 1, 1, 1.5, 2], None, r"\[1.5\] are not positions"),
    ],
)
def test_unknown_caption_ids_are_refused_by_the_error_root(caption_image_ids, image_ids, message):
    with pytest.raises(InvalidInputError, match=message):
        ImageTextRetrievalEvaluator(IMAGES, CAPTIONS, caption_image_ids, image_ids=image_ids)


def test_integer_positions_of_numpy_and_torch_are_accepted():
    for ids in (np.array(GOLD), torch.tensor(GOLD)):
        assert ImageTextRetrievalEvaluator(IMAGES, CAPTIONS, ids, top_k=np.int64(2)).caption_image_ids == GOLD


def test_recall_functions_and_top_k_ablation_refuse_bad_ranks():
    with pytest.raises(InvalidInputError, match="at must be integers >= 1"):
        image_retrieval_recall([[0, 1]], [0], at=(1.5,))
    with pytest.raises(InvalidInputError, match="at must be integers >= 1"):
        text_retrieval_recall([[0, 1]], [0, 1], query_images=[0], at=(0,))
    with pytest.raises(InvalidInputError, match="ks must be integers >= 1"):
        evaluator(modes=("coop",)).evaluate_top_k(StubBiEncoder(ANGLES), ks=())


# ---------------------------------------------------------------- the real (tiny) model


@pytest.fixture(scope="module")
def tiny_data():
    from conftest import build_views
    from PIL import Image, ImageDraw

    bi_encoder, cross_encoder = build_views()
    with torch.no_grad():
        cross_encoder[0].classifier.weight.mul_(500.0)  # spread the fresh head's logits beyond float noise
    colors = ["red", "green", "blue", "yellow"]
    images = []
    for index, color in enumerate(colors):
        image = Image.new("RGB", (32, 32), color)
        ImageDraw.Draw(image).ellipse([index * 4, index * 4, 20, 20], fill="white")
        images.append(image)
    captions = [f"{adjective} {color} picture" for color in colors for adjective in ("a", "one more")]
    gold = [index for index in range(len(colors)) for _ in range(2)]
    return bi_encoder, cross_encoder, images, captions, gold


def test_coop_over_the_whole_collection_equals_full_cross_encoding(tiny_data):
    bi_encoder, _, images, captions, gold = tiny_data
    # No cross_encoder given: the joint model's own head (bi_encoder.to_cross_encoder()) reranks.
    evaluation = ImageTextRetrievalEvaluator(images, captions, gold, modes=("be", "coop", "ce"), top_k=len(captions))
    metrics = evaluation(bi_encoder)
    for direction in ("t2i", "i2t"):
        for m in (1, 5, 10):
            assert metrics[f"coop_{direction}_r@{m}"] == metrics[f"ce_{direction}_r@{m}"]
            assert 0.0 <= metrics[f"be_{direction}_r@{m}"] <= 1.0
    assert metrics["be_t2i_r@5"] == 1.0  # 4 images: the gold one is always within the top 5


def test_a_joint_model_can_be_evaluated_through_its_cross_encoder_view(tiny_data):
    bi_encoder, cross_encoder, images, captions, gold = tiny_data
    evaluation = ImageTextRetrievalEvaluator(images, captions, gold, modes=("be", "coop"), top_k=3)
    from_bi_encoder = evaluation(bi_encoder)
    from_cross_encoder = evaluation(cross_encoder)  # to_bi_encoder() for the BE, the model itself for the CE
    assert {key: value for key, value in from_bi_encoder.items() if "seconds" not in key} == {
        key: value for key, value in from_cross_encoder.items() if "seconds" not in key
    }


def test_full_cross_encoding_is_refused_above_the_limit_with_an_estimate(tiny_data):
    bi_encoder, cross_encoder, images, captions, gold = tiny_data
    evaluation = ImageTextRetrievalEvaluator(images, captions, gold, cross_encoder, modes=("ce",), ce_max_pairs=10)
    with pytest.raises(ValueError, match=r"32 pairs \(8 captions x 4 images\).*ms per pair.*takes about"):
        evaluation(bi_encoder)


def test_real_flickr8k_images_and_captions_run_through_every_mode(shared_data, tiny_data):
    import json

    bi_encoder, _, _, _, _ = tiny_data
    folder = shared_data / "flickr8k" / "dev"
    with open(folder / "captions.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for _, line in zip(range(6), f)]
    images = [str(folder / record["image"]) for record in records]
    captions = [caption for record in records for caption in record["en"]]
    gold = [index for index, record in enumerate(records) for _ in record["en"]]
    metrics = ImageTextRetrievalEvaluator(images, captions, gold, modes=("be", "coop", "ce"), top_k=6)(bi_encoder)
    assert metrics["be_t2i_r@10"] == metrics["coop_t2i_r@10"] == 1.0  # 6 images: the gold one is always in the top 10
    # top_k covers every image, so Coop's image retrieval is the full cross-encoding's
    assert metrics["coop_t2i_r@1"] == metrics["ce_t2i_r@1"]


def test_the_host_trainer_runs_the_evaluator(tiny_data, tmp_path):
    from conftest import build_views
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    bi_encoder, _ = build_views()  # a fresh model: training must not touch the module-scoped one
    _, _, images, captions, gold = tiny_data
    paths = []
    for index, image in enumerate(images):
        paths.append(str(tmp_path / f"image{index}.png"))
        image.save(paths[-1])
    train = Dataset.from_dict({"caption": captions, "image": [paths[index] for index in gold]})
    evaluation = ImageTextRetrievalEvaluator(images, captions, gold, modes=("be", "coop"), top_k=4, name="toy")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4, report_to=[], save_strategy="no"
    )
    trainer = SentenceTransformerTrainer(
        model=bi_encoder,
        args=args,
        train_dataset=train,
        loss=MultipleNegativesRankingLoss(bi_encoder),
        evaluator=evaluation,
    )
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_toy_be_t2i_r@5"] == 1.0  # 4 images
    assert 0.0 <= metrics["eval_toy_coop_mean_recall"] <= 1.0
    assert evaluation.primary_metric == "toy_coop_mean_recall"


def test_csv_rows_go_only_into_this_evaluators_results_file(tmp_path):
    from mm_sbert.errors import UnsafeOutputError

    evaluation = evaluator(modes=("be",), name="toy")
    evaluation(StubBiEncoder(ANGLES), output_path=str(tmp_path), epoch=1, steps=10)
    evaluation(StubBiEncoder(ANGLES), output_path=str(tmp_path), epoch=2, steps=20)
    results = tmp_path / "image_text_retrieval_evaluation_toy_results.csv"
    assert [line.split(",")[0] for line in results.read_text().splitlines()] == ["epoch", "1", "2"]
    results.write_text("my,own,table\n")
    with pytest.raises(UnsafeOutputError, match="not this evaluator's results file"):
        evaluation(StubBiEncoder(ANGLES), output_path=str(tmp_path), epoch=3, steps=30)
    assert results.read_text() == "my,own,table\n"
