from __future__ import annotations

import json
import math
import re

import pytest
from cli_helpers import run_cli
from PIL import Image

from mm_sbert import ColorBlobFeaturizer, MMCrossEncoder, MMSentenceTransformer, SyntheticScenes
from mm_sbert.evaluation.demo_report import verdict
from mm_sbert.training import JointTrainer, demo_recipe
from mm_sbert.training.demo_recipe import MODULE_KWARGS, QUICK, build_demo_model

ROW = re.compile(r"^(BE|CE|Coop \(k=20\))\s+" + r"\s+".join([r"(\d+\.\d)"] * 6) + r"\s+(\d+\.\d\d)\s+(\d+)$")


def test_quick_demo_prints_the_comparison_table_and_saves_plot_results_and_model(capsys, tmp_path):
    from mm_sbert.evaluation.demo_report import REAL_PHOTOS_OUTCOME

    code, out, err = run_cli(capsys, "demo", "--quick", "--output-dir", tmp_path, "--threads", "1")
    assert code == 0, err

    rows = {m.group(1): m.groups()[1:] for line in out.splitlines() if (m := ROW.match(line.strip()))}
    assert set(rows) == {"BE", "CE", "Coop (k=20)"}
    for values in rows.values():
        recalls = [float(v) for v in values[:6]]
        assert all(0.0 <= r <= 100.0 for r in recalls)
        # R@1 <= R@5 <= R@10 in each direction
        assert recalls[0] <= recalls[1] <= recalls[2] and recalls[3] <= recalls[4] <= recalls[5]
        assert float(values[6]) > 0.0
    # 12 held-out images with one caption each: CE scores every pair; k=20 >= 12, so Coop reranks everything too.
    assert int(rows["CE"][7]) == 144 and int(rows["BE"][7]) == 0
    assert rows["Coop (k=20)"][:6] == rows["CE"][:6]
    assert out.rstrip().endswith("\n".join(REAL_PHOTOS_OUTCOME))
    # The printed verdict is verdict() of the saved metrics. On 12 images Coop (k=20) cross-encodes 12 x 12 pairs
    # in each direction, full CE the same 144 pairs once: Coop costs more than half of CE, so the run cannot show the
    # paper's result, whatever the recall.
    assert "does NOT show" in out and "Coop took more than half of CE's time" in out and "As in the paper" not in out
    assert "How this demo differs from the paper's recipe" in out and "warm-up" in out

    results = json.loads((tmp_path / "demo_results.json").read_text())
    assert results["settings"]["eval_images"] == 12
    latency = {
        mode: {int(n): s for n, s in sizes.items()} for mode, sizes in results["latency_per_query_seconds"].items()
    }
    expected = verdict(results["metrics"], latency=latency)
    assert expected[0] in out and expected[1] in out and expected[2] in out  # mean recall, time share, latency
    assert results["metrics"]["coop_seconds"] > 0.5 * results["metrics"]["ce_seconds"]
    assert abs(results["metrics"]["ce_t2i_r@1"] - float(rows["CE"][0])) < 0.051
    # The loss of the cross-encoder steps (JointTrainer's objective history): a real loss near chance this early
    # (listwise over the positive and 3 negatives: ln 4).
    assert results["cross_encoder_chance_loss"] == pytest.approx(math.log(4))
    assert 0.5 * math.log(4) < results["final_cross_encoder_loss"] < 1.5 * math.log(4)
    # --quick: 1 bi-encoder warm-up step, then 2 joint rounds of (bi-encoder step, cross-encoder step).
    assert results["objective_steps"] == {"bi_encoder": 3, "cross_encoder": 2}
    assert (tmp_path / "demo_results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((tmp_path / "held_out_images").glob("*.png"))) == 12

    # The saved model is a joint folder: both views load from it.
    bi_encoder = MMSentenceTransformer(str(tmp_path / "model"))
    cross_encoder = MMCrossEncoder(str(tmp_path / "model"))
    assert bi_encoder[0].backbone.config.num_hidden_layers == 1
    assert cross_encoder.predict(
        [("a red circle on the left", str(tmp_path / "held_out_images" / "scene_00000.png"))]
    ).shape == (1,)


def test_quick_demo_with_object_regions_trains_and_saves_the_blob_featurizer(capsys, tmp_path):
    code, out, err = run_cli(
        capsys, "demo", "--quick", "--regions", "objects", "--output-dir", tmp_path, "--threads", "1"
    )
    assert code == 0, err
    assert "one region per object (ColorBlobFeaturizer)" in out and "3x3 colour grid" not in out
    assert json.loads((tmp_path / "demo_results.json").read_text())["settings"]["regions"] == "objects"
    model = MMSentenceTransformer(str(tmp_path / "model"))
    assert isinstance(model[0].featurizer, ColorBlobFeaturizer)
    # The saved model featurizes a held-out scene into its objects: the whole image plus one region per object.
    train = SyntheticScenes(QUICK["train_images"], captions_per_image=5, seed=0)
    held_out = SyntheticScenes(QUICK["eval_images"], captions_per_image=1, seed=1, exclude=train.signatures)
    (regions,) = model[0].featurizer([Image.open(tmp_path / "held_out_images" / "scene_00000.png")])
    assert regions.num_regions == 1 + len(held_out.scenes[0].objects)


def test_demo_rejects_bad_settings(capsys, tmp_path):
    code, _, err = run_cli(capsys, "demo", "--quick", "--steps", "0", "--output-dir", tmp_path)
    assert code == 2 and "--steps must be >= 1" in err
    code, _, err = run_cli(capsys, "demo", "--quick", "--warmup-steps", "-1", "--output-dir", tmp_path)
    assert code == 2 and "--warmup-steps must be >= 0" in err
    # The recipe (library code) raises ValueError; the command turns it into its usage error.
    code, _, err = run_cli(capsys, "demo", "--quick", "--layers", "7", "--output-dir", tmp_path)
    assert code == 2 and "--layers must be between 1 and 6, got 7" in err


def metrics_for(be: float, coop: float, ce: float, coop_seconds: float = 1.0, ce_seconds: float = 10.0):
    metrics = {"coop_seconds": coop_seconds, "ce_seconds": ce_seconds}
    for mode, value in (("be", be), ("coop", coop), ("ce", ce)):
        metrics.update({f"{mode}_{d}_r@{k}": value for d in ("t2i", "i2t") for k in (1, 5, 10)})
    return metrics


def test_verdict_says_whether_the_run_shows_the_paper_result():
    shown = verdict(metrics_for(be=80.0, coop=81.0, ce=82.0), [0.4] * 10, math.log(4))
    assert "As in the paper" in shown[2] and "differ by +1.0 points, within the noise" in shown[3]
    assert "it learned" in shown[4]
    below = verdict(metrics_for(be=80.0, coop=70.0, ce=60.0), [1.38] * 10, math.log(4))
    assert "does NOT show" in below[2] and "cross-encoder is weaker" in below[2]
    assert "has not learned yet" in below[3] and not any("within the noise" in line for line in below)
    slow = verdict(metrics_for(be=80.0, coop=81.0, ce=82.0, coop_seconds=6.0, ce_seconds=10.0))
    assert "does NOT show" in slow[2] and "more than half of CE's time" in slow[2]
    latency = {"be": {100: 0.01, 10_000: 0.02}, "coop": {100: 0.05, 10_000: 0.06}, "ce": {100: 0.2, 10_000: 20.0}}
    with_latency = verdict(metrics_for(be=80.0, coop=81.0, ce=82.0), latency=latency)
    assert "over 10,000 images: Coop 0.06 s, full CE 20 s" in with_latency[2]
    assert "As in the paper" in with_latency[3]


def test_demo_model_fuses_late_when_it_has_a_layer_to_fuse_in():
    two_layers = build_demo_model(96, 2, **MODULE_KWARGS)[0]
    assert len(two_layers.backbone.encoder.layer) == 2 and two_layers.fusion_layer == MODULE_KWARGS["fusion_layer"]
    # --layers 1 (and --quick) keeps one layer, which must attend across text and regions.
    assert build_demo_model(96, 1, **MODULE_KWARGS)[0].fusion_layer == 0
    with pytest.raises(ValueError, match="layers must be between 1 and 6, got 0"):
        build_demo_model(96, 0)


def test_the_recipe_gives_the_new_layers_their_learning_rate_through_the_host_mapping(tmp_path, monkeypatch):
    model = build_demo_model(32, 1, **MODULE_KWARGS)
    created = []

    def train_captures_optimizer(trainer, *args, **kwargs):
        created.append(trainer)
        trainer.create_optimizer()

    monkeypatch.setattr(JointTrainer, "train", train_captures_optimizer)
    scenes = SyntheticScenes(4, captions_per_image=2, seed=0, image_size=32)
    demo_recipe.fine_tune(model, scenes, str(tmp_path), steps=1, batch_size=4, seed=0, learning_rate=1e-4,
                          new_layer_learning_rate=1e-2, show_progress_bar=False)  # fmt: skip
    assert len(created) == 1
    learning_rates = {
        id(parameter): group["lr"] for group in created[0].optimizer.param_groups for parameter in group["params"]
    }
    module = model[0]
    new = {
        id(p) for layer in (module.img_embedding, module.img_layer_norm, module.classifier) for p in layer.parameters()
    }
    assert len(learning_rates) == len(list(model.parameters()))
    assert {learning_rates[i] for i in new} == {1e-2}
    assert {rate for i, rate in learning_rates.items() if i not in new} == {1e-4}


def test_closing_lines_quote_the_measured_real_photo_outcome():
    import json
    from pathlib import Path

    from mm_sbert.evaluation.demo_report import REAL_PHOTOS_OUTCOME

    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    splits = {
        "split 1": ("flickr8k_en_sep_sim_crossfit_unseen.json", "flickr8k_en_joint_sim_ratio13_crossfit.json"),
        "split 2": (
            "flickr8k_en_sep_crossfit_image_part_1000.json",
            "flickr8k_en_joint_crossfit_image_part_1000.json",
        ),
        "split 2, seed 7": (
            "flickr8k_en_sep_crossfit_image_part_1000_seed7.json",
            "flickr8k_en_joint_crossfit_image_part_1000_seed7.json",
        ),
    }
    lines = {line.split(" (")[0]: line for line in REAL_PHOTOS_OUTCOME if line.startswith("split ")}
    assert sorted(lines) == sorted(splits)
    pairs = []
    for split, names in splits.items():
        rows = {}
        for name in names:
            for row in json.loads((results / name).read_text(encoding="utf-8"))["tables"]["table1"]:
                rows[row["mode"]] = row
        line = lines[split]
        for mode in ("BE", "Sep+Coop", "Joint+Coop"):
            quoted = f"{mode} {rows[mode]['t2i_r@1']} / {rows[mode]['i2t_r@1']}"
            assert quoted in line, (split, quoted)
        assert f"R@10 {rows['BE']['t2i_r@10']} / {rows['BE']['i2t_r@10']}" in line
        for mode in ("Sep+Coop", "Joint+Coop"):
            pairs += [(rows[mode][f"{d}_r@1"], rows["BE"][f"{d}_r@1"]) for d in ("t2i", "i2t")]
    # The verdict follows the numbers: Coop below BE at R@1 everywhere is "does NOT beat", at or above it everywhere
    # "beats", and anything between "level".
    text = " ".join(REAL_PHOTOS_OUTCOME)
    coop_below, coop_above = all(c < b for c, b in pairs), all(c >= b for c, b in pairs)
    assert ("does NOT beat" in text) == coop_below
    assert ("reranking beats retrieval" in text) == coop_above
    assert ("is level with retrieval" in text) == (not coop_below and not coop_above)
