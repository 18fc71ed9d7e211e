"""A user's whole walk through the command line on a few real photos, commands only, as docs/training.md shows it:
featurize -> train a bi-encoder -> train a cross-encoder from it -> evaluate Sep+Coop -> index from the store ->
search with the separate reranker. Tiny models (the tests' own backbone) keep it to seconds; the photos and captions
are 8 images of Flickr8k dev from the shared data (skipped where it is absent)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import run_cli, tiny_model_dir
from conftest import SHARED_DATA

from mm_sbert import MMSentenceTransformer
from mm_sbert.cli.main import build_parser, main

PHOTOS = 8


def _options(command: str) -> set[str]:
    parser = build_parser()
    subparsers = next(action for action in parser._actions if hasattr(action, "choices") and action.choices)
    return {option for action in subparsers.choices[command]._actions for option in action.option_strings}


@pytest.fixture(scope="module")
def walk(tmp_path_factory) -> dict[str, Path]:
    """Steps 1-3 of the walk on a user's folder of 8 Flickr8k dev photos and their captions.jsonl (one image a line,
    5 English captions): featurize, train a bi-encoder from a backbone, train a cross-encoder from it."""
    source = SHARED_DATA / "flickr8k" / "dev"
    if not (source / "captions.jsonl").is_file():
        pytest.skip(f"no Flickr8k dev split at {source} (set MM_SBERT_SHARED_DATA)")
    root = tmp_path_factory.mktemp("walk")
    photos = root / "photos"
    (photos / "images").mkdir(parents=True)
    lines = []
    with open(source / "captions.jsonl", encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            shutil.copy(source / entry["image"], photos / entry["image"])
            lines.append(json.dumps({"image": entry["image"], "en": entry["en"]}))
            if len(lines) == PHOTOS:
                break
    (photos / "captions.jsonl").write_text("\n".join(lines) + "\n")
    # A text backbone folder (the tests' tiny random BERT) to start the new model from, as `--model` takes one.
    backbone = root / "backbone"
    module = MMSentenceTransformer(tiny_model_dir())[0]
    module.backbone.save_pretrained(str(backbone))
    module.tokenizer.save_pretrained(str(backbone))
    paths = {
        "images": photos / "images",
        "data": photos / "captions.jsonl",
        "store": root / "store",
        "be": root / "runs" / "be" / "final",
        "ce": root / "runs" / "ce" / "final",
        "root": root,
    }
    train = ["--data", paths["data"], "--features", paths["store"], "--steps", "2", "--batch-size", "8"]
    for argv in (
        # 1. Featurize the photos once.
        [
            "featurize",
            paths["images"],
            "--output",
            paths["store"],
            "--featurizer",
            "mobilenet-grid",
            "--grid-size",
            "2",
        ],
        # 2. A bi-encoder from the backbone, trained from the store (a new model takes the store's featurizer).
        ["train", "be", "--model", backbone, *train, "--output-dir", root / "runs" / "be"],
        # 3. A cross-encoder from the bi-encoder.
        ["train", "ce", "--model", paths["be"], *train, "--output-dir", root / "runs" / "ce"],
    ):
        assert main([str(arg) for arg in argv]) == 0, argv
    return paths


def _cli(capsys, *argv) -> str:
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, f"mm-sbert {' '.join(map(str, argv))}\n{out}\n{err}"
    return out


def test_the_walk_trains_both_views_and_evaluates_sep_coop(capsys, walk):
    config = json.loads((walk["ce"] / "mm_transformer_config.json").read_text())
    assert config["trained_views"] == ["bi_encoder", "cross_encoder"]
    # 4. Evaluate: the bi-encoder alone (its score head is untrained, so that is all it offers) ...
    out = _cli(
        capsys, "evaluate", "-m", walk["be"], "--data", walk["data"], "--features", walk["store"], "--top-k", "3"
    )
    assert f"{PHOTOS} images, {PHOTOS * 5} captions" in out and "BE" in out and "Coop" not in out
    # ... and Sep+Coop: the bi-encoder retrieves, the separately trained cross-encoder reranks.
    output = walk["root"] / "sep_coop.json"
    evaluate = ["evaluate", "-m", walk["be"], "--cross-encoder", walk["ce"], "--data", walk["data"]]
    out = _cli(capsys, *evaluate, "--features", walk["store"], "--top-k", "3", "--output", output)
    metrics = json.loads(output.read_text())
    assert "Coop (k=3)" in out and f"reranker {walk['ce']} (separately trained)" in out
    # With k = 3 reranked, Coop's R@5 / R@10 are the BE's R@3: the reranker reorders the BE's candidates only.
    assert metrics["coop_t2i_r@5"] == metrics["coop_t2i_r@10"]


def test_the_walk_indexes_from_the_store_and_searches_with_the_separate_reranker(capsys, walk):
    # 5. Index the photos from the store, 6. search with the separate reranker: `mm-sbert index --features` must
    # search, and `mm-sbert search --cross-encoder` reranks with the separately trained model.
    index = walk["root"] / "index"
    _cli(capsys, "index", walk["images"], "-m", walk["be"], "-o", index, "--features", walk["store"])
    argv = ["search", index, "two children on a skateboard", "--cross-encoder", walk["ce"], "--rerank-k", "4"]
    out = _cli(capsys, *argv, "--top-k", "2", "--json")
    hits = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(hits) == 2


def test_the_walk_refuses_to_rerank_with_the_bi_encoders_untrained_head(capsys, walk):
    index = walk["root"] / "index_be_only"
    _cli(capsys, "index", walk["images"], "-m", walk["be"], "-o", index, "--features", walk["store"])
    code, _, err = run_cli(capsys, "search", index, "two children on a skateboard", "--top-k", "2")
    assert code == 2 and "never trained" in err and "--no-rerank" in err, err
    out = _cli(capsys, "search", index, "two children on a skateboard", "--top-k", "2", "--no-rerank", "--json")
    assert len([line for line in out.splitlines() if line.startswith("{")]) == 2
