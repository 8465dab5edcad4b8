"""The import graph of trainer/ and tools/ (read with ast, nothing imported; tests/imports.py): no cycle, no
function-local import that only hides one, no arrow against README "Layout"'s rules, and no lower layer
handed the loop's run object. Each failure names the file and line."""
import ast

from tests import imports
from tests.imports import REPO, Import

# Packages below the loop: they are handed what they need (TrainState, a config section, plain values),
# never trainer.loop.Run, which would make them depend on the loop in a way the import graph cannot show.
HANDED_STATE = ("trainer/runtime", "trainer/monitor", "trainer/perf", "trainer/data", "trainer/methods",
                "trainer/inference")


def test_no_import_cycle():
    cycles = imports.cycles(imports.graph(imports.imports()))
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_function_local_import_dodges_a_cycle():
    found = imports.imports()
    dodges = imports.dodges(found, imports.graph(found))
    assert not dodges, "\n".join(f"{i.where()}: import of {i.target} inside a function hides the cycle "
                                 f"{' -> '.join(loop)}" for i, loop in dodges)


def test_imports_keep_the_layering_rules():
    broken = imports.broken_rules(imports.imports())
    assert not broken, "\n".join(f"{i.where()}: {i.source} imports {i.target} ({rule})" for i, rule in broken)


def test_lower_layers_are_never_handed_the_run():
    found = []
    for package in HANDED_STATE:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names = [a.arg for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs]
                    if "run" in names:
                        found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.name}(run, ...)")
    assert not found, "handed the loop's run object:\n" + "\n".join(found)


def test_the_checker_sees_what_it_must(tmp_path, monkeypatch):
    """The checker itself, on a made-up package: a cycle, a dodging import, an upward arrow and a
    TYPE_CHECKING import (which is no arrow) are each found or ignored as they should be."""
    root = tmp_path / "trainer"
    for sub in ("", "data", "methods"):
        (root / sub).mkdir(exist_ok=True)
        (root / sub / "__init__.py").write_text("")
    (root / "config.py").write_text("from trainer.methods import router\n")
    (root / "methods" / "router.py").write_text("def f():\n    from trainer import config\n")
    (root / "data" / "batch.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                           "    from trainer.methods import router\nimport trainer.data.tasks\n")
    (root / "data" / "tasks.py").write_text("from trainer.data import batch\n")
    (root / "data" / "readers.py").write_text("from trainer.methods.router import f\n")
    monkeypatch.setattr(imports, "REPO", tmp_path)
    modules = {imports.module_name(p): p for p in sorted(root.rglob("*.py"))}
    found = imports.imports(modules)
    edges = imports.graph(found)
    assert imports.cycles(edges) == [["trainer.data.batch", "trainer.data.tasks"]]
    assert [(i.source, i.target, i.line, loop) for i, loop in imports.dodges(found, edges)] == \
        [("trainer.methods.router", "trainer.config", 2,
          ["trainer.methods.router", "trainer.config", "trainer.methods.router"])]
    assert Import("trainer.data.batch", "trainer.methods.router", 3, False) not in found  # TYPE_CHECKING
    broken = [(i.source, i.target) for i, _ in imports.broken_rules(found)]
    assert ("trainer.data.readers", "trainer.methods.router") in broken
    assert ("trainer.methods.router", "trainer.config") in broken  # a function-local import breaks rules too
