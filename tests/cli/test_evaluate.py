from __future__ import annotations

import functools
import json
import os

import pytest
from cli_helpers import run_cli, scene_folder, tiny_model_dir

from mm_sbert.cli.main import main


def test_evaluate_tiny_model_on_a_caption_file(capsys, tmp_path):
    output = tmp_path / "metrics.json"
    code, out, err = run_cli(
        capsys,
        "evaluate",
        "--model",
        tiny_model_dir(),
        "--data",
        f"{scene_folder()}/captions.csv",
        "--modes",
        "be,ce,coop",
        "--top-k",
        "3",
        "--output",
        output,
    )
    assert code == 0, err
    assert "8 images, 16 captions" in out
    metrics = json.loads(output.read_text())
    assert metrics["ce_pairs"] == 16 * 8
    # Coop reranks the BE top-3 in both directions: 16 caption queries x 3 + 8 image queries x 3 pairs.
    assert metrics["coop_pairs"] == 16 * 3 + 8 * 3
    for mode in ("be", "ce", "coop"):
        for direction in ("t2i", "i2t"):
            values = [metrics[f"{mode}_{direction}_r@{k}"] for k in (1, 5, 10)]
            assert all(0 <= v <= 100 for v in values) and values == sorted(values)
    # With 8 images, any caption's image is among the top 10 of a full ranking.
    assert metrics["be_t2i_r@10"] == 100.0 and metrics["ce_t2i_r@10"] == 100.0


def test_evaluate_synthetic_and_bad_modes(capsys):
    code, out, _ = run_cli(capsys, "evaluate", "--model", tiny_model_dir(), "--synthetic", "5", "--modes", "be")
    assert code == 0 and "5 images, 5 captions" in out and "Coop" not in out
    code, _, err = run_cli(capsys, "evaluate", "--model", tiny_model_dir(), "--synthetic", "5", "--modes", "be,xx")
    assert code == 2 and "expected a comma-separated subset of be, ce, coop" in err


def test_evaluate_score_combination_weights_coop_between_ce_and_be(capsys, tmp_path):
    def coop_and_be(*extra) -> tuple[list[float], list[float]]:
        output = tmp_path / "metrics.json"
        argv = ["--data", f"{scene_folder()}/captions.csv", "--modes", "be,coop", "--top-k", "3", "--output", output]
        code, _, err = run_cli(capsys, "evaluate", "--model", tiny_model_dir(), *argv, *extra)
        assert code == 0, err
        metrics = json.loads(output.read_text())
        keys = [f"{d}_r@{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)]
        return [metrics[f"coop_{key}"] for key in keys], [metrics[f"be_{key}"] for key in keys]

    coop_ce, be = coop_and_be()
    assert coop_ce != be, "the tiny model's cross-encoder reorders the BE's top 3 (else this test proves nothing)"
    # lam 1 keeps the BE's order inside the top k (so its R@1; R@5 and R@10 stop at the k = 3 reranked), lam 0 the
    # cross-encoder's (min-max scaling keeps each order)
    coop_be_order, _ = coop_and_be("--score", "combination_normalized", "--lam", "1")
    assert [coop_be_order[0], coop_be_order[3]] == [be[0], be[3]] != [coop_ce[0], coop_ce[3]]
    assert coop_and_be("--score", "combination_normalized", "--lam", "0") == (coop_ce, be)
    code, _, err = run_cli(capsys, "evaluate", "--model", tiny_model_dir(), "--synthetic", "5", "--lam", "-0.1")
    assert code == 2 and "argument --lam: must be in [0, 1], got -0.1" in err


def test_evaluate_from_a_feature_store_gives_the_metrics_of_featurizing(capsys, tmp_path):
    store, data, images = tmp_path / "store", f"{scene_folder()}/captions.csv", f"{scene_folder()}/images"
    code, _, err = run_cli(capsys, "featurize", images, "--output", store, "--model", tiny_model_dir())
    assert code == 0, err
    argv = ["evaluate", "--model", tiny_model_dir(), "--data", data, "--modes", "be,coop", "--top-k", "3"]
    code, _, err = run_cli(capsys, *argv, "--output", tmp_path / "featurized.json")
    assert code == 0, err
    code, _, err = run_cli(capsys, *argv, "--features", store, "--output", tmp_path / "stored.json")
    assert code == 0, err
    featurized, stored = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("featurized", "stored"))
    recalls = [key for key in featurized if "_r@" in key]
    assert {key: stored[key] for key in recalls} == {key: featurized[key] for key in recalls}


def test_evaluate_features_store_lacking_an_image_exits_2_naming_it(capsys, tmp_path):
    store = tmp_path / "store"
    image = f"{scene_folder()}/images/scene_00000.png"
    code, _, err = run_cli(capsys, "featurize", image, "--output", store, "--model", tiny_model_dir())
    assert code == 0, err
    argv = ["evaluate", "--model", tiny_model_dir(), "--data", f"{scene_folder()}/captions.csv", "--modes", "be"]
    code, _, err = run_cli(capsys, *argv, "--features", store)
    assert code == 2 and "lacks 7 image(s) of the evaluation data" in err and "scene_00001.png" in err


