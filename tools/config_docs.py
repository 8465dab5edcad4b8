"""Print the table of every config key (from the dataclass docstrings) that the README embeds.

    python tools/config_docs.py            # print the markdown table
    python tools/config_docs.py --check    # exit 1 if README.md's table is out of date
    python tools/config_docs.py --write    # rewrite the table in README.md
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from trainer.config import field_docs  # noqa: E402

BEGIN, END = "<!-- config-table:begin -->", "<!-- config-table:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"


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
            print("README.md's config table is out of date: run python tools/config_docs.py and paste it")
            return 1
        return 0
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
