"""Table rows in document text, as the loaders write them (``a | b | c``, with or without outer pipes).

Read by the extractive generator's splitter (a row is quoted with its header) and by the PII name
readings (a cell under a column that names a kind of thing is no person).
"""

from __future__ import annotations


def table_cells(line: str) -> list[str]:
    """The cells of a table row, trimmed."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def is_table_row(line: str) -> bool:
    """Whether ``line`` is a table row: at least two cells."""
    return "|" in line and len(table_cells(line)) >= 2
