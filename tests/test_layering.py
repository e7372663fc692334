"""The layering of berg's packages, checked from the source (imports inside functions included).

``berg.core`` (contract, engine, layouts, readouts, spaces, ensembles) is the base plug-ins build on:
nothing in it imports a plug-in or a caller (models, api, cli, runner, experiments, training). And no two
modules import each other, directly or through a chain, so each concern has one direction of use.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BERG = Path(__file__).resolve().parents[1] / "berg"
#: Packages and modules that sit above berg.core: core must never import them.
ABOVE_CORE = (
    "berg.models",
    "berg.api",
    "berg.cli",
    "berg.runner",
    "berg.experiments",
    "berg.training",
    "berg.buildable",
    "berg.buildable_cli",
    "berg.hub",
    "berg.testing",
)


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph(root: Path = BERG) -> dict[str, set[str]]:
    """Module -> berg modules it imports (anywhere in the file except ``if TYPE_CHECKING:`` blocks)."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_lines(tree)
        deps: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t.startswith("berg") and t != name and not name.startswith(t + "."):
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep == "berg":  # the package's lazy facade is imported for its shortcuts only
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_core_imports_nothing_above_it():
    graph = import_graph()
    bad = {
        m: sorted(d for d in deps if d.startswith(ABOVE_CORE)) for m, deps in graph.items() if m.startswith("berg.core")
    }
    assert not {m: d for m, d in bad.items() if d}, f"berg.core imports upward: {bad}"


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None, f"import cycle: {' -> '.join(find_cycle(import_graph()))}"


def test_the_check_can_fail(tmp_path):
    pkg = tmp_path / "berg"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from berg.b import g\n")
    (pkg / "b.py").write_text("from berg.core.a import f\n")
    graph = import_graph(pkg)
    assert graph["berg.core.a"] == {"berg.b"}
    assert find_cycle(graph) in (["berg.b", "berg.core.a", "berg.b"], ["berg.core.a", "berg.b", "berg.core.a"])


@pytest.mark.parametrize("module", ["berg.models", "berg.api"])
def test_plugins_sit_above_core(module):
    assert module.startswith(ABOVE_CORE)
