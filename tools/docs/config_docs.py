"""Print the table of every config key (from the dataclass docstrings) that the README embeds.

    python -m tools.docs.config_docs            # print the markdown table
    python -m tools.docs.config_docs --check    # exit 1 if README.md's table is out of date
    python -m tools.docs.config_docs --write    # rewrite the table in README.md
"""
from __future__ import annotations

import sys
from pathlib import Path

import ast
import dataclasses
import inspect

from trainer.config import RunConfig, dataclass_type


def field_docs(cls=RunConfig, prefix: str = "") -> list[tuple[str, str, object]]:
    """(dotted key, docstring, default) for every leaf field: the README's flag table is generated from this."""
    docs, tree = {}, ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = nxt.value.value
    rows = []
    for f in dataclasses.fields(cls):
        sub = dataclass_type(cls, f.name)
        if sub is not None:
            rows += field_docs(sub, f"{prefix}{f.name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((prefix + f.name, docs.get(f.name, ""), getattr(default, "value", default)))
    return rows


BEGIN, END = "<!-- config-table:begin -->", "<!-- config-table:end -->"
README = Path(__file__).resolve().parents[2] / "README.md"


def table() -> str:
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key, doc, default in field_docs():
        shown = "" if default == "" else default
        rows.append(f"| `{key}` | `{shown}` | {' '.join(doc.split()).replace('|', '/')} |")
    return "\n".join(rows)


def main() -> int:
    text = README.read_text()
    head, rest = text.split(BEGIN)
    current, tail = rest.split(END)
    if "--write" in sys.argv:
        README.write_text(f"{head}{BEGIN}\n{table()}\n{END}{tail}")
        return 0
    if "--check" in sys.argv:
        if current.strip() != table():
            print("README.md's config table is out of date: run python -m tools.docs.config_docs and paste it")
            return 1
        return 0
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
