"""The import graph of trainer/ and tools/, read with `ast` (nothing is imported), and the rules it must keep.

    python -m tests.imports          # print modules, arrows, cycles, dodging imports and broken layering rules

A module-level import (also under `try:`, never under `if TYPE_CHECKING:`) is an arrow from the importing module
to every project module it names; `import a.b.c` also runs the packages `a` and `a.b` first, so it is an arrow to
their `__init__` as well, except to packages the importer itself lives in (those are already being imported).
A function-local import of a project module is fine for a heavy optional dependency, but not when moving it to
the top would close a cycle: then it only hides one. tests/test_layering.py turns every finding into a failure.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "tools")

# (importer prefix, imported prefix, the rule): README "Layout" states them. A prefix ending in "." names a
# package and everything in it; otherwise exactly that module (and, for a package, its __init__).
RULES = [
    ("trainer.methods.", "trainer.runtime", "methods/ imports neither runtime/ nor config.py"),
    ("trainer.methods.", "trainer.config", "methods/ imports neither runtime/ nor config.py"),
    ("trainer.data.", "trainer.runtime", "data/ imports neither runtime/, methods/ nor models/"),
    ("trainer.data.", "trainer.methods", "data/ imports neither runtime/, methods/ nor models/"),
    ("trainer.data.", "trainer.models", "data/ imports neither runtime/, methods/ nor models/"),
    ("trainer.perf.", "trainer.", "perf/ is pure arithmetic: it imports only perf/"),
    ("trainer.", "tools", "nothing in trainer/ imports tools/"),
    ("trainer.", "trainer.cli", "nothing in trainer/ outside cli/ imports cli/"),
    ("trainer.runtime.", "trainer.loop", "runtime/ is handed state: it never reads the loop or its run"),
    ("trainer.runtime.", "trainer.main", "runtime/ is handed state: it never reads the loop or its run"),
    ("trainer.runtime.", "trainer.evaluation", "runtime/ is handed state: it never reads the loop or its run"),
    ("trainer.monitor.", "trainer.loop", "monitor/ reports what it is handed: it never reads the loop's run"),
    ("trainer.monitor.", "trainer.main", "monitor/ reports what it is handed: it never reads the loop's run"),
    ("trainer.inference.", "trainer.loop", "inference/ runs trained methods without the trainer"),
    ("trainer.inference.", "trainer.main", "inference/ runs trained methods without the trainer"),
]
ALLOWED = {("trainer.cli.", "trainer.cli"), ("trainer.perf.", "trainer.perf")}  # a package's own modules


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    local: bool
    """Inside a function or method (runs when called), rather than when the module is imported."""

    def where(self) -> str:
        return f"{path_of(self.source)}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def path_of(module: str) -> str:
    base = REPO.joinpath(*module.split("."))
    return str((base / "__init__.py" if base.is_dir() else base.with_suffix(".py")).relative_to(REPO))


def project_modules() -> dict[str, Path]:
    files = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py")) if "__pycache__" not in p.parts]
    return {module_name(p): p for p in files}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, local: bool):
    """(import node, inside a function) for every import that runs: TYPE_CHECKING blocks are skipped."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield from _walk_one(other, local)
            continue
        yield from _walk_one(child, local)


def _walk_one(node: ast.AST, local: bool):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, local
    else:
        inner = local or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(node, ast.If) and _is_type_checking(node):
            for other in node.orelse:
                yield from _walk_one(other, inner)
            return
        yield from _walk(node, inner)


def _targets(node: ast.AST, source: str, modules: dict[str, Path]) -> list[str]:
    """Project modules an import statement names (a `from X import name` names X.name when that is a module)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the importer's package, then level - 1 packages up
            package = source.split(".") if modules[source].name == "__init__.py" else source.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    out = []
    for name in names:
        while name and name not in modules:  # `import a.b.name`, a name inside a module: the module
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def imports(modules: dict[str, Path] | None = None) -> list[Import]:
    modules = project_modules() if modules is None else modules
    found = []
    for source, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        own = {".".join(source.split(".")[:i]) for i in range(1, source.count(".") + 2)}
        if path.name != "__init__.py":
            own.discard(source)
        for node, local in _walk(tree, False):
            for target in _targets(node, source, modules):
                parents = [".".join(target.split(".")[:i]) for i in range(1, target.count("."))]
                for name in [target, *parents]:
                    if name != source and name not in own and name in modules:
                        found.append(Import(source, name, node.lineno, local))
    return found


def graph(found: list[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for i in found:
        if not i.local:
            edges.setdefault(i.source, set()).add(i.target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return out


def reaches(edges: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A path start -> ... -> goal along module-level imports, or None."""
    seen, queue = {start: None}, [start]
    while queue:
        v = queue.pop(0)
        if v == goal:
            path = [v]
            while seen[path[-1]] is not None:
                path.append(seen[path[-1]])
            return path[::-1]
        for w in sorted(edges.get(v, ())):
            if w not in seen:
                seen[w] = v
                queue.append(w)
    return None


def dodges(found: list[Import], edges: dict[str, set[str]]) -> list[tuple[Import, list[str]]]:
    """Function-local imports that would close a cycle at module level, with the cycle they would close."""
    out = []
    for i in found:
        if i.local:
            back = reaches(edges, i.target, i.source)
            if back is not None:
                out.append((i, [i.source, *back]))
    return out


def _matches(module: str, prefix: str) -> bool:
    return module.startswith(prefix) if prefix.endswith(".") else module == prefix or module.startswith(prefix + ".")


def broken_rules(found: list[Import]) -> list[tuple[Import, str]]:
    out = []
    for i in found:
        for source, target, rule in RULES:
            if _matches(i.source, source) and _matches(i.target, target) and \
                    not any(_matches(i.source, a) and _matches(i.target, b) for a, b in ALLOWED):
                out.append((i, rule))
                break
    return out


def report() -> str:
    found = imports()
    edges = graph(found)
    lines = [f"{len(project_modules())} modules, {sum(map(len, edges.values()))} module-level arrows, "
             f"{sum(i.local for i in found)} function-local imports"]
    for component in cycles(edges):
        lines.append("cycle: " + " <-> ".join(component))
    for i, loop in dodges(found, edges):
        lines.append(f"{i.where()}: function-local import of {i.target} dodges the cycle {' -> '.join(loop)}")
    for i, rule in broken_rules(found):
        lines.append(f"{i.where()}: {i.source} imports {i.target}: breaks '{rule}'")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
