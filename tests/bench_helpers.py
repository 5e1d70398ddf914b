"""Reading the markdown tables the benchmark scripts print (for their smoke tests)."""

from __future__ import annotations


def md_rows(text: str, label: str) -> list[list[str]]:
    """The cells after the first of every table row whose first cell is ``label``."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == label:
            rows.append(cells[1:])
    return rows