def test_evaluate_output_never_replaces_its_data_or_a_file_it_did_not_write(capsys, tmp_path):
    import shutil

    data = tmp_path / "scenes"
    shutil.copytree(scene_folder(), data)
    captions = (data / "captions.csv").read_bytes()
    argv = ["evaluate", "--model", tiny_model_dir(), "--data", data / "captions.csv", "--modes", "be"]
    code, _, err = run_cli(capsys, *argv, "--output", data / "captions.csv")
    assert code == 2 and "an input of the same command" in err
    assert (data / "captions.csv").read_bytes() == captions
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    code, _, err = run_cli(capsys, *argv, "--output", tmp_path / "notes.json")
    assert code == 2 and "a file mm_sbert did not write" in err
    code, _, err = run_cli(capsys, *argv, "--output", tmp_path / "metrics.json")
    assert code == 0, err
    code, _, err = run_cli(capsys, *argv, "--output", tmp_path / "metrics.json")  # its own metrics: replaced
    assert code == 0, err
    code, _, err = run_cli(capsys, *argv, "--output", f"{tiny_model_dir()}/metrics.json")
    assert code == 2 and "an input of the same command" in err


@functools.cache
def _trained(regime: str, grid_size: int = 2, seed: int = 0) -> str:
    """A tiny model trained by `mm-sbert train` for one step per regime: `be` from the tiny joint model; `ce` from
    that bi-encoder, or with ``grid_size`` 3 from a new model on the tiny backbone with its own 3x3 colour grid (its
    new layers drawn with ``seed``)."""
    import tempfile

    from cli_helpers import _SCRATCH

    from mm_sbert import MMSentenceTransformer

    folder = tempfile.mkdtemp(dir=_SCRATCH)
    if grid_size == 2:
        start = tiny_model_dir() if regime == "be" else _trained("be")
        extra = []
    else:
        # Beside the output folder, not inside it: a command's input is never inside its output.
        start = os.path.join(tempfile.mkdtemp(dir=_SCRATCH), "backbone")
        module = MMSentenceTransformer(tiny_model_dir())[0]
        module.backbone.save_pretrained(start)
        module.tokenizer.save_pretrained(start)
        # A fast head: the new head starts near zero, and two steps at the default rate leave its scores equal to
        # the sixth decimal, ranking like any other untrained head.
        extra = ["--featurizer", "color-grid", "--grid-size", str(grid_size), "--new-lr", "0.05", "--seed", seed]
    argv = ["train", regime, "--model", start, "--synthetic", "8", "--steps", "2", "--batch-size", "4", *extra]
    assert main([str(arg) for arg in [*argv, "--output-dir", folder]]) == 0
    return os.path.join(folder, "final")


def _metrics(capsys, tmp_path, *argv) -> dict:
    output = tmp_path / "metrics.json"
    code, out, err = run_cli(capsys, "evaluate", "--data", f"{scene_folder()}/captions.csv", *argv, "--output", output)
    assert code == 0, err
    return json.loads(output.read_text())


def test_a_bi_encoder_is_evaluated_as_one_and_its_untrained_head_is_refused(capsys, tmp_path):
    metrics = _metrics(capsys, tmp_path, "--model", _trained("be"))
    assert "be_t2i_r@1" in metrics and not any(key.startswith("coop") for key in metrics)
    data = f"{scene_folder()}/captions.csv"
    for modes in ("coop", "be,ce"):
        code, _, err = run_cli(capsys, "evaluate", "--model", _trained("be"), "--data", data, "--modes", modes)
        assert code == 2 and "cross-encoder (score head) was never trained" in err, err
    # Asked for explicitly, the untrained head is measured.
    code, _, err = run_cli(
        capsys, "evaluate", "-m", _trained("be"), "--data", data, "--modes", "coop", "--allow-untrained-head"
    )
    assert code == 0, err


def test_a_model_saved_before_the_record_reranks_with_its_head_as_before(capsys, tmp_path):
    metrics = _metrics(capsys, tmp_path, "--model", tiny_model_dir(), "--top-k", "3")
    assert "coop_t2i_r@1" in metrics


def test_a_separately_trained_cross_encoder_reranks_the_bi_encoders_candidates(capsys, tmp_path):
    from mm_sbert import MMCrossEncoder, MMSentenceTransformer
    from mm_sbert.data import ImageCaptionCorpus
    from mm_sbert.evaluation.results_table import evaluate_modes

    argv = ["--model", _trained("be"), "--cross-encoder", _trained("ce", grid_size=3), "--top-k", "3"]
    metrics = _metrics(capsys, tmp_path, *argv, "--modes", "be,coop,ce")
    # The same through the API, each model featurizing the image files itself (the CE with its own 3x3 grid).
    images, captions, ids = ImageCaptionCorpus.from_file(f"{scene_folder()}/captions.csv").evaluation_data()
    expected = evaluate_modes(
        MMSentenceTransformer(_trained("be")),
        images,
        captions,
        ids,
        top_k=3,
        modes=("be", "coop", "ce"),
        cross_encoder=MMCrossEncoder(_trained("ce", grid_size=3)),
    )
    recalls = [key for key in expected if "_r@" in key]
    assert {key: metrics[key] for key in recalls} == pytest.approx({key: expected[key] for key in recalls})
    # Not the bi-encoder's own (untrained) head: evaluated with it, Coop and full cross-encoding differ.
    own = evaluate_modes(MMSentenceTransformer(_trained("be")), images, captions, ids, top_k=3, modes=("coop", "ce"))
    reranked = [key for key in recalls if key.startswith(("coop_", "ce_"))]
    assert [own[key] for key in reranked] != [metrics[key] for key in reranked]


