"""Every reference in the code, the README and the docs points inside the repository, at something there.

Checked in every tracked text file: repository paths (`trainer/runtime/checkpoint.py`, `docs/method.md`), the
sections of the method document they cite (`docs/method.md §4`), and dotted module references
(`trainer.runtime.distributed.gather_whole_blocks`: the module exists and defines the name). Patterns
(`configs/t5_*_smop.yaml`, `tests/{methods,data}/`) and placeholders (`<method>.py`) are not references.
"""
import ast
import functools
import io
import os
import re
import sys
import tokenize
from pathlib import Path

from tests.launch import REPO

TOP = ("trainer", "tools", "tests", "docs", "configs", "ds_configs", "slurm", ".ci")
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*[\w/])" % "|".join(re.escape(t) for t in TOP))
SECTION = re.compile(r"([\w./-]*method\.md)`?\s*(?:§|section\s+)(\d+)")
UP = re.compile(r"(?<![\w./-])((?:\.\./)+[\w./-]*)")  # a relative path that climbs: ../notes/x.md
BARE = re.compile(r"(?<![\w/])method\.md")  # the method document named without its folder
DOTTED = re.compile(r"(?<![\w./-])((?:trainer|tools|tests)(?:\.[A-Za-z_]\w*)+)")
PLACEHOLDER = re.compile(r"[*{<$]|NNN|\.\.\.")
FILE_EXTENSIONS = {"py", "md", "sh", "json", "jsonl", "yaml", "xml", "txt", "png", "log", "safetensors", "pt"}
SUFFIXES = (".py", ".md", ".sh", ".yaml", ".yml", ".toml", ".json", ".txt", ".cfg")


SKIPPED = {"runs", "__pycache__", "build", "dist"}  # outputs, and what .gitignore leaves out


@functools.cache
def tracked() -> tuple:
    """(path, [(line number, text)]) of the repository's text files: everything under the checkout but version
    control, outputs and caches (dot-folders other than .ci, runs/, *.egg-info). Of a Python file, only the
    prose: comments, docstrings and, outside tests/ (whose strings are made-up test data), string literals;
    code such as `trainer.model` (an attribute of a variable named trainer) refers to no file."""
    out = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED and not d.endswith(".egg-info")
                         and (not d.startswith(".") or d == ".ci"))
        for name in sorted(files):
            path = Path(folder) / name
            where = path.relative_to(REPO)
            if name.endswith(".py"):
                out.append((where, prose(path.read_text(), strings=where.parts[0] != "tests")))
            elif name.endswith(SUFFIXES) or where.parts == (".ci", "run"):
                out.append((where, list(enumerate(path.read_text(errors="replace").splitlines(), 1))))
    return tuple(out)


