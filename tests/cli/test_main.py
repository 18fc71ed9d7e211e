from __future__ import annotations

import subprocess
import sys

import pytest
from cli_helpers import run_cli

from mm_sbert.cli.main import SUBCOMMANDS, build_parser

COMMAND_NAMES = ["demo", "featurize", "train", "evaluate", "index", "search", "push"]


def test_every_subcommand_is_registered():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert sorted(choices) == sorted([*COMMAND_NAMES, "convert"])
    assert len(SUBCOMMANDS) == 8


@pytest.mark.parametrize("command", COMMAND_NAMES)
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


COMPUTING = ["demo", "featurize", "train", "evaluate", "index", "search"]


def test_help_lines_of_the_lazy_table_are_the_commands_own():
    from mm_sbert.cli.main import COMMANDS

    full = build_parser()._subparsers._group_actions[0]
    own = {action.dest: action.help for action in full._choices_actions}
    assert {name: help_line for name, (help_line, _) in COMMANDS.items()} == own


def test_help_and_import_do_not_load_torch():
    # `mm-sbert --help` took 6.5 s because every subcommand (and torch behind it) was imported up front.
    code = (
        "import sys, contextlib, io\n"
        "import mm_sbert, mm_sbert.cli.main as m\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "    m.main(['--help'])\n"
        "assert 'featurize' in out.getvalue() and 'search' in out.getvalue(), out.getvalue()\n"
        "heavy = sorted(name for name in ('torch', 'transformers', 'sentence_transformers', 'faiss') "
        "if name in sys.modules)\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_lazy_package_exports_still_resolve():
    import mm_sbert

    assert mm_sbert.EmbeddingIndex.__name__ == "EmbeddingIndex"
    assert set(mm_sbert.__all__) <= set(dir(mm_sbert))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        mm_sbert.Nope  # noqa: B018


@pytest.mark.parametrize("command", COMPUTING)
def test_threads_option_on_every_computing_command(command):
    parser = build_parser(command)
    subparser = parser._subparsers._group_actions[0].choices[command]
    assert any("--threads" in action.option_strings for action in subparser._actions)


@pytest.mark.parametrize("command", ["convert", "push"])
def test_no_threads_option_where_nothing_is_computed(command):
    subparser = build_parser(command)._subparsers._group_actions[0].choices[command]
    assert not any("--threads" in action.option_strings for action in subparser._actions)


def test_threads_zero_is_refused(capsys):
    code, _, err = run_cli(capsys, "evaluate", "--model", "x", "--synthetic", "3", "--threads", "0")
    assert code == 2 and "expected a positive number of threads" in err


@pytest.mark.parametrize(("argv", "expected"), [(["--threads", "1"], 1), (["--threads", "2"], 2)])
def test_threads_reach_torch_and_faiss_while_the_command_runs(capsys, monkeypatch, argv, expected):
    import faiss
    import torch

    from mm_sbert.cli import evaluate

    seen = []
    monkeypatch.setattr(
        evaluate, "run", lambda args: seen.append((torch.get_num_threads(), faiss.omp_get_max_threads()))
    )
    before = torch.get_num_threads()
    code, _, _ = run_cli(capsys, "evaluate", "--model", "x", "--synthetic", "3", *argv)
    assert code == 0 and seen == [(expected, expected)]
    assert torch.get_num_threads() == before  # restored for whoever called main()


def test_a_command_that_computes_retains_freed_memory(capsys, monkeypatch, tmp_path):
    from mm_sbert import memory_policy

    calls = []
    monkeypatch.setattr(memory_policy, "retain_freed_memory", lambda: calls.append("applied") or True)
    code, _, _ = run_cli(capsys, "evaluate", "--model", tmp_path / "nope", "--synthetic", "4")
    assert code == 2 and calls == ["applied"]
