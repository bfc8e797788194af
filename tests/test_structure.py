"""The package's shape (issue #15): imports run one way, and no module grows back into a monolith."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "step_jepa"
MAX_LINES = 500  # the target is ~450; this guard leaves slack
LINE_LIMIT_EXEMPT: set[str] = set()


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (annotations only: never imported at run
    time, so they cannot close a cycle)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports(path: Path) -> set[str]:
    """Package modules that `path` imports with `from .x import` / `from . import x`, at any level
    (top level and inside functions: a lazy import still closes a cycle at run time)."""
    out: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:  # from . import x, y
                out.update(a.name for a in node.names if (PKG / f"{a.name}.py").exists())
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("step_jepa."):
            out.add(node.module.split(".")[1])
    return out


def _graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PKG.glob("*.py")}
    # `from . import __version__` reads the package, not a module.
    return {p.stem: (_imports(p) & modules) - {"__init__", p.stem} for p in sorted(PKG.glob("*.py"))}


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_cycle_check_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from .data import load_records\n    from . import evaluate\n")
    assert "data" in _imports(f)


def test_no_module_exceeds_the_line_limit():
    too_long = {p.name: n for p in PKG.glob("*.py")
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES and p.name not in LINE_LIMIT_EXEMPT}
    assert not too_long, f"split these modules (> {MAX_LINES} lines): {too_long}"