def prose(source: str, strings: bool) -> list[tuple[int, str]]:
    """The comments, docstrings and (with `strings`) other string literals of a Python source, by line."""
    out = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            out.append((token.start[0], token.string))
    constants = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    docstrings = {id(node.body[0].value) for node in ast.walk(ast.parse(source))
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    docstrings = {n.lineno for n in constants if id(n) in docstrings} if not strings else None
    for node in constants:
        if strings or node.lineno in docstrings:
            out += [(node.lineno + i, text) for i, text in enumerate(node.value.splitlines())]
    return out


def lines():
    """(file, line number, text) of the prose of every tracked file but this one, whose examples are made up."""
    for where, numbered in tracked():
        if where.as_posix() != "tests/test_references.py":
            for number, line in numbered:
                yield where, number, line


def bad_paths() -> list[str]:
    found = []
    for where, number, line in lines():
        for match in PATH.finditer(line):
            ref = match.group(1).rstrip(".")
            token = re.match(r"[^\s`'\"()\[\],;|]*", line[match.start(1):]).group(0)  # the whole word it begins
            if PLACEHOLDER.search(token) or any(part.split(".")[0].isupper() for part in token.split("/")):
                continue  # a pattern (configs/paper/t5-{large,xl}...) or a placeholder (ds_configs/NAME.json)
            if not (REPO / ref).exists():
                found.append(f"{where}:{number}: {ref}")
    return found


@functools.cache
def method_sections() -> set[int]:
    text = (REPO / "docs" / "method.md").read_text()
    return {int(n) for n in re.findall(r"^## (\d+)\.", text, re.M)}


def bad_sections() -> list[str]:
    found = []
    for where, number, line in lines():
        if "method.md" not in line:
            continue
        if BARE.search(line):
            found.append(f"{where}:{number}: 'method.md': cite docs/method.md")
        for name, section in SECTION.findall(line):
            if int(section) not in method_sections():
                found.append(f"{where}:{number}: docs/method.md has no section {section}")
    return found


@functools.cache
def defined(module_path) -> set[str]:
    """Names a module defines at its top level (functions, classes, assignments, imports)."""
    names = set()
    for node in ast.parse(module_path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def resolve(dotted: str) -> str | None:
    """None when `dotted` names a module (or package) and, after it, a name that module defines."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:cut])
        module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if module.is_file():
            rest = parts[cut:]
            if rest and rest[0] not in defined(module) and not (base.is_dir() and (base / rest[0]).exists()):
                return f"{'.'.join(parts[:cut])} defines no '{rest[0]}'"
            return None
    return "no such module"


def bad_dotted() -> list[str]:
    found = []
    for where, number, line in lines():
        if where.name == "pyproject.toml":
            continue  # its package names (trainer.configs, ...) are made by its own package-dir mapping
        for ref in DOTTED.findall(line):
            ref = ref.rstrip(".")
            parts = ref.split(".")
            if parts[-1] in FILE_EXTENSIONS or any(p.isupper() or p.startswith("__") for p in parts):
                continue  # a file name (tests.xml), a placeholder (tools.NAME) or a dunder (trainer.__file__)
            problem = resolve(ref)
            if problem:
                found.append(f"{where}:{number}: {ref}: {problem}")
    return found


def test_repository_paths_exist():
    found = bad_paths()
    assert not found, "references to paths that do not exist:\n" + "\n".join(found)


def test_method_document_sections_exist():
    assert method_sections() >= set(range(1, 10)), method_sections()
    found = bad_sections()
    assert not found, "\n".join(found)


def test_dotted_module_references_resolve():
    found = bad_dotted()
    assert not found, "\n".join(found)


def outside_references() -> list[str]:
    """Relative paths that climb out of their folder (`../notes/x.md`) and do not land on something in the
    repository: outside it, a clone has nothing there."""
    found = []
    for where, number, line in lines():
        for match in UP.finditer(line):
            target = ((REPO / where).parent / match.group(1)).resolve()
            if not (target.is_relative_to(REPO.resolve()) and target.exists()):
                found.append(f"{where}:{number}: {match.group(1)}")
    return found


def test_nothing_points_outside_the_repository():
    found = outside_references()
    assert not found, "references outside the repository: " + ", ".join(found)


def test_the_checks_catch_what_they_must(tmp_path, monkeypatch):
    assert resolve("trainer.runtime.distributed.gather_whole_blocks") is None
    assert resolve("trainer.runtime.distributed.shard_everything") == "trainer.runtime.distributed defines no 'shard_everything'"
    assert resolve("trainer.distributed") == "trainer defines no 'distributed'"
    assert PATH.findall("see trainer/runtime/checkpoint.py, and configs/t5_*_smop.yaml.") == \
        ["trainer/runtime/checkpoint.py", "configs/t5_"]
    assert SECTION.findall("`docs/method.md` §4 and docs/method.md section 7") == [("docs/method.md", "4"),
                                                                                   ("docs/method.md", "7")]
    assert BARE.search("see method.md") and not BARE.search("see docs/method.md")
    # climbing out of the repository, or to nothing in it, is caught; climbing to a file that is there is not
    made_up = [(Path("docs/x.md"), 1, "read ../notes/docs/x.md first, then ../README.md and `../../../etc/hosts`"),
               (Path("tests/tools/y.py"), 2, "as ../other/docs/z.md says"), (Path("docs/x.md"), 3, "x/../y.md")]
    monkeypatch.setattr(sys.modules[__name__], "lines", lambda: made_up)
    assert outside_references() == ["docs/x.md:1: ../notes/docs/x.md", "docs/x.md:1: ../../../etc/hosts",
                                    "tests/tools/y.py:2: ../other/docs/z.md"]
