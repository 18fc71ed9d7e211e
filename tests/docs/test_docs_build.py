from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_documentation_builds_without_warnings(tmp_path):
    """`mkdocs build --strict` turns every warning (broken link, bad docstring reference) into a failure."""
    pytest.importorskip("mkdocs", reason="install the [docs] extra to build the documentation")
    pytest.importorskip("mkdocstrings")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "api" / "models" / "index.html").is_file()
