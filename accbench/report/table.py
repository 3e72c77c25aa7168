"""The report's table as plain data (title, header, rows of strings, a mark per row), the one shape that
console, Markdown and HTML render; its own module so every section builder can import it without a cycle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    # per row: "bad" (a significant/gated worsening or a failed gate), "good", or "" — renderers colour by it
    marks: list[str] = field(default_factory=list)
    note: str = ""
    text: bool = False  # a key/value table of text (provenance): renderers align it left

    def add(self, row: list[Any], mark: str = "") -> None:
        self.rows.append([str(x) for x in row])
        self.marks.append(mark)
