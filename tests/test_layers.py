"""The layers of the service package point down only, and no module imports itself in a circle.

Walks the imports (the syntax tree, so imports inside functions count too) of every module under
service/powersampling and fails on an import from a lower layer up to a higher one, or on a cycle of
modules. The order (bottom first) is the one the package docstring shows; modules in one layer may
import each other as long as that makes no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import powersampling

PACKAGE = Path(__file__).resolve().parents[1] / "service" / "powersampling"

# Bottom first. A name is a top-level module or subpackage of powersampling ("" is the package itself,
# the public facade over the API).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "params", "results", "events", "stops", "_proto"),  # plain values
    ("models",),
    ("engines",),
    ("sampler",),
    ("api", "cache", ""),
    ("telemetry",),
    ("config", "sampling_flags"),
    ("serving",),
    ("http",),
    ("server",),
    ("commands", "bench", "cli", "__main__"),
)
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def part(module: str) -> str:
    """The top-level part of the package a module belongs to ("" for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(module: str) -> Iterator[tuple[str, int]]:
    """The powersampling modules `module` imports, with the line, wherever the import statement is."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return imports_in(path.read_text(encoding="utf-8"), package)


def imports_in(source: str, package: str) -> Iterator[tuple[str, int]]:
    """The powersampling modules `source` (a module of `package`) imports, with their lines."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "powersampling":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            if source.split(".")[0] != "powersampling":
                continue
            for alias in node.names:
                child = f"{source}.{alias.name}"
                yield (child if child in MODULES else source), node.lineno


def test_every_part_has_a_layer() -> None:
    unplaced = sorted({part(m) for m in MODULES} - LAYER_OF.keys())
    assert not unplaced, f"place these in LAYERS (and the package docstring): {unplaced}"


def test_no_upward_import() -> None:
    upward = [
        f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {target} "
        f"({part(m) or 'powersampling'} is below {part(target) or 'powersampling'})"
        for m in MODULES
        for target, line in imports(m)
        if target in MODULES and LAYER_OF[part(target)] > LAYER_OF[part(m)]
    ]
    assert not upward, "\n".join(upward)


def dependencies() -> dict[str, set[str]]:
    """Module -> the modules importing it runs: each one it imports and their enclosing packages
    (a package's __init__ runs first), leaving out the top package and the module's own packages."""
    graph: dict[str, set[str]] = {}
    for m in MODULES:
        deps: set[str] = set()
        for target, _ in imports(m):
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                name = ".".join(parts[:i])
                if name in MODULES and name != m and not m.startswith(name + "."):
                    deps.add(name)
        graph[m] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
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
                    found.append(sorted(component))
    return found


def test_no_import_cycle() -> None:
    assert cycles(dependencies()) == []


def test_the_checks_see_what_they_look_for() -> None:
    """The walker finds imports inside functions, relative ones included; the cycle finder finds a
    planted cycle."""
    lazy = "import os\n\ndef f():\n    from powersampling.cli import main\n    from ..server import app\n"
    assert sorted(imports_in(lazy, "powersampling.engines")) == [
        ("powersampling.cli", 4),
        ("powersampling.server.app", 5),
    ]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_docstring_shows_the_layers() -> None:
    doc = powersampling.__doc__ or ""
    for names in LAYERS:
        for name in names:
            if name and not name.startswith("_"):
                assert name in doc, f"the package docstring does not name {name!r}"
