"""Markdown tables of the study's reports (sweep, study comparison, fidelity)."""
from __future__ import annotations


def md_table(head: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table: the header `head`, then one line per row of formatted cells."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)
