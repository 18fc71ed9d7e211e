from __future__ import annotations

import subprocess
import sys

import pytest
from cli_helpers import run_cli

from mm_sbert.cli.main import SUBCOMMANDS, build_parser

COMMANDS = ["demo", "featurize", "train", "evaluate", "index", "search", "push"]


def test_every_subcommand_is_registered():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert sorted(choices) == sorted([*COMMANDS, "convert"])
    assert len(SUBCOMMANDS) == 8


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_each_subcommand(capsys, command):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    assert out.startswith(f"usage: mm-sbert {command}")


def test_no_command_prints_help_and_exits_2(capsys):
    code, out, _ = run_cli(capsys)
    assert code == 2 and "COMMAND" in out


def test_unknown_option_exits_2(capsys):
    code, _, err = run_cli(capsys, "evaluate", "--model", "x", "--synthetic", "3", "--no-such-option")
    assert code == 2 and "unrecognized arguments: --no-such-option" in err


def test_missing_model_folder_is_one_line_without_traceback(capsys, tmp_path):
    code, out, err = run_cli(capsys, "evaluate", "--model", tmp_path / "nope", "--synthetic", "4")
    assert code == 2
    assert err.strip() == f"mm-sbert evaluate: error: Model folder '{tmp_path / 'nope'}' does not exist"
    assert "Traceback" not in out + err


def test_folder_that_is_not_a_model(capsys, tmp_path):
    code, _, err = run_cli(capsys, "evaluate", "--model", tmp_path, "--synthetic", "4")
    assert code == 2 and "is not a saved mm_sbert model (no modules.json)" in err


def test_python_dash_m_runs_the_same_cli():
    result = subprocess.run(
        [sys.executable, "-m", "mm_sbert", "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.startswith("mm_sbert ")
