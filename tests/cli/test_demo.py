from __future__ import annotations

import json
import math
import re

import pytest
from cli_helpers import run_cli
from PIL import Image

from mm_sbert import ColorBlobFeaturizer, MMCrossEncoder, MMSentenceTransformer, SyntheticScenes
from mm_sbert.demo.recipe import FAMILIES, QUICK
from mm_sbert.demo.report import real_photos_outcome, verdict

ROW = re.compile(r"^(BE|CE|Coop \(k=20\))\s+" + r"\s+".join([r"(\d+\.\d)"] * 6) + r"\s+(\d+\.\d\d)\s+(\d+)$")


def test_quick_demo_prints_the_comparison_table_and_saves_plot_results_and_model(capsys, caplog, recwarn, tmp_path):
    code, out, err = run_cli(capsys, "demo", "--quick", "--output-dir", tmp_path, "--threads", "1")
    assert code == 0, err
    # Only what the demo promises (and mm_sbert's ownership mark), no empty trainer folder; no warnings a user
    # cannot act on.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".mm_sbert_owner.json") == [
        "cross_encoder",
        "demo_results.json",
        "demo_results.png",
        "held_out_images",
        "model",
    ]
    assert not [str(w.message) for w in recwarn if "pin_memory" in str(w.message)]
    assert "does not match the number of train datasets" not in caplog.text + err

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
    assert out.rstrip().endswith("\n".join(real_photos_outcome()))
    # The printed verdict is verdict() of the saved metrics. On 12 images Coop (k=20) cross-encodes 12 x 12 pairs
    # in each direction, full CE the same 144 pairs once: Coop costs more than half of CE, so the run cannot show the
    # paper's result, whatever the recall.
    assert "does NOT show" in out and "Coop took more than half of CE's time" in out and "As in the paper" not in out
    assert "How this demo differs from the paper's recipe" in out and "starts from the trained bi-encoder" in out

    results = json.loads((tmp_path / "demo_results.json").read_text())
    assert results["settings"]["eval_images"] == 12
    latency = {
        mode: {int(n): s for n, s in sizes.items()} for mode, sizes in results["latency_per_query_seconds"].items()
    }
    expected = verdict(results["metrics"], latency=latency)
    assert expected[0] in out and expected[1] in out and expected[2] in out  # mean recall, time share, latency
    assert results["metrics"]["coop_seconds"] > 0.5 * results["metrics"]["ce_seconds"]
    assert abs(results["metrics"]["ce_t2i_r@1"] - float(rows["CE"][0])) < 0.051
    # The loss of the cross-encoder steps (the trainer's objective history): a real loss near chance this early
    # (listwise over the positive and 3 negatives: ln 4).
    assert results["cross_encoder_chance_loss"] == pytest.approx(math.log(4))
    assert 0.5 * math.log(4) < results["final_cross_encoder_loss"] < 1.5 * math.log(4)
    # --quick: 3 bi-encoder steps, then 2 steps of the cross-encoder started from it.
    assert results["objective_steps"] == {"bi_encoder": 3, "cross_encoder": 2}
    assert (tmp_path / "demo_results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((tmp_path / "held_out_images").glob("*.png"))) == 12
    # "Try it": the first held-out caption, with its scene's rank under Coop and under the bi-encoder alone.
    try_it = results["try_it"]
    assert (
        try_it["caption"]
        == SyntheticScenes(
            12, 1, seed=1, exclude=SyntheticScenes(24, 5, seed=0, families=FAMILIES).signatures, families=FAMILIES
        ).captions[0]
    )
    assert 1 <= try_it["ranks"]["coop"] <= 12 and 1 <= try_it["ranks"]["be"] <= 12
    assert (
        f'"{try_it["caption"]}": its scene (scene_00000.png) ranks {try_it["ranks"]["coop"]} with Coop, '
        f"{try_it['ranks']['be']} with the bi-encoder alone."
    ) in out
    assert (
        f'mm-sbert search {tmp_path / "index"} "{try_it["caption"]}" --cross-encoder {tmp_path / "cross_encoder"}'
        in out
    )

    # The bi-encoder and the separate cross-encoder load as the host's classes, and the cross-encoder scores the
    # held-out scene as the run's reranking did.
    bi_encoder = MMSentenceTransformer(str(tmp_path / "model"))
    cross_encoder = MMCrossEncoder(str(tmp_path / "cross_encoder"))
    assert bi_encoder[0].backbone.config.num_hidden_layers == 1
    assert (bi_encoder[0].trained_views, cross_encoder[0].head_input) == (["bi_encoder"], "token_match")
    assert cross_encoder.predict(
        [("a red circle on the left", str(tmp_path / "held_out_images" / "scene_00000.png"))]
    ).shape == (1,)


def test_quick_demo_with_object_regions_and_binding_families(capsys, tmp_path):
    code, out, err = run_cli(
        capsys,
        "demo",
        "--quick",
        "--regions",
        "objects",
        "--families",
        "binding",
        "--output-dir",
        tmp_path,
        "--threads",
        "1",
    )
    assert code == 0, err
    assert "one region per object (ColorBlobFeaturizer)" in out and "3x3 colour grid" not in out
    settings = json.loads((tmp_path / "demo_results.json").read_text())["settings"]
    assert (settings["regions"], settings["families"]) == ("objects", "binding")
    assert "only in which colour, shape or slot belongs to which object" in out
    model = MMSentenceTransformer(str(tmp_path / "model"))
    assert isinstance(model[0].featurizer, ColorBlobFeaturizer)
    # The saved model featurizes a held-out scene into its objects: the whole image plus one region per object.
    families = {"families": "binding", "family_size": QUICK["family_size"]}
    train = SyntheticScenes(QUICK["train_images"], captions_per_image=5, seed=0, **families)
    held_out = SyntheticScenes(
        QUICK["eval_images"], captions_per_image=1, seed=1, exclude=train.signatures, **families
    )
    (regions,) = model[0].featurizer([Image.open(tmp_path / "held_out_images" / "scene_00000.png")])
    assert regions.num_regions == 1 + len(held_out.scenes[0].objects)


def test_demo_rejects_bad_settings(capsys, tmp_path):
    code, _, err = run_cli(capsys, "demo", "--quick", "--bi-encoder-steps", "0", "--output-dir", tmp_path)
    assert code == 2 and "--bi-encoder-steps must be >= 1" in err
    code, _, err = run_cli(capsys, "demo", "--quick", "--cross-encoder-steps", "-1", "--output-dir", tmp_path)
    assert code == 2 and "--cross-encoder-steps must be >= 1" in err
    # The recipe (library code) raises ValueError; the command turns it into its usage error.
    code, _, err = run_cli(capsys, "demo", "--quick", "--layers", "7", "--output-dir", tmp_path)
    assert code == 2 and "--layers must be between 1 and 6, got 7" in err
