from __future__ import annotations

import json

from cli_helpers import run_cli, scene_folder, tiny_model_dir


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
