"""`mm-sbert train --bf16`: bfloat16 autocast in every regime's forward passes, weights kept in float32."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import run_cli, tiny_model_dir

from mm_sbert.training import TrainingRecipe, training_run

ARGV = ["--model", tiny_model_dir(), "--synthetic", "8", "--steps", "2", "--batch-size", "4"]


@pytest.mark.parametrize("regime", ["be", "ce"])
def test_bf16_runs_the_forward_passes_in_bfloat16(capsys, tmp_path, monkeypatch, regime):
    if not training_run.torch_cpu_has_bf16():
        pytest.skip("this CPU has no native bfloat16")
    dtypes = []
    trainer = TrainingRecipe.trainer

    def spying_trainer(self, model, *args, **kwargs):
        layer = model[0].backbone.encoder.layer[0].intermediate.dense
        layer.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
        return trainer(self, model, *args, **kwargs)

    monkeypatch.setattr(TrainingRecipe, "trainer", spying_trainer)
    code, _, err = run_cli(capsys, "train", regime, *ARGV, "--output-dir", tmp_path / "run", "--bf16")
    assert code == 0, err
    assert dtypes and set(dtypes) == {torch.bfloat16}
    dtypes.clear()
    code, _, err = run_cli(capsys, "train", regime, *ARGV, "--output-dir", tmp_path / "fp32")
    assert code == 0, err
    assert set(dtypes) == {torch.float32}  # without the flag nothing changes


def test_bf16_is_refused_on_a_cpu_without_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(training_run, "torch_cpu_has_bf16", lambda: False)
    code, _, err = run_cli(capsys, "train", "be", *ARGV, "--output-dir", tmp_path / "run", "--bf16")
    assert code == 2 and "no native bfloat16" in err
