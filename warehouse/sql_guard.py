"""The read-only gate of user SQL: one SELECT (with PIVOT / UNPIVOT, DESCRIBE, SUMMARIZE) or an EXPLAIN of one.

DuckDB's directory allow-list alone would still let COPY TO and ATTACH write inside the warehouse, so
user statements are parsed (``duckdb.extract_statements``) and refused unless they only read.
"""

from __future__ import annotations

import re

import duckdb

from attnwh.core.errors import SqlError, SqlRefused, first_line

_LEADING_COMMENTS = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.DOTALL)
_PIVOT = re.compile(r"\bpivot(?:_wider)?\b", re.IGNORECASE)
_EXPLAIN_PREFIX = re.compile(r"\AEXPLAIN\s+(?:ANALY[SZ]E\s+)?", re.IGNORECASE)


def check_read_only(sql: str) -> str:
    """Return the single read-only statement in ``sql``, or raise ``SqlRefused`` saying why."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise SqlError(first_line(exc)) from exc
    if not statements:
        raise SqlRefused("no SQL statement given")
    if len(statements) > 1:
        raise SqlRefused(f"only one statement may run; found {len(statements)}")
    statement = statements[0]
    kind = statement.type
    if _reads_only(statement):
        return statement.query
    if kind == duckdb.StatementType.EXPLAIN:
        text = _LEADING_COMMENTS.sub("", statement.query)
        match = _EXPLAIN_PREFIX.match(text)
        if match:
            inner = duckdb.extract_statements(text[match.end() :])
            if len(inner) == 1 and _reads_only(inner[0]):
                return statement.query
        raise SqlRefused("EXPLAIN is allowed only of a SELECT")
    raise SqlRefused(f"only SELECT (with PIVOT / UNPIVOT, DESCRIBE, SUMMARIZE) and EXPLAIN statements run on the warehouse; this is {kind.name}")


def _reads_only(statement) -> bool:
    """A SELECT, or a PIVOT whose columns come from the data: DuckDB parses that as one MULTI
    statement (a temporary enum of the values, then the SELECT), and PIVOT's grammar admits only
    queries as its source, so it cannot hide a write."""
    if statement.type == duckdb.StatementType.SELECT:
        return True
    return statement.type == duckdb.StatementType.MULTI and _PIVOT.search(_LEADING_COMMENTS.sub("", statement.query)) is not None
