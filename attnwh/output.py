"""Rendering query results for the terminal: aligned table, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
import math

import pyarrow as pa

FORMATS = ("table", "csv", "json")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


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
    cells = [[_cell(row[c]).replace("\n", "\\n") for c in table.column_names] for row in shown]
    widths = [max([len(name)] + [len(r[i]) for r in cells]) for i, name in enumerate(table.column_names)]
    lines = ["  ".join(name.ljust(w) for name, w in zip(table.column_names, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(value.ljust(w) for value, w in zip(r, widths)).rstrip() for r in cells]
    footer = f"({len(rows)} row{'s' if len(rows) != 1 else ''}"
    footer += f", {len(shown)} shown)" if len(shown) < len(rows) else ")"
    return "\n".join(lines + [footer])
