"""The README quotes the demo's default run from its committed result file, not from memory."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mm_sbert.demo.recipe import DEFAULT_REGIONS, DEFAULTS, FAMILIES

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "demo_default.json"


def mean_recall(metrics: dict[str, float], mode: str) -> float:
    return sum(metrics[f"{mode}_{d}_r@{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10)) / 6


def test_the_readme_demo_row_quotes_the_committed_default_run():
    results = json.loads(RESULTS.read_text(encoding="utf-8"))
    settings = results["settings"]
    # The file is a run of today's defaults.
    assert {key: settings[key] for key in DEFAULTS} == DEFAULTS
    assert (settings["seed"], settings["families"], settings["regions"]) == (0, FAMILIES, DEFAULT_REGIONS)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (row,) = [line for line in readme.splitlines() if line.startswith("| `mm-sbert demo`")]
    quoted = re.search(r"held-out mean recall BE (\d+\.\d), CE (\d+\.\d), Coop k=20 (\d+\.\d)", row)
    assert quoted, row
    measured = [round(mean_recall(results["metrics"], mode), 1) for mode in ("be", "ce", "coop")]
    assert [float(value) for value in quoted.groups()] == measured
    ranks = re.search(r'"Try it" query\'s scene ranks (\d+) with Coop, (\d+) with the bi-encoder', row)
    assert ranks and [int(value) for value in ranks.groups()] == [
        results["try_it"]["ranks"]["coop"],
        results["try_it"]["ranks"]["be"],
    ]
    minutes = re.search(r"`mm-sbert demo` \((\d+(?:\.\d)?) min", row)
    assert minutes and abs(float(minutes.group(1)) - results["total_seconds"] / 60) < 0.6


def flickr8k_row(name: str, mode: str, k: int | None = None) -> tuple[float, float]:
    """R@1 (t2i, i2t) of one row of a committed Flickr8k result file, from Table 1 or (with ``k``) Table 8."""
    results = json.loads((ROOT / "benchmarks" / "results" / f"flickr8k_{name}.json").read_text(encoding="utf-8"))
    table = results["tables"]["table1" if k is None else "table8"]
    (row,) = [row for row in table if row["mode"] == mode and (k is None or row["k"] == k)]
    return row["t2i_r@1"], row["i2t_r@1"]


def test_the_readme_flickr8k_row_quotes_the_committed_ensemble_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (row,) = [line for line in readme.splitlines() if line.startswith("| Flickr8k dev, full 1k protocol")]

    def quoted(pattern: str) -> list[float]:
        found = re.search(pattern, row)
        assert found, pattern
        return [float(value) for value in found.groups()]

    pair = r"(\d+\.\d) / (\d+\.\d)"
    seed1, rerun2 = "en_sep_ensemble3_2000_lite2_full_be", "en_sep_ensemble3_2000_lite2_full_be_rerun2"
    assert quoted(rf"three CEs {pair} \(") == [*flickr8k_row(seed1, "Sep+Coop")]
    assert quoted(rf"a second such BE \({pair}\) {pair}") == [
        *flickr8k_row(rerun2, "BE"),
        *flickr8k_row(rerun2, "Sep+Coop"),
    ]
    assert quoted(rf"top 5 the three keep that R@1 within a point \({pair}, {pair}\)") == [
        *flickr8k_row(seed1 + "_top_k", "Sep+Coop", k=5),
        *flickr8k_row(rerun2, "Sep+Coop", k=5),
    ]


def test_the_readme_latency_row_quotes_the_committed_busy_run():
    results = json.loads(
        (ROOT / "benchmarks" / "results" / "retrieval_latency_busy_all_9_regions.json").read_text(encoding="utf-8")
    )
    rows = [method["seconds"] for method in results["search"]["1000000"]["methods"].values()]
    rows += list(results["coop"]["pipelines"].values())
    ratios = [row["busy, policy"] / row["quiet, policy"] for row in rows]
    worst_all_cores = max(row["busy, all cores"] / row["quiet, policy"] for row in rows)
    coop = results["coop"]["pipelines"]["Coop k=20, rerank eager PyTorch bfloat16, query encoded in bfloat16 too"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (row,) = [line for line in readme.splitlines() if line.startswith("| one text query: search backends")]
    quoted = re.search(
        r"Coop \(9 regions, (\d+\.\d) ms quiet\) stay within (\d+\.\d\d)-(\d+\.\d\d)x of their quiet latency in one "
        r"run \(the thread policy; every core instead: up to (\d+\.\d)x here",
        row,
    )
    assert quoted, row
    assert [float(value) for value in quoted.groups()] == [
        round(coop["quiet, policy"] * 1e3, 1),
        round(min(ratios), 2),
        round(max(ratios), 2),
        round(worst_all_cores, 1),
    ]
