"""A training output folder: never the user's, one run at a time, resumable after a kill during a save (issue 29)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cli_helpers import run_cli, scene_folder, tiny_model_dir

from mm_sbert.training.training_output import last_complete_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _checkpoint(folder: Path, step: int, state: str | None) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if state is not None:
        (path / "trainer_state.json").write_text(state)
    return path


def test_last_complete_checkpoint_skips_half_written_ones(tmp_path):
    assert last_complete_checkpoint(tmp_path / "none") is None
    _checkpoint(tmp_path, 2, json.dumps({"global_step": 2}))
    _checkpoint(tmp_path, 10, json.dumps({"global_step": 10}))
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    _checkpoint(tmp_path, 12, '{"global_st')  # killed while the trainer state was written
    _checkpoint(tmp_path, 14, None)  # killed before it
    _checkpoint(tmp_path, 16, json.dumps({"global_step": "16"}))
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")


TRAIN = ["train", "be", "--synthetic", "8", "--batch-size", "4", "--lr", "1e-3"]


def test_resume_after_a_kill_during_a_checkpoint_save(capsys, tmp_path):
    output = tmp_path / "run"
    code, _, err = run_cli(
        capsys, *TRAIN, "--model", tiny_model_dir(), "--steps", "2", "--save-steps", "1", "--output-dir", output
    )
    assert code == 0, err
    # What kill -9 during the save of checkpoint-2 leaves: the model partly written, no trainer state yet.
    broken = output / "checkpoint-2"
    (broken / "trainer_state.json").unlink()
    weights = next(broken.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:64])
    code, out, err = run_cli(
        capsys,
        *TRAIN,
        "--model",
        tiny_model_dir(),
        "--steps",
        "3",
        "--save-steps",
        "1",
        "--output-dir",
        output,
        "--resume",
    )
    assert code == 0, err
    state = json.loads((output / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert json.loads((broken / "trainer_state.json").read_text())["global_step"] == 2  # saved again, completely


def test_train_refuses_a_foreign_folder_and_its_own_data_folder(capsys, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("years of work")
    code, _, err = run_cli(capsys, *TRAIN, "--steps", "1", "--output-dir", tmp_path / "notes")
    assert code == 2 and "did not write and it is not empty (thesis.tex)" in err
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["thesis.tex"]
    data = Path(scene_folder())
    argv = ["train", "be", "--data", data / "captions.csv", "--steps", "1", "--output-dir", data]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "an input of the same command" in err


HOLDER = """
import sys, time
from mm_sbert.storage import exclusive_output
with exclusive_output(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_run_into_the_same_folder_is_refused_with_the_first_ones_pid(capsys, tmp_path):
    output = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(output)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run_cli(capsys, *TRAIN, "--steps", "1", "--output-dir", output)
        assert code == 2 and f"is in use by process {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
