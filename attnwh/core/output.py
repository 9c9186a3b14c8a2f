"""Rendering query results for the terminal: aligned table, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
import math

import pyarrow as pa

FORMATS = ("table", "csv", "json")


def _cell(value) -> str:
    """A value as CSV keeps it: floats exactly (the shortest text that reads back the same number)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def is_p_value(column: str) -> bool:
    return column == "p" or column.endswith(("_p", "p_value"))


def readable(value, column: str = "") -> str:
    """A value for a person to read (terminal tables, the report's tables): three significant digits,
    p-values below 0.001 in scientific notation, counts (integers) whole, thousands separated;
    CSV and JSON keep the exact values."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if is_p_value(column) and 0 < value < 1e-3:
        return f"{value:.2e}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def render(table: pa.Table, fmt: str, max_rows: int | None = None) -> str:
    rows = table.to_pylist()
    if fmt == "json":
        return json.dumps(rows, default=str, indent=1)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(table.column_names)
        writer.writerows([[_cell(row[c]) for c in table.column_names] for row in rows])
        return buffer.getvalue().rstrip("\n")
    shown = rows if max_rows is None else rows[:max_rows]
    cells = [[readable(row[c], c).replace("\n", "\\n") for c in table.column_names] for row in shown]
    widths = [max([len(name)] + [len(r[i]) for r in cells]) for i, name in enumerate(table.column_names)]
    lines = ["  ".join(name.ljust(w) for name, w in zip(table.column_names, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(value.ljust(w) for value, w in zip(r, widths)).rstrip() for r in cells]
    footer = f"({len(rows)} row{'s' if len(rows) != 1 else ''}"
    footer += f", {len(shown)} shown)" if len(shown) < len(rows) else ")"
    return "\n".join(lines + [footer])


def kind_phrase(kind: object) -> str:
    """A run's kind with its article, for messages: 'a mask', 'an extract', 'an unknown' (no kind recorded)."""
    name = str(kind) if kind else "unknown"
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"
