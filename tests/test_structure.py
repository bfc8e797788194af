"""The package's shape: subpackages in pipeline order, imports in one direction, no cycle (a lazy
import or a module named in a string closes one at run time too), no re-exports, one `__all__`."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import step_jepa

PKG = Path(__file__).resolve().parents[1] / "src" / "step_jepa"
# The pipeline, bottom up: a subpackage may import only itself and those before it.
LAYERS = ["data", "method", "models", "training", "evaluation", "analysis", "bench", "cli"]


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (annotations only: never imported at run time)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(path: Path, modules: set[str]) -> dict[str, list[str]]:
    """Package modules `path` imports, at any level (a function-level import still closes a cycle at
    run time), with the names it takes from each; a string naming a package module counts too
    (the CLI imports its commands by name)."""
    out: dict[str, list[str]] = {}
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import (use `from step_jepa.… import`)")
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("step_jepa"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.setdefault(sub if sub in modules else node.module, []).append(a.name)
        elif isinstance(node, ast.Import):
            out.update({a.name: [] for a in node.names if a.name in modules})
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "." in node.value
            and node.value in modules
        ):
            out.setdefault(node.value, [])
    return out


def _graph() -> dict[str, dict[str, list[str]]]:
    modules = _modules()
    return {m: {d: n for d, n in _imports(p, set(modules)).items() if d != m} for m, p in modules.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_is_in_a_pipeline_subpackage():
    stray = [m for m in _modules() if m != "step_jepa" and _layer(m) is None]
    assert not stray, f"modules outside {LAYERS}: {stray}"


def test_subpackages_import_only_those_before_them():
    upward = [
        f"{m} -> {d}"
        for m, deps in _graph().items()
        for d in deps
        if _layer(m) is not None and _layer(d) is not None and _layer(d) > _layer(m)
    ]
    assert not upward, "imports against the pipeline order:\n" + "\n".join(upward)


def _closes_no_loop(dep: str, names: list[str]) -> bool:
    """`from step_jepa import __version__`: the package root defines it before, and without, loading
    any of its lazily imported names, so taking it cannot re-enter the module that takes it."""
    return dep == "step_jepa" and bool(names) and set(names) <= {"__version__"}


def test_no_import_cycle():
    graph = {m: {d for d, names in deps.items() if not _closes_no_loop(d, names)} for m, deps in _graph().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for dep in sorted(graph.get(m, ())):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep) :] + [dep]))
            if dep not in state:
                visit(dep)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_cycle_check_sees_lazy_and_string_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from step_jepa.data.load import load_records\nTABLE = ('step_jepa.cli.train',)\n")
    found = _imports(f, {"step_jepa.data.load", "step_jepa.cli.train"})
    assert found == {"step_jepa.data.load": ["load_records"], "step_jepa.cli.train": []}


def _defined(path: Path) -> set[str]:
    """Top-level names a module defines itself (not the ones it imports)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                names.update(e.id for e in ast.walk(t) if isinstance(e, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_names_are_imported_from_the_module_that_defines_them():
    """No re-exports: a name comes from its own module, and a private name stays in it."""
    modules = _modules()
    wrong = []
    for m, deps in _graph().items():
        for d, names in deps.items():
            if d == "step_jepa":
                continue  # the package API (`__version__`, lazily loaded names)
            defined = _defined(modules[d])
            for n in names:
                if f"{d}.{n}" in modules:
                    continue
                if n not in defined:
                    wrong.append(f"{m}: {n} is not defined in {d}")
                elif n.startswith("_") and d.rsplit(".", 1)[0] != m.rsplit(".", 1)[0]:
                    wrong.append(f"{m}: private {n} of {d}")
    assert not wrong, "\n".join(wrong)


def test_one_all_lists_the_public_api():
    with_all = [m for m, p in _modules().items() if "__all__" in _defined(p)]
    assert with_all == ["step_jepa"]
    for name in step_jepa.__all__:
        value = getattr(step_jepa, name)
        if name != "__version__":
            module = importlib.import_module(value.__module__)
            assert getattr(module, name) is value and value.__module__.startswith("step_jepa.")


def test_only_the_version_taken_from_the_root_is_no_loop():
    assert _closes_no_loop("step_jepa", ["__version__"])
    assert not _closes_no_loop("step_jepa", ["__version__", "StepJEPATrainer"])
    assert not _closes_no_loop("step_jepa", [])  # `import step_jepa`: may touch any lazy name
    assert not _closes_no_loop("step_jepa.data.load", ["__version__"])
