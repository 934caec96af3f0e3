"""The README's Python examples that need no files run as written."""

from __future__ import annotations

import re

from support import REPO_ROOT


def python_blocks(section: str) -> list[str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end != -1 else None], flags=re.S)


def test_quickstart_runs():
    blocks = python_blocks("Quickstart")
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
