"""Check mm_sbert's import structure: no import circle between modules or packages, and no arrow running up the
layers of docs/architecture.md. Every ``import`` counts, also those inside functions (lazy imports still couple the
code); only imports under ``if TYPE_CHECKING:`` are skipped (they never run).

Usage: ``python tools/import_graph.py`` (exit 1 and the offending imports when the structure is broken).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mm_sbert"

# Lowest first: a package may import only packages of a lower (or its own) layer.
LAYERS: list[set[str]] = [
    {"version", "errors", "thread_policy", "memory_policy"},
    {"storage"},
    {"image_features"},
    {"export"},
    {"modules"},
    {"models", "backbones"},
    {"data", "losses"},
    {"retrieval"},
    {"training", "evaluation", "convert"},
    {"demo"},
    {"cli", "__init__", "__main__"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # "from mm_sbert.x import y": y may be a module of package x
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name.startswith("mm_sbert"):
                while name not in modules and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in modules:
                    found.add(name)
                    break
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def problems_of() -> tuple[list[str], str]:
    """The structure's problems (circles, upward imports) and a one-paragraph summary."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph = {module: imports(path, modules) - {module} for module, path in paths.items()}
    # A package's __init__ re-exports its modules: an edge into it is an edge into the package, not a circle.
    module_graph = {
        module: {target for target in targets if target != "mm_sbert" and not module.startswith(target + ".")}
        for module, targets in graph.items()
    }
    layer = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}
    problems = []
    for component in cycles(module_graph):
        problems.append(f"module circle: {' <-> '.join(component)}")
    package_graph: dict[str, set[str]] = {}
    upward = []
    for module, targets in module_graph.items():
        source = package_of(module)
        for target in targets:
            destination = package_of(target)
            if destination == source:
                continue
            package_graph.setdefault(source, set()).add(destination)
            if source not in layer or destination not in layer:
                problems.append(f"package {source if source not in layer else destination} has no layer")
            elif layer[destination] > layer[source]:
                upward.append(f"upward import: {module} -> {target}")
    problems += [f"package circle: {' <-> '.join(c)}" for c in cycles(package_graph)] + sorted(upward)
    edges = sum(len(targets) for targets in module_graph.values())
    summary = [f"{len(modules)} modules, {edges} imports between them, {len(package_graph)} importing packages"]
    summary += [f"  layer {rank}: {', '.join(sorted(packages))}" for rank, packages in enumerate(LAYERS)]
    return sorted(set(problems)), "\n".join(summary)


def main() -> int:
    problems, summary = problems_of()
    print(summary)
    for problem in problems:
        print(problem)
    print("OK: no circle, no upward import" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
