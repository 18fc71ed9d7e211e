"""The demo ablation's rows run end to end on the demo's --quick sizes (the real rows take minutes each)."""

from __future__ import annotations

import pytest
import torch
from benchmark_helpers import load_benchmark


@pytest.fixture()
def bench(monkeypatch):
    module = load_benchmark("demo_ablation")
    monkeypatch.setattr(module.demo, "DEFAULTS", dict(module.demo.QUICK))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield module
    torch.set_num_threads(previous)


@pytest.mark.parametrize("row", ["default", "match_head_listwise_mined_negatives_240"])
def test_rows_train_and_report_recall_of_all_three_modes(bench, row):
    settings = {**bench.ROWS[row], "steps": 2}
    result = bench.run_row(row, settings, seed=0)
    for mode in ("be", "ce", "coop"):
        assert 0.0 <= result[mode] <= 100.0
    # 12 held-out scenes, k=20: Coop reranks every image, so it ranks exactly like the CE.
    assert result["coop"] == pytest.approx(result["ce"])
    assert result["train_seconds"] > 0


def test_default_row_is_the_demo_recipe(bench):
    assert bench.ROWS["default"]["training"] is bench.demo.TRAINING
    assert bench.ROWS["default"]["module"] is bench.demo.MODULE_KWARGS
