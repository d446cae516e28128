"""The package's import structure: the library never imports the CLI, and its modules import each other
without cycles (read from the source with `ast`, nothing is imported)."""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import structprune

PACKAGE = Path(structprune.__file__).parent
CLI_SIDE = ("structprune.cli", "structprune.__main__")  # may import structprune.cli


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> source file."""
    found = {"structprune": PACKAGE / "__init__.py"}
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="structprune."):
        folder = Path(info.module_finder.path)  # type: ignore[union-attr]
        leaf = info.name.rsplit(".", 1)[1]
        found[info.name] = folder / leaf / "__init__.py" if info.ispkg else folder / f"{leaf}.py"
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, module_level_only: bool) -> set[str]:
    """The structprune modules `name` imports: module level (class bodies and runtime if/try blocks included,
    `if TYPE_CHECKING:` blocks not) or anywhere. `from pkg import sub` counts as importing the submodule when
    `sub` is one, else as importing `pkg`."""
    path = MODULES[name]
    is_package = path.name == "__init__.py"
    targets: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if module_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if module_level_only and isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit_stmt(stmt)
                continue
            visit_stmt(child)

    def visit_stmt(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in MODULES else base)
        visit(node)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return {t for t in targets if t in MODULES and t != name}


def _cli_side(name: str) -> bool:
    return any(name == side or name.startswith(side + ".") for side in CLI_SIDE)


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components of the graph with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def test_the_walk_finds_the_package():
    assert {"structprune.cli", "structprune.cli.quantize", "structprune.quant.run", "structprune.output"} <= set(MODULES)
    assert all(path.is_file() for path in MODULES.values())


def test_the_parser_sees_imports_in_functions_and_relative_ones():
    # stages/measure.py imports structprune.report (matplotlib) inside a function only
    assert "structprune.report" in _imports("structprune.stages.measure", module_level_only=False)
    assert "structprune.report" not in _imports("structprune.stages.measure", module_level_only=True)
    assert "structprune.quant.run" in _imports("structprune.cli.quantize", module_level_only=True)


def test_cycle_finder_reports_each_cycle_once():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": {"f"}, "g": set()}
    assert _strongly_connected(graph) == [["a", "b", "c"], ["d", "e"]]


def test_no_library_module_imports_the_cli():
    offenders = {name: sorted(t for t in _imports(name, module_level_only=False) if _cli_side(t))
                 for name in MODULES if not _cli_side(name)}
    offenders = {name: targets for name, targets in offenders.items() if targets}
    assert offenders == {}, f"library modules that import structprune.cli: {offenders}"


def test_no_import_cycles_at_module_level():
    graph = {name: _imports(name, module_level_only=True) for name in MODULES}
    cycles = _strongly_connected(graph)
    assert cycles == [], "import cycles among structprune modules (module-level imports):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)
