"""The import structure of docs/architecture.md, checked by tools/import_graph.py (ast over mm_sbert/)."""

from __future__ import annotations

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool():
    spec = importlib.util.spec_from_file_location("import_graph", os.path.join(ROOT, "tools", "import_graph.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_package_circle_and_no_upward_import():
    problems, _ = load_tool().problems_of()
    assert not [problem for problem in problems if not problem.startswith("module circle")], problems


def test_no_module_circle_through_the_index_export_or_search_layers():
    problems, _ = load_tool().problems_of()
    mine = ("mm_sbert.retrieval", "mm_sbert.export", "mm_sbert.cli.index", "mm_sbert.cli.search")
    assert not [problem for problem in problems if any(name in problem for name in mine)], problems


def test_the_tool_finds_a_circle_and_an_upward_import():
    tool = load_tool()
    assert tool.cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert tool.package_of("mm_sbert.export.onnx_cross_encoder") == "export"