def test_a_cross_encoder_whose_featurizer_the_store_does_not_fit_featurizes_the_images_itself(capsys, tmp_path):
    store = tmp_path / "store"
    code, _, err = run_cli(
        capsys, "featurize", f"{scene_folder()}/images", "--output", store, "--model", _trained("be")
    )
    assert code == 0, err
    argv = ["--model", _trained("be"), "--cross-encoder", _trained("ce", grid_size=3), "--modes", "coop"]
    from_store = _metrics(capsys, tmp_path, *argv, "--top-k", "3", "--features", store)
    from_files = _metrics(capsys, tmp_path, *argv, "--top-k", "3")
    recalls = [key for key in from_files if "_r@" in key]
    assert {key: from_store[key] for key in recalls} == {key: from_files[key] for key in recalls}


def test_a_saturated_cross_encoder_is_flagged_when_combined(capsys, tmp_path):
    import torch

    from mm_sbert import MMSentenceTransformer

    model = MMSentenceTransformer(tiny_model_dir())
    with torch.no_grad():
        model[0].classifier.bias += 12.0  # logits of 11-13: sigmoid 1.000 for every pair
    folder = tmp_path / "saturated"
    model.save(str(folder))
    argv = ["--model", folder, "--modes", "be,coop", "--top-k", "3", "--score", "combination"]
    output = tmp_path / "metrics.json"
    code, out, err = run_cli(capsys, "evaluate", "--data", f"{scene_folder()}/captions.csv", *argv, "--output", output)
    assert code == 0, err
    metrics = json.loads(output.read_text())
    assert metrics["coop_ce_saturated"] == 1.0
    assert "so `--score combination` ranks like the bi-encoder" in out
    for direction in ("t2i", "i2t"):  # R@1 inside the top 3: exactly the bi-encoder's
        assert metrics[f"coop_{direction}_r@1"] == metrics[f"be_{direction}_r@1"]


def test_two_cross_encoders_rerank_as_one_ensemble(capsys, tmp_path):
    from mm_sbert import MMCrossEncoder, MMSentenceTransformer
    from mm_sbert.data import ImageCaptionCorpus
    from mm_sbert.evaluation.results_table import evaluate_modes
    from mm_sbert.retrieval import CrossEncoderEnsemble

    # Two CEs on one 3x3 grid (not the bi-encoder's featurizer: the ensemble featurizes the images for both).
    rerankers = [_trained("ce", grid_size=3), _trained("ce", grid_size=3, seed=1)]
    argv = ["--model", _trained("be"), "--top-k", "3", "--modes", "coop,ce"]
    metrics = _metrics(capsys, tmp_path, *argv, "--cross-encoder", rerankers[0], "--cross-encoder", rerankers[1])
    images, captions, ids = ImageCaptionCorpus.from_file(f"{scene_folder()}/captions.csv").evaluation_data()

    def api(*folders) -> dict:
        members = [MMCrossEncoder(folder) for folder in folders]
        reranker = members[0] if len(members) == 1 else CrossEncoderEnsemble(members)
        bi_encoder = MMSentenceTransformer(_trained("be"))
        return evaluate_modes(bi_encoder, images, captions, ids, top_k=3, modes=("coop", "ce"), cross_encoder=reranker)

    expected, alone = api(*rerankers), [api(folder) for folder in rerankers]
    recalls = [key for key in expected if "_r@" in key]
    assert {key: metrics[key] for key in recalls} == pytest.approx({key: expected[key] for key in recalls})
    for single in alone:  # not either member's ranking
        assert {key: single[key] for key in recalls} != pytest.approx({key: expected[key] for key in recalls})
    # The pair count is the ranking's, as for one reranker (each member scores every pair).
    assert metrics["coop_pairs"] == 16 * 3 + 8 * 3
    # Rerankers that read images differently cannot share one set of regions: refused, naming both.
    data = f"{scene_folder()}/captions.csv"
    mixed = ["--cross-encoder", _trained("ce"), "--cross-encoder", _trained("ce", grid_size=3)]
    code, _, err = run_cli(capsys, "evaluate", "--model", _trained("be"), "--data", data, "--modes", "coop", *mixed)
    assert code == 2 and f"--cross-encoder {_trained('ce', grid_size=3)} featurizes images differently" in err, err
