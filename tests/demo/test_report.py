"""The demo's report: verdict, closing lines read from result files, plot, one query's ranks."""

from __future__ import annotations

import json
import math
import shutil

from matplotlib.ticker import MaxNLocator

from mm_sbert.demo.report import REAL_PHOTO_RUNS, RESULTS_DIR, plot_results, real_photos_outcome, verdict


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


def test_closing_lines_quote_the_result_files():
    lines = real_photos_outcome()
    assert len(lines) == 2 + len(REAL_PHOTO_RUNS)
    pairs = []
    for (what, *names), line in zip(REAL_PHOTO_RUNS, lines[1:]):
        rows = {}
        for name in names:
            for row in json.loads((RESULTS_DIR / name).read_text(encoding="utf-8"))["tables"]["table1"]:
                rows[row["mode"]] = row
        assert line.startswith(f"  {what}: ")
        for mode in ("BE", "Sep+Coop", "Joint+Coop"):
            assert f"{mode} {rows[mode]['t2i_r@1']} / {rows[mode]['i2t_r@1']}" in line, (what, mode)
        assert f"R@10 {rows['BE']['t2i_r@10']} / {rows['BE']['i2t_r@10']}" in line
        pairs += [
            (rows[m][f"{d}_r@1"], rows["BE"][f"{d}_r@1"]) for m in ("Sep+Coop", "Joint+Coop") for d in ("t2i", "i2t")
        ]
    # The verdict follows the numbers.
    if all(coop >= be for coop, be in pairs):
        assert "reranking beats retrieval" in lines[0]
    elif all(coop < be for coop, be in pairs):
        assert "does NOT beat" in lines[0]
    else:
        assert "level" in lines[0]


def test_closing_lines_follow_the_files_not_the_code(tmp_path):
    for _, *names in REAL_PHOTO_RUNS:
        for name in names:
            shutil.copy(RESULTS_DIR / name, tmp_path / name)
    _, sep_name, _ = REAL_PHOTO_RUNS[0]
    result = json.loads((tmp_path / sep_name).read_text(encoding="utf-8"))
    for row in result["tables"]["table1"]:
        if row["mode"] == "Sep+Coop":
            row["t2i_r@1"] = 0.5  # below every BE
    (tmp_path / sep_name).write_text(json.dumps(result), encoding="utf-8")
    lines = real_photos_outcome(tmp_path)
    assert "Sep+Coop 0.5 / " in lines[1] and "reranking beats retrieval" not in lines[0]
    # Without the files (an installed package, not a clone): no figures, a pointer.
    (line,) = real_photos_outcome(tmp_path / "absent")
    assert "benchmarks/results/flickr8k.md" in line and not any(c.isdigit() for c in line.replace("8k", ""))


def test_plot_keeps_coop_visible_beside_ce_and_counts_k_in_integers():
    metrics = metrics_for(be=60.0, coop=80.0, ce=80.0)
    for mode in ("be", "ce", "coop"):
        metrics.update({f"{mode}_t2i_r@{k}": 50.0 + k for k in range(1, 4)})
    latency = {mode: {100: 0.1, 1000: 1.0} for mode in ("be", "ce", "coop")}
    figure = plot_results(metrics, latency, top_k=20)
    recall_axis = figure.axes[0]
    lines = {line.get_label(): line for line in recall_axis.get_lines()}
    ce, coop = lines["CE"], lines["Coop (k=20)"]
    # Same recall: the curves must still differ in marker, line style and position.
    assert list(ce.get_ydata()) == list(coop.get_ydata())
    assert ce.get_marker() != coop.get_marker() and ce.get_linestyle() != coop.get_linestyle()
    assert list(ce.get_xdata()) != list(coop.get_xdata())
    locator = recall_axis.xaxis.get_major_locator()
    assert isinstance(locator, MaxNLocator)
    assert all(float(tick).is_integer() for tick in locator.tick_values(0.8, 3.2))
