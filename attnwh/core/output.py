"""Rendering query results for the terminal: aligned table, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Iterator
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc

FORMATS = ("table", "csv", "json")
TABLE_ROWS = 10_000  # rows a streamed terminal table shows (csv and json write every row)


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
    if isinstance(value, Decimal):  # DuckDB's DECIMAL (a literal 0.25, sum() of one): read as a number too
        value = int(value) if value.is_finite() and value == value.to_integral_value() and value.adjusted() < 100 else float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 1000 else str(value)  # as floats: 3,328 beside 10,496 in one column
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if is_p_value(column) and 0 < value < 1e-3:
        return f"{value:.2e}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def render_stream(schema: pa.Schema, batches: Iterable[pa.RecordBatch], fmt: str) -> Iterator[str]:
    """``render``'s text, piece by piece, of a result read batch by batch: CSV and JSON hold one batch at a time,
    so a result larger than memory streams through; a table shows its first ``TABLE_ROWS`` rows and counts the rest."""
    names = schema.names
    if fmt == "csv":
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(names)
        yield buffer.getvalue()
        for batch in batches:
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows([[_cell(row[c]) for c in names] for row in python_rows(batch)])
            yield buffer.getvalue()
        return
    if fmt == "json":
        separator = "["
        for batch in batches:
            for row in python_rows(batch):
                yield f"{separator}\n {json_text(row)}"
                separator = ","
        yield "[]\n" if separator == "[" else "\n]\n"
        return
    shown: list[pa.RecordBatch] = []
    held = total = 0
    for batch in batches:
        total += batch.num_rows
        if held < TABLE_ROWS:
            shown.append(batch.slice(0, TABLE_ROWS - held))
            held += shown[-1].num_rows
    yield render(pa.Table.from_batches(shown, schema=schema), "table", total=total) + "\n"


def python_rows(table: pa.Table | pa.RecordBatch) -> list[dict]:
    """The rows as Python values; a date or time Python's ``datetime`` cannot hold (DuckDB's ``'infinity'::date``, a
    year past 9999 or before 1) makes its whole column text, as Arrow writes it (``<value out of range: ...>``)."""
    try:
        return table.to_pylist()
    except (OverflowError, ValueError):
        columns = [pc.cast(column, pa.string()) if pa.types.is_temporal(column.type) else column for column in table.columns]
        return type(table).from_arrays(columns, names=table.column_names).to_pylist()


def json_text(value, indent: int | None = None) -> str:
    """``value`` as standard JSON: a NaN or an infinity (which ``json.dumps`` writes as ``NaN`` / ``Infinity``, and
    JSON parsers refuse) is null; other values JSON has no type for as their text."""

    def finite(item):
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if isinstance(item, dict):
            return {key: finite(entry) for key, entry in item.items()}
        if isinstance(item, list | tuple):
            return [finite(entry) for entry in item]
        return item

    return json.dumps(finite(value), default=str, indent=indent, allow_nan=False)


def render(table: pa.Table, fmt: str, max_rows: int | None = None, total: int | None = None) -> str:
    """``table`` as an aligned table (its first ``max_rows`` rows; the footer counts ``total`` rows, the table's own
    by default), CSV or JSON."""
    rows = python_rows(table)
    if fmt == "json":
        return json_text(rows, indent=1)
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
    count = len(rows) if total is None else total
    footer = f"({count} row{'s' if count != 1 else ''}"
    footer += f", {len(shown)} shown)" if len(shown) < count else ")"
    return "\n".join(lines + [footer])


def kind_phrase(kind: object) -> str:
    """A run's kind with its article, for messages: 'a mask', 'an extract', 'an unknown' (no kind recorded)."""
    name = str(kind) if kind else "unknown"
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"
