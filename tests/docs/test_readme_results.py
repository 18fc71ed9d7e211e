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
