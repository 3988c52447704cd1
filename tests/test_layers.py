"""The house's floors: no import circles among reslab's modules (every import counts, also those
inside functions), the engine imports nothing from analysis/ or cli/, and no module or package
imports from a floor above its own in docs/design.md's floor table."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "reslab"
DESIGN = ROOT.parents[1] / "docs" / "design.md"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the reslab modules it imports (a package __init__ that only re-exports is
    skipped as a node: `from . import x` through it is not a dependency on the package)."""
    graph, inits = _imports()
    return {m: deps - inits for m, deps in graph.items() if m not in inits}


def _imports() -> tuple[dict[str, set[str]], set[str]]:
    """(module -> the reslab modules it imports, package __init__s included; the __init__s)."""
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[:len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([node.module] if node.module else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                         for a in node.names]
            graph[mod] |= {n for n in names if n in files and n != mod}
    return graph, {m for m, p in files.items() if p.name == "__init__.py"}


def unit(module: str) -> str:
    """The package or root module a module belongs to: reslab.engine.loop -> engine."""
    return module.split(".")[1]


def package_graph() -> dict[str, set[str]]:
    """package or root module -> those it imports, counting imports of a package's __init__
    (`from ..models import create_model` depends on models/). The root package's __init__
    (the lazily imported public names, __version__) belongs to no floor and is left out."""
    graph, _ = _imports()
    units: dict[str, set[str]] = {}
    for mod, deps in graph.items():
        if mod != "reslab":
            units.setdefault(unit(mod), set()).update(
                unit(d) for d in deps if d != "reslab" and unit(d) != unit(mod))
    return units


def floor_table(text: str) -> list[tuple[str, int]]:
    """(package or root module, floor) for every name in the modules column of the table under
    '## Floors': `name/` a package, `name` a root module."""
    section = text.split("\n## Floors", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and cells[0].isdigit():
            rows += [(name.rstrip("/"), int(cells[0])) for name in re.findall(r"`([^`]+)`",
                                                                               cells[1])]
    return rows


def upward(edges: dict[str, set[str]], floor: dict[str, int]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where the imported one stands on a higher floor."""
    return sorted((a, b) for a, deps in edges.items() for b in deps if floor[b] > floor[a])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    assert cycles(graph) == []


def test_the_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_engine_stands_below_analysis_and_the_cli() -> None:
    graph = import_graph()
    upward = sorted((m, d) for m, deps in graph.items() if m.startswith("reslab.engine")
                    for d in deps if d.startswith(("reslab.analysis", "reslab.cli",
                                                   "reslab.deploy", "reslab.bench")))
    assert upward == []
    ground = ("reslab.errors", "reslab.io", "reslab.limits")
    assert all(d in ground for m in ground for d in graph[m])  # the ground floor is alone


def floors() -> dict[str, int]:
    rows = floor_table(DESIGN.read_text())
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), names  # each on one floor
    return dict(rows)


def test_the_floor_table_places_every_package_and_root_module_once() -> None:
    assert set(floors()) == set(package_graph())


def test_no_module_imports_from_a_floor_above() -> None:
    floor = {m: floors()[unit(m)] for m in import_graph()}
    assert upward(import_graph(), floor) == []


def test_no_package_imports_from_a_floor_above() -> None:
    graph = package_graph()
    assert upward(graph, floors()) == []
    assert cycles(graph) == []  # on one floor too


def test_the_floor_check_finds_an_upward_import() -> None:
    table = ("# x\n## Floors\n\n| floor | modules | job |\n|---|---|---|\n"
             "| 0 | `errors`, `io` | ground |\n| 1 | `models/` | `interop` is not a module |\n"
             "| 2 | `engine/` | runs |\n\n## Next\n| 3 | `cli/` | not in the table |\n")
    rows = floor_table(table)
    assert rows == [("errors", 0), ("io", 0), ("models", 1), ("engine", 2)]
    assert upward({"models": {"errors", "engine"}, "engine": {"models"}}, dict(rows)) == [
        ("models", "engine")]
