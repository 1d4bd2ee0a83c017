"""The library packages import each other without a cycle, and the engine stays the engine.

Reads the source with `ast` (nothing is imported, so no backend is needed): every `import`
and `from ... import` of a seqport module, also inside functions and `if TYPE_CHECKING:`
blocks, and every `importlib.import_module("seqport....")` string literal. A cycle anywhere
in seqport.engine, seqport.runtimes, seqport.export (and seqport.cli / seqport.serving where
they exist) fails, and so does any seqport.engine module that imports seqport.export,
seqport.cli or seqport.serving.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

PACKAGES = ("seqport.engine", "seqport.runtimes", "seqport.export", "seqport.cli", "seqport.serving", "seqport.batch")
FORBIDDEN_FROM_ENGINE = ("seqport.export", "seqport.cli", "seqport.serving", "seqport.batch")


def _modules() -> dict[str, Path]:
    """Module name → source file of every module under PACKAGES that is installed."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue  # seqport.cli before it exists
        for root in map(Path, spec.submodule_search_locations):
            for path in sorted(root.rglob("*.py")):
                parts = path.relative_to(root).with_suffix("").parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join((package, *parts))] = path
    return found


def _imported(path: Path, module: str, known: set[str]) -> set[str]:
    """seqport modules that `module` (at `path`) imports, resolved against `known`."""
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:  # `from pkg import mod` imports the module pkg.mod
                names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        elif isinstance(node, ast.Call) and _is_import_module(node.func):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return {_known_prefix(name, known) for name in names if name.startswith("seqport.")} - {None, module}


def _is_import_module(func: ast.expr) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id == "import_module"


def _known_prefix(name: str, known: set[str]) -> str | None:
    """The longest known module `name` is or lies in (`seqport.engine.x.Y` → seqport.engine.x)."""
    parts = name.split(".")
    for end in range(len(parts), 1, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return name  # a seqport module outside PACKAGES: kept, so the forbidden check still sees it


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imported(path, name, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), or a
    module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_imports_it_must_check(tmp_path):
    graph = _graph()
    assert "seqport.engine.decode_loop" in graph["seqport.engine.generating_model"]
    assert "seqport.engine.placement" in graph["seqport.engine.kv_cache"]
    assert "seqport.engine.processors" in graph["seqport.engine.search"]  # from seqport.engine import x
    source = tmp_path / "probe.py"
    source.write_text(
        "import importlib\n"
        "from . import sampling\n"
        "def f():\n"
        "    from seqport.engine.beam import BeamSearch\n"
        "    return importlib.import_module('seqport.export.pipeline')\n"
    )
    known = set(graph) | {"seqport.export.pipeline"}
    found = _imported(source, "seqport.engine.probe", known)
    assert found == {"seqport.engine.sampling", "seqport.engine.beam", "seqport.export.pipeline"}


def test_cycle_detection_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_library_packages():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (each a set of modules importing each other):\n" + "\n".join(
        " <-> ".join(cycle) for cycle in cycles
    )


def test_engine_imports_neither_export_nor_cli():
    bad = [
        f"{module} imports {target}"
        for module, targets in sorted(_graph().items())
        if module.startswith("seqport.engine")
        for target in sorted(targets)
        if target.startswith(FORBIDDEN_FROM_ENGINE)
    ]
    assert not bad, "seqport.engine must not import seqport.export or seqport.cli:\n" + "\n".join(bad)
