"""The package has no import circles, counting imports inside functions too (issue 17: code in the wrong file
shows up as a circle)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "kdistill"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kdistill":
                targets = {f"{node.module}.{a.name}" for a in node.names} | {node.module}
            elif isinstance(node, ast.Import):
                targets = {a.name for a in node.names}
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return circles


def test_the_graph_is_read():
    graph = _imports(_modules())
    assert "kdistill.training.checkpoint" in graph["kdistill.training.engine"]  # a module-level import
    assert "kdistill.runner" in graph["kdistill.tasks.vision"]  # an import inside a method


def test_no_import_circles():
    assert _circles(_imports(_modules())) == []


def test_the_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# The folders in the order data moves (docs/design.md, "Architecture"): a module may import its own layer and
# the layers below it, never one above. The foundation holds what every layer reads (errors, the config schemas,
# the ownership manifest, digests); the top holds the task front-ends and the commands (tasks, text, lm, runner,
# cli, sweep, quickstart, baseline, api).
LAYERS = (
    ("foundation", ("kdistill", "kdistill.errors", "kdistill.config", "kdistill.ownership", "kdistill.digests",
                    "kdistill.jsonl")),
    ("data", ("kdistill.data",)),
    ("models", ("kdistill.models",)),
    ("methods", ("kdistill.losses", "kdistill.methods")),
    ("training", ("kdistill.training",)),
    ("evaluate", ("kdistill.evaluate",)),
    ("deploy", ("kdistill.deploy",)),
)


def _layer(module: str) -> int:
    for rank, (_name, prefixes) in enumerate(LAYERS):
        if any(module == p or (p != "kdistill" and module.startswith(p + ".")) for p in prefixes):
            return rank
    return len(LAYERS)  # the top: tasks and commands


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if _layer(b) > _layer(a))


def test_no_module_imports_from_a_higher_layer():
    assert _upward(_imports(_modules())) == []


def test_the_layer_check_sees_an_upward_import():
    assert _layer("kdistill.training.engine") == 4 and _layer("kdistill.cli") == len(LAYERS)
    assert _upward({"kdistill.data.digits": {"kdistill.deploy.export", "kdistill.errors"}}) == [
        "kdistill.data.digits -> kdistill.deploy.export"]
