"""Views over derived tables (``attnwh recompute``): one per name the user gave, over every derived run of
that name, with the source run's id as ``run_id`` so that it joins ``head_metrics`` on
(run_id, sample_idx, query, layer, head); and ``NAME_sinks`` where the statistic finds sinks.
"""

from __future__ import annotations

import re
from typing import Any

import duckdb

from attnwh.errors import UsageError
from attnwh.warehouse.schema import TABLES

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,55}")
SINKS_SUFFIX = "_sinks"
RESERVED_PREFIXES = ("stg_", "report_", "duckdb_", "pg_", "sqlite_")
KEYS = ("sample_idx", "query", "layer", "head")


def check_view_name(name: str, reserved: set[str] | frozenset[str] = frozenset()) -> None:
    """A derived table's view name: a lower-case identifier that no table, view or mart of attnwh uses."""
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(f"--name {name!r} must be a lower-case identifier (a-z, 0-9, _, starting with a letter, at most 56 characters)")
    if name in reserved or name in TABLES or name == "runs" or name.startswith(RESERVED_PREFIXES):
        raise UsageError(f"--name {name} is taken by attnwh's own tables, views and queries; choose another")


def define_derived_views(connection: duckdb.DuckDBPyConnection, names: dict[str, dict[str, Any]]) -> None:
    """``names``: view name -> the derived spec (``columns``, ``statistic``) of its runs."""
    if not names:
        return
    metrics = connection.table("derived_metrics")
    sinks = connection.table("derived_sinks")
    for name, spec in sorted(names.items()):
        this = duckdb.ColumnExpression("name") == duckdb.ConstantExpression(name)
        columns = [
            duckdb.ColumnExpression("source_run_id").alias("run_id"),
            *(duckdb.ColumnExpression(key) for key in KEYS),
            *(duckdb.ColumnExpression(column) for column in spec["columns"]),
            duckdb.ColumnExpression("run_id").alias("derived_run_id"),
        ]
        metrics.filter(this).select(*columns).create_view(name, replace=True)
        if spec.get("sinks"):
            sink_columns = [
                duckdb.ColumnExpression("source_run_id").alias("run_id"),
                *(duckdb.ColumnExpression(key) for key in ("sample_idx", "query", "n_sinks", "sink_positions")),
                duckdb.ColumnExpression("run_id").alias("derived_run_id"),
            ]
            sinks.filter(this).select(*sink_columns).create_view(name + SINKS_SUFFIX, replace=True)
